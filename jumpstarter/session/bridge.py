"""Between gRPC's worker threads and the session's event loop.

The session is served on gRPC's synchronous thread-pool server (its per-call cost is a
fraction of grpc.aio's); drivers' async methods and byte streams live on the session's
event loop. `LoopBridge` runs a coroutine or drains an async iterator there for a worker
thread, cancelling it when the RPC ends early; `Channel` is the bounded queue both ways,
waking a waiter only when it waits (no polling); `stream_frames` moves a byte stream's
frames (PROTOCOL.md §5) between a `RouterService.Stream` call and a `ByteStream`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc

from jumpstarter import frames
from jumpstarter.streams import ByteStream

T = TypeVar("T")
#: Frames in flight per direction of a byte stream (up to 256 KiB each): enough to keep both sides busy.
STREAM_DEPTH = 8
Cancelled = concurrent.futures.CancelledError


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CLOSED = _Marker("CLOSED")  # what a closed channel gives: the RPC ended, nobody wants more
END = _Marker("END")  # the producer finished cleanly
OPENED = _Marker("OPENED")  # a byte stream is open: send the initial metadata now


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Channel:
    """A bounded FIFO between the event loop and one thread, either way round; `close()` drops it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int) -> None:
        self._loop = loop
        self._depth = depth
        self._items: collections.deque[Any] = collections.deque()
        self._condition = threading.Condition(threading.Lock())  # the thread side waits here
        self._waiter: asyncio.Future[None] | None = None  # the loop side waits here
        self._closed = False

    def _wake_loop(self) -> None:  # holding the lock
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            with contextlib.suppress(RuntimeError):  # the loop already closed (shutdown): nobody waits
                self._loop.call_soon_threadsafe(_release, waiter)

    # -- the thread side -------------------------------------------------

    def put(self, item: Any) -> bool:
        """Add `item`, waiting for room; False when the channel was closed."""
        with self._condition:
            while len(self._items) >= self._depth and not self._closed:
                self._condition.wait()
            if self._closed:
                return False
            self._items.append(item)
            self._wake_loop()
            return True

    def get(self) -> Any:
        """The next item, waiting for one; CLOSED once the channel was closed."""
        with self._condition:
            while not self._items:
                if self._closed:
                    return CLOSED
                self._condition.wait()
            item = self._items.popleft()  # `close` empties the queue: an item means still open
            self._wake_loop()
            return item

    # -- the loop side ---------------------------------------------------

    async def aput(self, item: Any) -> bool:
        while True:
            with self._condition:
                if self._closed:
                    return False
                if len(self._items) < self._depth:
                    self._items.append(item)
                    self._condition.notify()
                    return True
                waiter = self._waiter = self._loop.create_future()
            await waiter

    async def aget(self) -> Any:
        while True:
            with self._condition:
                if self._closed:
                    return CLOSED
                if self._items:
                    item = self._items.popleft()
                    self._condition.notify()
                    return item
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def finish(self, item: Any) -> None:
        """Any thread, never waits: `item` goes after everything queued, even when full (the producer ended)."""
        with self._condition:
            if not self._closed:
                self._items.append(item)
                self._condition.notify()
                self._wake_loop()

    def close(self) -> None:
        """Any thread: drop what is queued and wake both sides."""
        with self._condition:
            self._closed = True
            self._items.clear()
            self._condition.notify_all()
            self._wake_loop()


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _when_done(context: grpc.ServicerContext, cancel: Callable[[], Any]) -> None:
    """Run `cancel` when the RPC ends (cancelled, deadline, client gone, or done); now if it already did."""
    if not context.add_callback(cancel):
        cancel()


def _on_cancel(future: concurrent.futures.Future[None], channel: Channel) -> None:
    """A producer cancelled on the loop by anyone but `stop` (a driver, a loop shutdown) puts no
    END or failure: its consumer gets `Cancelled` instead of waiting for ever (and its client too,
    e.g. for the initial metadata of a stream that never opened)."""

    def done(future: concurrent.futures.Future[None]) -> None:
        if future.cancelled():
            channel.finish(_Failure(Cancelled()))

    future.add_done_callback(done)


class LoopBridge:
    """Runs the session's async work on its event loop for gRPC worker threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coroutine: Coroutine[Any, Any, T], context: grpc.ServicerContext) -> T:
        """The coroutine's result; raises `Cancelled` when the RPC ended first (the coroutine is cancelled)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        _when_done(context, future.cancel)
        return future.result()

    def iterate(self, items: AsyncIterator[T], context: grpc.ServicerContext) -> Iterator[T]:
        """The items of an async iterator, produced on the loop; raises `Cancelled` if the RPC ended first."""
        channel = Channel(self.loop, STREAM_DEPTH)

        async def produce() -> None:
            try:
                async for item in items:
                    if not await channel.aput(item):
                        break
                else:
                    await channel.aput(END)
            except Exception as exc:
                await channel.aput(_Failure(exc))
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()

        future = asyncio.run_coroutine_threadsafe(produce(), self.loop)
        _on_cancel(future, channel)

        def stop() -> None:
            channel.close()
            future.cancel()

        _when_done(context, stop)
        try:
            while (item := channel.get()) is not END:
                if item is CLOSED:
                    raise Cancelled()
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop()  # the consumer stopped early: stop the producer too

    def stream_frames(
        self,
        opener: Callable[[], contextlib.AbstractAsyncContextManager[ByteStream]],
        metadata: tuple[tuple[str, str], ...],
        requests: Iterator[Any],
        context: grpc.ServicerContext,
    ) -> Iterator[frames.Frame]:
        """The frames of a `RouterService.Stream` call whose other end is the stream `opener` opens.

        The stream is opened on the loop; once it is, `metadata` goes out as initial metadata.
        Client GOAWAY or half-close = EOF into the stream; its EOF = our GOAWAY; the call ends when
        both directions did. RST_STREAM and stream errors end it with the error (`status_for`).
        """
        inbound = Channel(self.loop, STREAM_DEPTH)
        outbound = Channel(self.loop, STREAM_DEPTH)
        future = asyncio.run_coroutine_threadsafe(_serve(opener, inbound, outbound), self.loop)
        _on_cancel(future, outbound)

        def stop() -> None:
            inbound.close()
            outbound.close()
            future.cancel()

        _when_done(context, stop)
        reader: threading.Thread | None = None
        try:
            while (item := outbound.get()) is not END:
                if item is OPENED:
                    context.send_initial_metadata(metadata)
                    reader = threading.Thread(
                        target=_read, args=(requests, inbound), name="stream-reader", daemon=True
                    )
                    reader.start()
                elif item is CLOSED:
                    raise Cancelled()
                elif isinstance(item, _Failure):
                    raise item.error
                else:
                    yield item
        finally:
            stop()


def _read(requests: Iterator[Any], inbound: Channel) -> None:
    """The reader thread: client frames into `inbound` (GOAWAY or the end of the call = EOF)."""
    try:
        for frame in requests:
            if (data := frames.content(frame, "client")) is None:
                break
            if data and not inbound.put(data):
                return
        inbound.put(END)
    except grpc.RpcError:  # the call ended under us: `stop` closed the channels already
        inbound.close()
    except Exception as exc:  # RST_STREAM (StreamReset), a malformed frame
        inbound.put(_Failure(exc))


async def _serve(
    opener: Callable[[], contextlib.AbstractAsyncContextManager[ByteStream]],
    inbound: Channel,
    outbound: Channel,
) -> None:
    """On the loop: open the stream, pump both directions, close it; the outcome goes to `outbound`."""
    try:
        async with opener() as stream:
            await outbound.aput(OPENED)
            try:
                await _pump(stream, inbound, outbound)
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        await outbound.aput(END)
    except Exception as exc:
        await outbound.aput(_Failure(exc))


async def _pump(stream: ByteStream, inbound: Channel, outbound: Channel) -> None:
    async def into_stream() -> None:
        while (data := await inbound.aget()) is not END:
            if data is CLOSED:
                return
            if isinstance(data, _Failure):
                raise data.error
            await stream.send(data)
        await stream.send_eof()

    async def out_of_stream() -> None:
        while data := await stream.receive():
            if not await outbound.aput(frames.Frame(data)):
                return
        await outbound.aput(frames.Frame(b"", frames.GOAWAY))

    tasks = [asyncio.ensure_future(into_stream()), asyncio.ensure_future(out_of_stream())]
    try:
        for finished in asyncio.as_completed(tasks):
            await finished
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
