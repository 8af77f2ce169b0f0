"""A stand-in for libgpiod's v2 Python binding (PyPI `gpiod` 2.x), faithful where `power.gpio` touches it.

Same calls and behaviour as the real one: `request_lines(path, consumer=, config=)` raises
FileNotFoundError for a missing chip, OSError(EBUSY) for a line another request holds, ValueError for
an unknown line name; `active_low` maps logical values to physical levels in the "kernel" (here);
using a released request raises RequestReleasedError; a holder that died frees its lines, as the
kernel does when a process exits. State lives in the JSON file `$JUMPSTARTER_FAKE_GPIOD`:
`{chip path: {"lines": N, "names": {name: offset}, "levels": {offset: 0|1}, "holders": {offset: pid},
"timeline": [[time, offset, level], ...]}}`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import line
from .line import Direction, Value

__version__ = "2.2.0-standin"


class RequestReleasedError(Exception):
    def __init__(self) -> None:
        super().__init__("GPIO lines have been released")


@dataclass
class LineSettings:
    direction: Direction = Direction.AS_IS
    active_low: bool = False
    output_value: Value = Value.INACTIVE


@contextlib.contextmanager
def _chips() -> Iterator[dict[str, Any]]:
    path = os.environ["JUMPSTARTER_FAKE_GPIOD"]
    with open(path, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state = json.load(handle)
        yield state
        handle.seek(0)
        handle.truncate()
        json.dump(state, handle)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _physical(value: Value, active_low: bool) -> int:
    if not isinstance(value, Value):
        raise TypeError(f"expected a gpiod.line.Value, got {value!r}")
    return (value is Value.ACTIVE) != active_low


class LineRequest:
    def __init__(self, chip: str, offsets: dict[Any, tuple[int, bool]]) -> None:
        self._chip = chip
        self._lines = offsets  # line key (offset or name) -> (offset, active_low)
        self._released = False

    @property
    def offsets(self) -> list[int]:
        return [offset for offset, _ in self._lines.values()]

    def _line(self, key: Any) -> tuple[int, bool]:
        if self._released:
            raise RequestReleasedError()
        if key not in self._lines:
            raise ValueError(f"line {key!r} is not part of this request")
        return self._lines[key]

    def set_value(self, key: Any, value: Value) -> None:
        offset, active_low = self._line(key)
        level = int(_physical(value, active_low))
        with _chips() as chips:
            chip = chips[self._chip]
            chip["levels"][str(offset)] = level
            chip["timeline"].append([time.time(), offset, level])

    def get_value(self, key: Any) -> Value:
        offset, active_low = self._line(key)
        with _chips() as chips:
            level = chips[self._chip]["levels"].get(str(offset), 0)
        return Value.ACTIVE if bool(level) != active_low else Value.INACTIVE

    def release(self) -> None:
        if self._released:
            raise RequestReleasedError()
        self._released = True
        with _chips() as chips:
            holders = chips[self._chip]["holders"]
            for offset, _ in self._lines.values():
                holders.pop(str(offset), None)

    def __enter__(self) -> LineRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def request_lines(
    path: str, consumer: str | None = None, config: dict[Any, LineSettings | None] | None = None, **_: Any
) -> LineRequest:
    with _chips() as chips:
        if path not in chips:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        chip = chips[path]
        lines: dict[Any, tuple[int, bool]] = {}
        for key, settings in (config or {}).items():
            settings = settings or LineSettings()
            if isinstance(key, str):
                if key not in chip["names"]:
                    raise ValueError(f"unknown line name: {key}")
                offset = chip["names"][key]
            else:
                offset = int(key)
            if not 0 <= offset < chip["lines"]:
                raise OSError(errno.EINVAL, "Invalid argument")
            holder = chip["holders"].get(str(offset))
            if holder is not None and _alive(holder):
                raise OSError(errno.EBUSY, "Device or resource busy")
            lines[key] = (offset, settings.active_low)
        for key, settings in (config or {}).items():
            settings = settings or LineSettings()
            offset, active_low = lines[key]
            chip["holders"][str(offset)] = os.getpid()
            if settings.direction is Direction.OUTPUT:
                level = int(_physical(settings.output_value, active_low))
                chip["levels"][str(offset)] = level
                chip["timeline"].append([time.time(), offset, level])
    return LineRequest(path, lines)


def new_chip(
    state_path: str, chip: str = "/dev/gpiochip0", lines: int = 54, names: dict[str, int] | None = None
) -> None:
    """Test setup: a chip with every line low and free (the stand-in's gpio-sim `live` step)."""
    state: dict[str, Any] = {}
    if os.path.exists(state_path):
        with open(state_path) as handle:
            state = json.load(handle)
    state[chip] = {"lines": lines, "names": dict(names or {}), "levels": {}, "holders": {}, "timeline": []}
    with open(state_path, "w") as handle:
        json.dump(state, handle)


def chip_state(state_path: str, chip: str = "/dev/gpiochip0") -> dict[str, Any]:
    """Test check: the chip's levels, holders and timeline as the stand-in "kernel" has them."""
    with open(state_path) as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        return dict(json.load(handle)[chip])


__all__ = ["LineRequest", "LineSettings", "RequestReleasedError", "line", "request_lines"]
