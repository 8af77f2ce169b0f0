"""The single place that turns a target string into a gRPC channel.

Targets: a unix socket path (`/run/jumpstarter/boards/rpi4.sock`, `./x.sock`,
`unix:/path`), or `host:port` for a direct TCP exporter (TLS by default;
plaintext only with `JMP_GRPC_INSECURE=1`, passphrase from `JMP_GRPC_PASSPHRASE`).
"""

from __future__ import annotations

import os
from typing import Any

import grpc

from jumpstarter.errors import ConnectError

MAX_MESSAGE = 4 * 1024 * 1024 + 64 * 1024
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.enable_retries", 0),
]
PASSPHRASE_HEADER = "x-jumpstarter-passphrase"


def is_unix(target: str) -> bool:
    return target.startswith(("unix:", "/", "./", "../", "~")) or ":" not in target


def unix_path(target: str) -> str:
    path = target[5:] if target.startswith("unix:") else target
    return os.path.abspath(os.path.expanduser(path))


def describe(target: str) -> str:
    return unix_path(target) if is_unix(target) else target


def check_unix(path: str) -> None:
    """Fail early with an actionable message instead of gRPC's generic UNAVAILABLE."""
    if not os.path.exists(path):
        raise ConnectError(f"no exporter socket at {path} (is the board's exporterd running?)")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConnectError(
            f"permission denied on {path}: add yourself to the socket's group"
            " (sudo usermod -aG jumpstarter $USER, then log in again)"
        )


def _tcp_setup(target: str) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    metadata: list[tuple[str, str]] = []
    passphrase = os.environ.get("JMP_GRPC_PASSPHRASE")
    if passphrase:
        metadata.append((PASSPHRASE_HEADER, passphrase))
    insecure = (
        os.environ.get("JMP_GRPC_INSECURE") == "1" or os.environ.get("JUMPSTARTER_GRPC_INSECURE") == "1"
    )
    if insecure:
        return None, metadata
    ca = os.environ.get("JMP_GRPC_CA")
    roots = None
    if ca:
        with open(ca, "rb") as handle:
            roots = handle.read()
    return grpc.ssl_channel_credentials(root_certificates=roots), metadata


def open_channel(target: str) -> tuple[grpc.Channel, list[tuple[str, str]]]:
    """A blocking channel to an exporter session plus metadata for every call."""
    if is_unix(target):
        path = unix_path(target)
        check_unix(path)
        return grpc.insecure_channel(f"unix:{path}", options=CHANNEL_OPTIONS), []
    creds, metadata = _tcp_setup(target)
    if creds is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS), metadata
    return grpc.secure_channel(target, creds, options=CHANNEL_OPTIONS), metadata


def open_aio_channel(target: str) -> tuple[grpc.aio.Channel, list[tuple[str, str]]]:
    """The asyncio counterpart of `open_channel`."""
    if is_unix(target):
        path = unix_path(target)
        check_unix(path)
        return grpc.aio.insecure_channel(f"unix:{path}", options=CHANNEL_OPTIONS), []
    creds, metadata = _tcp_setup(target)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS), metadata
    return grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS), metadata
