"""Count the work a call does as Python lines executed in controllerd and the selector code.

A machine-independent measure for "does this grow linearly" tests and benchmarks: the count
is the same on an idle laptop and on a loaded CI machine, unlike wall time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_WATCHED = (os.path.join(_ROOT, "controllerd") + os.sep, os.path.join(_ROOT, "jumpstarter", "selector.py"))


async def count_lines(call: Callable[[], Awaitable[Any]]) -> int:
    """Await `call()` and return how many lines of controllerd/ and jumpstarter/selector.py it ran."""
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def start(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(_WATCHED) else None

    previous = sys.gettrace()
    sys.settrace(start)
    try:
        await call()
    finally:
        sys.settrace(previous)
    return count
