"""The board's health check (issue 12): a built-in `health` driver whose `run()` runs the check.

The exporter config's `health: {command, timeout}` is run exactly like a lease hook
(exporterd/hooks.py: a new process group, `JUMPSTARTER_HOST` set to the board's own socket so
`jumpstarter power on` or a pytest file drives the board with the client API, the timeout),
as the exporterd's own (unprivileged) user. controllerd calls `run()` through routerd with a
lease of its own, as any remote client would, and records the result as the board's state.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from exporterd.hooks import run_hook
from jumpstarter.config.exporter import HookConfig
from jumpstarter.driver import Driver, export

OUTPUT_LINES = 40  # the last lines of output a result keeps
OUTPUT_CHARS = 4096  # and at most this many characters of them
CHILD = "health"  # its name in the board's driver tree


class HealthCheck(Driver):
    """Runs the board's configured health check; one check at a time."""

    def __init__(self, check: HookConfig, socket_path: str, **base: Any) -> None:
        super().__init__(description="the board's health check (exporter config `health:`)", **base)
        self.check = check
        self.socket_path = socket_path
        self.running = False

    @export
    async def run(self) -> dict[str, Any]:
        """Run the health check now: {ok, output (its last lines), duration (seconds)}."""
        if self.running:
            raise RuntimeError("a health check is already running on this board")
        self.running = True
        output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        started = time.monotonic()
        try:
            ok, outcome = await run_hook("health", self.check, {"JUMPSTARTER_HOST": self.socket_path}, output)
        finally:
            self.running = False
        text = "\n".join([*output, outcome])[-OUTPUT_CHARS:]
        return {"ok": ok, "output": text, "duration": round(time.monotonic() - started, 3)}


def with_health_check(root: Driver, check: HookConfig | None, socket_path: str) -> Driver:
    """`root` with the `health` child added when the config declares a check (unless a driver has that name)."""
    if check is not None and CHILD not in root.children:
        root.children[CHILD] = HealthCheck(check, socket_path)
    return root
