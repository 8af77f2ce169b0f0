"""Durations as people type them: `30m`, `1h30m`, `2d`, `90` (seconds), `01:30:00`, ISO `PT1H`."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text: str) -> float:
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    elif re.fullmatch(r"\d+:\d{2}(:\d{2})?", value):
        parts = [int(p) for p in value.split(":")]
        seconds = float(parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) == 3 else 0))
    elif (iso := _ISO.match(text.strip().upper())) and any(iso.groups()):
        d, h, m, s = (float(g) if g else 0.0 for g in iso.groups())
        seconds = d * 86400 + h * 3600 + m * 60 + s
    else:
        pieces = [(found.group(1), found.group(2)) for found in _PART.finditer(value)]
        if not pieces or "".join(number + unit for number, unit in pieces) != value:
            raise ValueError(f"invalid duration {text!r} (examples: 30m, 1h30m, 2d, 90, 01:30:00, PT1H)")
        seconds = sum(float(number) * _UNITS[unit] for number, unit in pieces)
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds
