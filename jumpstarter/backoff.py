"""One retry policy and one deadline for everything that waits or retries.

`Deadline` is passed down a call chain instead of recomputing remaining time at
each level (labgrid's `Timeout`); `Backoff` yields the pauses between attempts:
exponential from `start` to `cap`, optionally jittered, never past its deadline.

    backoff = Backoff(start=0.3, cap=2.0, deadline=Deadline(30))
    while True:
        try:
            return attempt(timeout=backoff.deadline.clamp(40.0))
        except TransientError:
            if not backoff.sleep():   # False: the next pause would pass the deadline
                raise
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time


class Deadline:
    """A point in monotonic time; `None` seconds means never."""

    def __init__(self, seconds: float | None) -> None:
        self.at = math.inf if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative (`math.inf` without a deadline)."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def allows(self, pause: float) -> bool:
        """True when `pause` seconds from now is still before the deadline."""
        return time.monotonic() + pause <= self.at

    def clamp(self, most: float, least: float = 1.0) -> float:
        """A per-attempt timeout: what is left, at most `most`, at least `least` (a last short try)."""
        return max(least, min(self.remaining(), most))


class Backoff:
    """Pauses between attempts: start, start*factor, ... up to cap; jitter spreads them ±fraction."""

    def __init__(
        self,
        start: float = 0.3,
        cap: float = 2.0,
        factor: float = 2.0,
        jitter: float = 0.0,
        deadline: Deadline | None = None,
    ) -> None:
        if start <= 0 or cap < start or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < start <= cap, factor >= 1 and 0 <= jitter < 1")
        self.start, self.cap, self.factor, self.jitter = start, cap, factor, jitter
        self.deadline = deadline or Deadline(None)
        self.current = start

    def reset(self) -> None:
        """After a success: the next failure starts again from the shortest pause."""
        self.current = self.start

    def next_pause(self) -> float | None:
        """The pause before the next attempt, or None when it would pass the deadline."""
        pause = self.current
        if self.jitter:
            pause *= 1 - self.jitter + 2 * self.jitter * random.random()
        if not self.deadline.allows(pause):
            return None
        self.current = min(self.current * self.factor, self.cap)
        return pause

    def sleep(self, stop: threading.Event | None = None) -> bool:
        """Blocking pause; False (without sleeping) when the deadline does not allow another attempt,
        and False as soon as `stop` is set (the caller gives up)."""
        pause = self.next_pause()
        if pause is None:
            return False
        if stop is not None:
            return not stop.wait(pause)
        time.sleep(pause)
        return True

    async def wait(self) -> bool:
        """asyncio pause; False (without waiting) when the deadline does not allow another attempt."""
        pause = self.next_pause()
        if pause is None:
            return False
        await asyncio.sleep(pause)
        return True
