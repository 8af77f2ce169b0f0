"""The gRPC options of every server and channel, built from the one set of limits in channels.py."""

from __future__ import annotations

from jumpstarter import channels
from jumpstarter.session import server as session_server
from routerd import service as router_service

LIMIT = 4 * 1024 * 1024 + 64 * 1024  # 4 MiB of payload (PROTOCOL.md §5) plus framing
LIMITS = [("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT)]


def test_session_server_options():
    options = session_server.SERVER_OPTIONS
    assert options == [
        *LIMITS,
        ("grpc.so_reuseport", 0),
        ("grpc.http2.max_frame_size", 1 << 20),
    ]


def test_router_server_options_keep_their_keepalive_policy():
    options = router_service.SERVER_OPTIONS
    assert options == [
        *LIMITS,
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]


def test_controller_server_receives_8_mib_and_keeps_grpcs_send_limit():
    options = channels.CONTROLLER_SERVER_OPTIONS
    assert options == [("grpc.max_receive_message_length", 8 * 1024 * 1024)]


def test_client_channels_share_the_limits():
    assert channels.CHANNEL_OPTIONS[:2] == LIMITS
    assert channels.CONTROLLER_OPTIONS[: len(channels.CHANNEL_OPTIONS)] == channels.CHANNEL_OPTIONS
