"""Router health as the dashboard shows it: does each configured router complete a TLS handshake?

routerd serves only its splicing service, so the probe is the step every client's Dial takes
first: a TCP connection and a TLS handshake verified against the lab CA. One probe per router
every PROBE_EVERY seconds, each bounded by PROBE_TIMEOUT, on the controller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

PROBE_EVERY = 10.0
PROBE_TIMEOUT = 5.0


@dataclass
class RouterHealth:
    endpoint: str
    up: bool | None = None  # None: not probed yet
    detail: str = "not checked yet"
    checked: float | None = None
    latency_ms: float | None = None


class RouterProbe:
    def __init__(self, endpoints: list[str], ca_pem: bytes) -> None:
        self.routers = [RouterHealth(e) for e in endpoints]
        self.context = ssl.create_default_context(cadata=ca_pem.decode())

    async def probe(self, router: RouterHealth) -> None:
        host, _, port = router.endpoint.rpartition(":")
        started = time.monotonic()
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port), ssl=self.context, server_hostname=host),
                PROBE_TIMEOUT,
            )
        except (OSError, TimeoutError, ValueError) as exc:
            router.up, router.detail = False, _why(exc)
        else:
            router.up, router.detail = True, "TLS handshake ok"
            router.latency_ms = round((time.monotonic() - started) * 1000, 1)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), PROBE_TIMEOUT)
        router.checked = time.time()

    async def run(self) -> None:
        """Probe every router now and then every PROBE_EVERY seconds (a task of the dashboard)."""
        while True:
            await asyncio.gather(*(self.probe(r) for r in self.routers))
            await asyncio.sleep(PROBE_EVERY)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT:g}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
