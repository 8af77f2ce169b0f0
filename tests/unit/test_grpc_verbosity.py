"""The daemons keep gRPC's core quiet about failed TLS handshakes (they report them in one line):
their packages set GRPC_VERBOSITY before any of their modules imports grpc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A server that answers a TLS ClientHello with garbage: every handshake fails.
PROBE = """
import socket, sys, threading
if sys.argv[1] != "none":
    __import__(sys.argv[1])
import grpc
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
def serve():
    while True:
        peer, _ = server.accept()
        peer.sendall(b"HTTP/1.1 400 no\\r\\n\\r\\n" * 50)
        peer.close()
threading.Thread(target=serve, daemon=True).start()
channel = grpc.secure_channel("127.0.0.1:%d" % server.getsockname()[1], grpc.ssl_channel_credentials())
try:
    grpc.channel_ready_future(channel).result(timeout=2)
except grpc.FutureTimeoutError:
    pass
"""


def stderr_of(module: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module], env=env, capture_output=True, text=True, timeout=60
    )
    return result.stderr


def test_grpc_core_logs_failed_handshakes_by_default():
    """The premise: without our setting, gRPC's core prints failed handshakes."""
    assert stderr_of("none").strip()


@pytest.mark.parametrize(
    "module", ["exporterd.main", "controllerd.main", "routerd.main", "jumpstarter.cli.main"]
)
def test_a_daemon_or_the_cli_keeps_grpc_core_quiet(module: str):
    assert stderr_of(module) == ""
