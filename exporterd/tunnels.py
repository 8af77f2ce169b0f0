"""Bounds on the exporter's router tunnels that no client has joined yet.

Every `ListenResponse` makes the exporter open a router stream and wait for the
client; upstream clients Dial once as a probe and never come, and a client can
Dial without ever connecting. A tunnel is *pending* until the first frame of its
client arrives (an HTTP/2 client always speaks first); pending tunnels give up
after `wait` seconds, and a lease keeps at most `max_pending` of them: a new one
pushes out the oldest. Only a joined tunnel gets a connection to the session.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

DEFAULT_TUNNEL_WAIT = 30.0
DEFAULT_MAX_PENDING = 8


@dataclass(frozen=True)
class TunnelLimits:
    """How long a tunnel waits for its client, and how many may wait per lease."""

    wait: float = DEFAULT_TUNNEL_WAIT
    max_pending: int = DEFAULT_MAX_PENDING


class NoClient(Exception):
    """The tunnel's client never came (or the stream ended before it spoke)."""


class PendingTunnels:
    """The pending tunnels of one lease, oldest first."""

    def __init__(self, wait: float, max_pending: int) -> None:
        self.wait = wait
        self.max_pending = max_pending
        self.tasks: dict[asyncio.Task[None], None] = {}

    def admit(self, task: asyncio.Task[None]) -> asyncio.Task[None] | None:
        """Count a new tunnel as pending; returns the oldest one it pushed out (cancelled), if any."""
        evicted = None
        if len(self.tasks) >= self.max_pending:
            evicted = next(iter(self.tasks))
            del self.tasks[evicted]
            evicted.cancel()
        self.tasks[task] = None
        task.add_done_callback(self.joined)
        return evicted

    def joined(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)

    async def first_frame(self, call: Any) -> Any:
        """The client's first frame; NoClient when it does not come within `wait` seconds."""
        try:
            frame = await asyncio.wait_for(call.read(), self.wait)
        except TimeoutError:
            call.cancel()
            raise NoClient(f"no client joined within {self.wait:g} s") from None
        if frame is grpc.aio.EOF:
            raise NoClient("the router stream ended before a client joined")
        task = asyncio.current_task()
        if task is not None:
            self.joined(task)
        return frame
