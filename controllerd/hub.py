"""In-memory signalling between the controller's RPCs, in one process: with several replicas
(Kubernetes store), the leader's; the others forward these RPCs to it (controllerd/replica.py).

- exporter watches: the `Status` stream of an exporter wakes up when its lease state changes;
- announced leases: the lease each exporter was last told about, so that every stream of it
  walks through `leased=false` before a different lease (PROTOCOL.md §6.2);
- listen queues: `Dial` pushes one `ListenResponse` to the newest `Listen` of a lease;
- status waits: `Dial` waits for an exporter to become ready.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

LISTEN_DEPTH = 8


class Versioned:
    """A counter plus an event that fires on every bump."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_newer(self, seen: int, timeout: float | None = None) -> bool:
        if self.version != seen:
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class ListenQueue:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(LISTEN_DEPTH)
        self.superseded = asyncio.Event()


class Hub:
    def __init__(self) -> None:
        self.exporters: dict[tuple[str, str], Versioned] = defaultdict(Versioned)
        self.status_streams: dict[tuple[str, str], int] = defaultdict(int)
        self.announced: dict[tuple[str, str], str | None] = {}
        self.listeners: dict[tuple[str, str], ListenQueue] = {}
        self.scheduler_wakeup = asyncio.Event()

    def exporter_changed(self, namespace: str, name: str) -> None:
        self.exporters[(namespace, name)].bump()

    def wake_scheduler(self) -> None:
        self.scheduler_wakeup.set()

    def listen(self, namespace: str, lease: str) -> ListenQueue:
        """Register the newest Listen of a lease; the previous one is superseded."""
        key = (namespace, lease)
        old = self.listeners.get(key)
        if old is not None:
            old.superseded.set()
        current = ListenQueue()
        self.listeners[key] = current
        return current

    def unlisten(self, namespace: str, lease: str, queue: ListenQueue) -> None:
        if self.listeners.get((namespace, lease)) is queue:
            del self.listeners[(namespace, lease)]

    def listening(self, namespace: str, lease: str) -> bool:
        current = self.listeners.get((namespace, lease))
        return current is not None and not current.superseded.is_set()

    def push(self, namespace: str, lease: str, item: Any) -> bool:
        """Hand one item to the lease's current Listen; False if nobody listens (or it is full)."""
        current = self.listeners.get((namespace, lease))
        if current is None or current.superseded.is_set():
            return False
        try:
            current.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def connected(self, namespace: str, name: str) -> bool:
        return self.status_streams.get((namespace, name), 0) > 0
