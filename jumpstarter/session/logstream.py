"""`LogStream`: every subscriber gets every log record (PROTOCOL.md §4).

A logging handler on the root logger turns records into `LogStreamResponse`
messages and fans them out to one bounded queue per subscriber; a slow
subscriber loses its oldest records, never blocks the exporter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from jumpstarter.v1 import common_pb2, jumpstarter_pb2

QUEUE_DEPTH = 1024
HOOK_BACKLOG = (
    256  # hook output is replayed to late subscribers (the beforeLease hook runs before clients attach)
)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _source(name: str) -> common_pb2.LogSource:
    if name.startswith("driver."):
        return common_pb2.LOG_SOURCE_DRIVER
    if name.startswith("hook.before"):
        return common_pb2.LOG_SOURCE_BEFORE_LEASE_HOOK
    if name.startswith("hook.after"):
        return common_pb2.LOG_SOURCE_AFTER_LEASE_HOOK
    return common_pb2.LOG_SOURCE_SYSTEM


def to_message(record: logging.LogRecord) -> jumpstarter_pb2.LogStreamResponse:
    fields: dict[str, Any]
    if isinstance(record.msg, dict):  # a structlog event dict
        fields = dict(record.msg)
        message = str(fields.pop("event", ""))
    else:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        message = record.getMessage()
    for key in ("level", "timestamp", "logger", "_record", "_from_structlog"):
        fields.pop(key, None)
    stamp = Timestamp()
    stamp.FromNanoseconds(int(record.created * 1e9))
    msg = jumpstarter_pb2.LogStreamResponse(
        uuid="",
        severity=record.levelname,
        message=message,
        source=_source(record.name),
        timestamp=stamp,
        structured_fields={str(k): str(v) for k, v in fields.items()},
    )
    if "driver_type" in fields:
        msg.driver_type = str(fields["driver_type"])
    if "operation" in fields:
        msg.operation = str(fields["operation"])
    return msg


class LogBroadcaster(logging.Handler):
    """Fans log records out to every `subscribe()`r; safe to emit from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.loop = loop
        self._subscribers: set[asyncio.Queue[jumpstarter_pb2.LogStreamResponse]] = set()
        self.hook_backlog: collections.deque[jumpstarter_pb2.LogStreamResponse] = collections.deque(
            maxlen=HOOK_BACKLOG
        )

    def handle(self, record: logging.LogRecord) -> bool:
        if not self._subscribers and not record.name.startswith("hook."):
            return False  # nobody follows LogStream: skip the handler lock and filters too
        return super().handle(record)

    def emit(self, record: logging.LogRecord) -> None:  # `handle` already skipped records nobody wants
        try:
            message = to_message(record)
        except Exception:  # a record we cannot render must not break the caller
            return
        if threading.get_ident() == getattr(self.loop, "_thread_id", None):
            self._deliver(message)
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self.loop.call_soon_threadsafe(self._deliver, message)

    def _deliver(self, message: jumpstarter_pb2.LogStreamResponse) -> None:
        if message.source in (
            common_pb2.LOG_SOURCE_BEFORE_LEASE_HOOK,
            common_pb2.LOG_SOURCE_AFTER_LEASE_HOOK,
        ):
            self.hook_backlog.append(message)
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)

    async def subscribe(
        self, on_subscribed: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[jumpstarter_pb2.LogStreamResponse]:
        """Every record from now on; `on_subscribed` runs once records are being collected."""
        from jumpstarter.log import set_stream_level

        queue: asyncio.Queue[jumpstarter_pb2.LogStreamResponse] = asyncio.Queue(QUEUE_DEPTH)
        for message in self.hook_backlog:
            queue.put_nowait(message)
        self._subscribers.add(queue)
        set_stream_level(True)
        try:
            if on_subscribed is not None:
                await on_subscribed()
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)
            set_stream_level(bool(self._subscribers))
