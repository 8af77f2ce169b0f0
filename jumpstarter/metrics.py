"""Prometheus metrics for the daemons: a private registry each, served over plain HTTP.

The listener is plaintext and unauthenticated, so it binds to loopback unless
the caller explicitly allows a remote address (scrape through a local agent,
or an SSH/VPN path, otherwise).
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server

DEFAULT_ADDRESS = "127.0.0.1:9102"


def new_registry() -> CollectorRegistry:
    """A registry of our own (not the process-global one), with process and Python facts."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def parse_address(text: str) -> tuple[str, int]:
    """Split `host:port` / `[v6]:port` into (host, port); raise ValueError with the reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unbalanced brackets in {text!r}")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write IPv6 addresses in brackets: [{host}]:{port_text}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port is not a number in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class MetricsServer:
    """A running /metrics listener; `port` is the bound port (useful with port 0)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_http(
    registry: CollectorRegistry, address: str = DEFAULT_ADDRESS, *, allow_remote: bool = False
) -> MetricsServer:
    """Serve `registry` at http://ADDRESS/metrics from a daemon thread.

    Raises ValueError for a malformed address, or a non-loopback one without
    `allow_remote=True`; OSError if the port cannot be bound.
    """
    host, port = parse_address(address)
    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"metrics address {address} is not loopback; the listener is plaintext and"
            " unauthenticated (allow it explicitly with allow_remote)"
        )
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host, server.server_port, server, thread)
