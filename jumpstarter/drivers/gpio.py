"""GPIO power: a relay on a GPIO line (Raspberry Pi relay boards), through libgpiod's v2 Python binding.

The binding is PyPI `gpiod` 2.x, libgpiod's official one (`gpiod.request_lines`); install it with
`pip install 'jumpstarter-lab[gpio]'`. The line is requested on the first switch of a session (with
that value as its initial output, so requesting never glitches the relay) and, when the session ends
or exporterd stops, driven to `safe_state` and released.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from jumpstarter.driver import Driver, export
from jumpstarter.interfaces.power import PowerInterface

CONSUMER = "jumpstarter"  # what `gpioinfo` shows as the line's user
LINE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEVICE = re.compile(r"^/dev/[A-Za-z0-9_./:+-]{1,200}$")


def gpiod_binding() -> Any:
    """The `gpiod` module, if it is the v2 binding (a clear error otherwise)."""
    try:
        import gpiod
    except ImportError:
        raise ValueError(
            "libgpiod's Python binding is not installed: pip install 'gpiod>=2' (or the 'gpio' extra)"
        ) from None
    if not callable(getattr(gpiod, "request_lines", None)):
        raise ValueError("the installed gpiod is the 1.x binding: pip install 'gpiod>=2'")
    return gpiod


def _delay(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 600:
        raise ValueError(f"{what}: expected seconds from 0 to 600, got {value!r}")
    return float(value)


class GpioPower(PowerInterface, Driver):
    """A relay switched by one GPIO line.

    Config: `line` (offset on the chip, e.g. 17, or the line's name, e.g. GPIO17), `chip` (default
    /dev/gpiochip0), `active_low` (the relay closes when the line is low; most relay HATs), `on_delay`
    / `off_delay` (seconds `on()` / `off()` wait after switching: power settling, capacitors draining;
    so `cycle(wait)` keeps the board off at least `off_delay`), `safe_state` (off or on: what the
    line is left at when the session ends or exporterd stops; default off).

    The example runs in CI against tests/fakes/gpiod, a stand-in for the binding (no GPIO chip there):

    >>> from jumpstarter.driver.serve import serve
    >>> with serve(GpioPower(line=17, active_low=True, off_delay=0.1)) as power:
    ...     power.on()
    ...     power.call("is_on")
    ...     power.cycle(wait=0)
    ...     power.off()
    ...     power.call("is_on")
    True
    False
    """

    def __init__(
        self,
        *,
        line: int | str,
        chip: str = "/dev/gpiochip0",
        active_low: bool = False,
        on_delay: float = 0.0,
        off_delay: float = 0.0,
        safe_state: str = "off",
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if isinstance(line, bool) or not (
            (isinstance(line, int) and 0 <= line <= 1023) or (isinstance(line, str) and LINE_NAME.match(line))
        ):
            raise ValueError(
                f"line: expected a line offset (0-1023) or a line name like GPIO17, got {line!r}"
            )
        if not isinstance(chip, str) or not DEVICE.match(chip) or ".." in chip:
            raise ValueError(f"chip: expected a GPIO chip device under /dev/, got {chip!r}")
        if not isinstance(active_low, bool):
            raise ValueError(f"active_low: expected true or false, got {active_low!r}")
        if safe_state not in ("off", "on"):
            raise ValueError(f"safe_state: expected off or on, got {safe_state!r}")
        self.line = line
        self.chip = chip
        self.active_low = active_low
        self.on_delay = _delay(on_delay, "on_delay")
        self.off_delay = _delay(off_delay, "off_delay")
        self.safe_state = safe_state == "on"
        self.gpiod = gpiod_binding()  # at load: a missing binding is a config-time error, not a call-time one
        self._request: Any = None
        self._lock = asyncio.Lock()

    def _value(self, on: bool) -> Any:
        value = self.gpiod.line.Value
        return value.ACTIVE if on else value.INACTIVE

    def _set(self, on: bool) -> None:
        """Drive the line (active = relay energised; `active_low` maps that to a low level)."""
        if self._request is not None:
            self._request.set_value(self.line, self._value(on))
            return
        settings = self.gpiod.LineSettings(
            direction=self.gpiod.line.Direction.OUTPUT,
            active_low=self.active_low,
            output_value=self._value(on),
        )
        try:
            self._request = self.gpiod.request_lines(
                self.chip, consumer=CONSUMER, config={self.line: settings}
            )
        except OSError as exc:
            hint = " (another program holds it: see gpioinfo)" if exc.errno == 16 else ""
            raise ConnectionError(
                f"cannot request line {self.line} of {self.chip}: {exc.strerror or exc}{hint}"
            ) from None
        except ValueError as exc:  # an unknown line name
            raise ValueError(f"{self.chip}: {exc}") from None

    async def _switch(self, on: bool) -> None:
        async with self._lock:  # a cycle's off and on never interleave with another caller's
            self._set(on)
            self.log.info("power on" if on else "power off", line=self.line, chip=self.chip)
            delay = self.on_delay if on else self.off_delay
            if delay:
                await asyncio.sleep(delay)

    @export
    async def on(self) -> None:
        """Energise the relay, then wait `on_delay`."""
        await self._switch(True)

    @export
    async def off(self) -> None:
        """Release the relay, then wait `off_delay`."""
        await self._switch(False)

    @export
    async def is_on(self) -> bool:
        """Whether the line is active, read back from the chip (known once this session switched it)."""
        if self._request is None:
            raise ValueError("unknown until this session switches the relay on or off")
        return bool(self._request.get_value(self.line) == self._value(True))

    async def close(self) -> None:
        """Leave the relay in `safe_state` and release the line (session end, exporterd stop)."""
        request, self._request = self._request, None
        if request is not None:
            try:
                request.set_value(self.line, self._value(self.safe_state))
                self.log.info("power safe state", state="on" if self.safe_state else "off", line=self.line)
            except Exception as exc:
                self.log.error("cannot set the safe state", line=self.line, error=str(exc))
            finally:
                try:
                    request.release()
                except Exception as exc:  # close() must not raise; the kernel frees it with our process
                    self.log.error("cannot release the line", line=self.line, error=str(exc))
        await super().close()
