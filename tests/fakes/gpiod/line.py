"""`gpiod.line` of the v2 binding: the enums `power.gpio` uses (values as in libgpiod)."""

from __future__ import annotations

import enum


class Direction(enum.Enum):
    AS_IS = 1
    INPUT = 2
    OUTPUT = 3


class Value(enum.Enum):
    INACTIVE = 0
    ACTIVE = 1
