"""Direct mode (`--listen`): the board's session also on TCP, with TLS and a passphrase.

Owns the listener's settings and their files: the certificate (created self-signed when
missing), the passphrase file, and the one log line that says how the board is exposed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog

from jumpstarter.errors import ConfigError
from jumpstarter.session.server import SessionSlot

log = structlog.get_logger("exporterd")


@dataclass(frozen=True)
class DirectListener:
    """Where and how to serve on TCP; `insecure` means plaintext (only on a trusted network)."""

    listen: str
    tls_cert: str | None = None
    tls_key: str | None = None
    passphrase_file: str | None = None
    insecure: bool = False


async def serve_direct(slot: SessionSlot, listener: DirectListener, stack: contextlib.AsyncExitStack) -> None:
    """Serve the slot's session on `listener.listen` until `stack` closes."""
    from jumpstarter import tls
    from jumpstarter.session.direct import serve_tcp

    credentials = None
    if not listener.insecure:
        if not (listener.tls_cert and listener.tls_key):
            raise ConfigError(
                "--listen needs --tls-cert and --tls-key (created if missing), or --insecure-listener"
            )
        host = listener.listen.rpartition(":")[0]
        cert, key = tls.load_or_create(listener.tls_cert, listener.tls_key, [host])
        credentials = tls.server_credentials(cert, key)
    passphrase = None
    if listener.passphrase_file:
        passphrase = read_passphrase(listener.passphrase_file)
    await stack.enter_async_context(serve_tcp(slot, listener.listen, credentials, passphrase))
    log.info(
        "serving directly",
        listen=listener.listen,
        tls=credentials is not None,
        passphrase=passphrase is not None,
        certificate=listener.tls_cert,
    )


def read_passphrase(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            passphrase = handle.read(64 * 1024).decode().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the passphrase file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the passphrase file is not text") from None
    if not passphrase:
        raise ConfigError(f"{path}: empty passphrase")
    return passphrase
