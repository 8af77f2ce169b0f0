"""Power drivers: mock, HTTP switch (smart plugs, PDUs), and commands (uhubctl, relays)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from typing import Any

from jumpstarter.driver import Driver, export
from jumpstarter.interfaces.power import PowerInterface, PowerReading


class MockPower(PowerInterface, Driver):
    """A power switch that only remembers its state (for tests and demos)."""

    def __init__(self, **base: Any) -> None:
        super().__init__(**base)
        self.state = False

    async def reset(self) -> None:
        await super().reset()

    # Synchronous: they never wait, so they answer in the gRPC worker thread (no event-loop hop).
    @export
    def on(self) -> None:
        """Switch the board on."""
        self.state = True
        self.log.info("power on")  # for a mock, the log line is the observable effect

    @export
    def off(self) -> None:
        """Switch the board off."""
        self.state = False
        self.log.info("power off")

    @export
    def read(self) -> Iterator[PowerReading]:
        """One reading: 5 V, 2 A when on, 0 A when off."""
        yield PowerReading(5.0, 2.0 if self.state else 0.0)


def _request_spec(value: Any, default_method: str, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        raise ValueError(f"{where}: expected a URL or a mapping with 'url'")
    unknown = set(value) - {"url", "method", "body", "headers", "on_pattern"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if not value["url"].startswith(("http://", "https://")):
        raise ValueError(f"{where}: url must start with http:// or https://")
    return {"method": default_method, **value}


class HttpPower(PowerInterface, Driver):
    """A network power switch driven by HTTP requests (Shelly, Tasmota, PDUs with a web API).

    Config: `on` and `off` (a URL, POSTed, or {url, method, body, headers}),
    optional `state` ({url, on_pattern}: a regex that matches the response when
    the outlet is on), `headers`, `username`/`password` (basic auth), `timeout`.
    """

    def __init__(
        self,
        *,
        on: Any,
        off: Any,
        state: Any = None,
        headers: dict[str, str] | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.on_request = _request_spec(on, "POST", "on")
        self.off_request = _request_spec(off, "POST", "off")
        self.state_request = _request_spec(state, "GET", "state") if state is not None else None
        self.headers = dict(headers or {})
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self.timeout = float(timeout)

    def _send(self, spec: dict[str, Any]) -> str:
        import urllib.error
        import urllib.request

        body = spec.get("body")
        data = body.encode() if isinstance(body, str) else None
        request = urllib.request.Request(
            spec["url"], data=data, method=spec["method"], headers={**self.headers, **spec.get("headers", {})}
        )
        safe_url = spec["url"].split("?", 1)[0]
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return str(response.read(64 * 1024).decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            raise ConnectionError(
                f"power switch answered HTTP {exc.code} to {spec['method']} {safe_url}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionError(f"power switch unreachable at {safe_url}: {reason}") from None

    # Synchronous: a blocking HTTP request, made in the gRPC worker thread.
    @export
    def on(self) -> None:
        """Switch the outlet on."""
        self._send(self.on_request)
        self.log.info("power on")

    @export
    def off(self) -> None:
        """Switch the outlet off."""
        self._send(self.off_request)
        self.log.info("power off")

    @export
    def is_on(self) -> bool:
        """Ask the switch whether the outlet is on (needs a `state` request in the config)."""
        if self.state_request is None:
            raise NotImplementedError("this switch has no 'state' request configured")
        text = self._send(self.state_request)
        pattern = self.state_request.get("on_pattern") or r"\bon\b|true|\b1\b"
        return re.search(pattern, text, re.IGNORECASE) is not None


class CommandPower(PowerInterface, Driver):
    """A power switch driven by commands run on the lab host (uhubctl, relay tools, ipmitool).

    Config: `on`, `off` (shell command lines), optional `timeout` (seconds).
    """

    def __init__(self, *, on: str, off: str, timeout: float = 30.0, **base: Any) -> None:
        super().__init__(**base)
        self.on_command = on
        self.off_command = off
        self.timeout = float(timeout)

    async def _run(self, command: str) -> None:
        process = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise TimeoutError(f"power command did not finish within {self.timeout:g}s: {command}") from None
        if process.returncode != 0:
            tail = output.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise RuntimeError(
                f"power command exited with {process.returncode}: {command}: {' / '.join(tail)}"
            )

    @export
    async def on(self) -> None:
        """Run the `on` command."""
        await self._run(self.on_command)
        self.log.info("power on")

    @export
    async def off(self) -> None:
        """Run the `off` command."""
        await self._run(self.off_command)
        self.log.info("power off")
