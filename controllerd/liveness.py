"""What proves an exporter alive (DESIGN.md §5 "Liveness"), derived from `offline_after`.

An exporter is online while its last sign of life is younger than `offline_after`. Signs of
life are only things the exporter sends: its RPCs (Register, ReportStatus — exporterd repeats
it as a heartbeat —, opening Status) and, while its Status stream is open, the answers to the
controller's HTTP/2 keepalive pings. A peer that stops answering (a frozen process, a dead
link) loses its connection after `silence_window`, and its last sign of life is then taken as
the start of that window: so it is offline at most `offline_after` after it went silent.
"""

from __future__ import annotations

from typing import Any

MIN_PING = 0.25  # seconds; below this, pings cost more than they tell


def ping_interval(offline_after: float) -> float:
    """Seconds of silence before the controller pings a peer, and how long it waits for the answer."""
    return max(MIN_PING, offline_after / 4)


def silence_window(offline_after: float) -> float:
    """How long a connection that no longer answers can stay open before keepalive drops it."""
    return min(offline_after, 2 * ping_interval(offline_after))


def server_keepalive_options(offline_after: float) -> list[tuple[str, Any]]:
    """gRPC server options: ping silent peers, drop those that do not answer, accept client pings."""
    ping_ms = int(ping_interval(offline_after) * 1000)
    return [
        ("grpc.keepalive_time_ms", ping_ms),
        ("grpc.keepalive_timeout_ms", ping_ms),
        ("grpc.http2.ping_timeout_ms", ping_ms),  # newer gRPC cores time keepalive pings out with this one
        ("grpc.http2.max_pings_without_data", 0),  # an idle Status stream is pinged for ever, not twice
        ("grpc.keepalive_permit_without_calls", 1),
        # upstream clients and exporterd ping every 20 s: never answer them with GOAWAY
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
    ]
