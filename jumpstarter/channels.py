"""The single place that turns a target string into a gRPC channel.

Targets: a unix socket path (`/run/jumpstarter/boards/rpi4.sock`, `./x.sock`,
`unix:/path`), or `host:port` for a direct TCP exporter (TLS by default;
plaintext only with `JMP_GRPC_INSECURE=1`, passphrase from `JMP_GRPC_PASSPHRASE`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import stat
from typing import Any, TypeAlias

import grpc

from jumpstarter.errors import ConnectError

Options: TypeAlias = list[tuple[str, Any]]

#: Messages up to 4 MiB of payload from anyone (PROTOCOL.md §5), plus framing.
MAX_MESSAGE = 4 * 1024 * 1024 + 64 * 1024
#: controllerd's receive limit (its send limit stays gRPC's default).
CONTROLLER_MAX_RECEIVE = 8 * 1024 * 1024


def message_limits(receive: int = MAX_MESSAGE, send: int | None = MAX_MESSAGE) -> Options:
    """The gRPC message size options; `send=None` keeps gRPC's default send limit."""
    options: Options = [("grpc.max_receive_message_length", receive)]
    if send is not None:
        options.append(("grpc.max_send_message_length", send))
    return options


def server_options(*extra: tuple[str, Any]) -> Options:
    """A session or router server's options: the message limits, no port sharing, then `extra`."""
    return [*message_limits(), ("grpc.so_reuseport", 0), *extra]


#: controllerd's server (keepalive options are added from its config).
CONTROLLER_SERVER_OPTIONS = message_limits(receive=CONTROLLER_MAX_RECEIVE, send=None)
CHANNEL_OPTIONS: Options = [
    *message_limits(),
    ("grpc.enable_retries", 0),
    # gRPC backs reconnects off up to 120 s: after a long router or exporter outage a channel would
    # sit out that long with its peer back; a few seconds keeps recovery quick and costs a SYN.
    ("grpc.max_reconnect_backoff_ms", 3000),
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
    try:
        mode = os.stat(path)
    except FileNotFoundError:
        raise ConnectError(f"no exporter socket at {path} (is the board's exporterd running?)") from None
    except OSError as exc:
        raise ConnectError(f"cannot reach {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(mode.st_mode):
        raise ConnectError(f"{path} is {file_kind(mode.st_mode)}, not an exporter's socket")
    if not os.access(path, os.R_OK | os.W_OK):
        group = group_name(mode.st_gid)
        raise ConnectError(
            f"permission denied on {path}: add yourself to the socket's group {group}"
            f" (sudo usermod -aG {group} $USER, then log in again)"
        )


def file_kind(mode: int) -> str:
    """What a path that should be a socket is instead, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def group_name(gid: int) -> str:
    """A group's name (its number when it has none here)."""
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def default_target() -> str:
    """The target named by JUMPSTARTER_HOST (set inside `jmp shell`)."""
    target = os.environ.get("JUMPSTARTER_HOST")
    if not target:
        raise ConnectError("no target: pass a socket path or set JUMPSTARTER_HOST")
    return target


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


def _fetch_server_certificate(endpoint: str) -> bytes:
    """Trust on first use (`tls.insecure`): the chain the server presents becomes the trusted root."""
    host, _, port = endpoint.rpartition(":")
    return ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=5).encode()


def controller_credentials(
    endpoint: str, ca_b64: str = "", insecure: bool = False
) -> grpc.ChannelCredentials:
    """TLS credentials for a controller or router: the configured CA, else system roots."""
    if ca_b64:
        return grpc.ssl_channel_credentials(root_certificates=base64.b64decode(ca_b64))
    if insecure:
        return grpc.ssl_channel_credentials(root_certificates=_fetch_server_certificate(endpoint))
    return grpc.ssl_channel_credentials()


# Ping the controller/router every 20 s (as upstream does; servers accept that) and give up on
# one that does not answer within 20 s, so a frozen or vanished peer is noticed and reconnected.
CONTROLLER_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.http2.ping_timeout_ms", 20000),  # newer gRPC cores time keepalive pings out with this one
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


def open_controller_aio(endpoint: str, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(endpoint, credentials, options=CONTROLLER_OPTIONS)


def open_controller(endpoint: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(endpoint, credentials, options=CONTROLLER_OPTIONS)


# OpenSSL verify codes: what each means for someone holding a Jumpstarter config.
NOT_SIGNED = {2, 18, 19, 20, 21}  # no issuer, self-signed, untrusted chain: the CA does not sign it
VERIFY_HINTS = {
    9: "the server's certificate is not valid yet: check the clocks",
    10: "the server's certificate has expired",
    62: "the server's certificate does not name this host",
}


def tls_failure(
    endpoint: str, ca_b64: str = "", insecure: bool = False, whose: str = "client", timeout: float = 5.0
) -> str | None:
    """Why TLS to a controller or router fails, checked the way gRPC would connect; None if it works.

    gRPC reports a failed handshake only as UNAVAILABLE; this one handshake with the
    `ssl` module names the cause. None too when the endpoint cannot be reached at all
    (not a TLS problem) and for `tls.insecure` (which trusts whatever is presented).
    """
    if insecure:
        return None
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context(cafile=os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"))  # as gRPC
    if ca_b64:
        try:
            context = ssl.create_default_context(cadata=base64.b64decode(ca_b64).decode("ascii", "replace"))
        except (ValueError, ssl.SSLError) as exc:
            return f"TLS to {endpoint} failed: the CA in the {whose} config (tls.ca) is not a PEM certificate: {exc}"
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as exc:
        code = exc.verify_code
        login = "; log in with --ca FILE or --insecure" if whose == "client" else ""
        if code in NOT_SIGNED and not ca_b64:
            hint = f"the certificate is not trusted: no tls.ca in the {whose} config, and no system CA signs it{login}"
        elif code in NOT_SIGNED:
            hint = f"the CA in your {whose} config does not sign this server's certificate{login}"
        else:
            hint = VERIFY_HINTS.get(code, exc.verify_message)
        return f"TLS to {endpoint} failed: certificate verify failed: {exc.verify_message} ({hint})"
    except ssl.SSLError as exc:
        return f"TLS to {endpoint} failed: {exc.reason or exc}"
    except (OSError, ValueError):
        return None


async def connect_state(channel: grpc.aio.Channel, timeout: float) -> grpc.ChannelConnectivity:
    """Connect `channel`; its first settled state (READY or TRANSIENT_FAILURE), or the state at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    settled = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    state = channel.get_state(try_to_connect=True)
    while state not in settled and loop.time() < deadline:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(channel.wait_for_state_change(state), deadline - loop.time())
        state = channel.get_state(try_to_connect=True)
    return state
