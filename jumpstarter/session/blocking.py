"""A driver's blocking byte stream (a synchronous `@exportstream`) served without the event loop.

The gRPC worker thread moves the stream's bytes to the client, one reader thread moves the
client's frames into the stream: no loop hop per frame. Same frame semantics as the loop's
bridge (PROTOCOL.md §5): client GOAWAY or half-close = EOF into the stream, its EOF = our
GOAWAY, the call ends when both directions did; RST_STREAM or a stream error ends it with
that error (`status_for`), and an ended call aborts the stream.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from jumpstarter import frames
from jumpstarter.streams import BlockingByteStream


def stream_blocking(
    opener: Callable[[], contextlib.AbstractContextManager[BlockingByteStream]],
    metadata: tuple[tuple[str, str], ...],
    requests: Iterator[Any],
    context: grpc.ServicerContext,
) -> Iterator[frames.Frame]:
    """The frames of a `RouterService.Stream` call whose other end is the stream `opener` opens."""
    with opener() as stream:
        if not context.add_callback(stream.abort):  # the call ended (cancelled, client gone): stop both ways
            stream.abort()
        context.send_initial_metadata(metadata)
        failure: list[BaseException] = []
        reader = threading.Thread(
            target=_inbound, args=(requests, stream, failure), name="stream-reader", daemon=True
        )
        reader.start()
        while data := stream.receive():
            yield frames.Frame(data)
        if failure:
            raise failure[0]
        yield frames.Frame(b"", frames.GOAWAY)
        reader.join()  # the call ends when the client's direction did too
        if failure:
            raise failure[0]


def _inbound(requests: Iterator[Any], stream: BlockingByteStream, failure: list[BaseException]) -> None:
    try:
        for frame in requests:
            if (data := frames.content(frame, "client")) is None:
                break
            if data:
                stream.send(data)
        stream.send_eof()
    except grpc.RpcError:  # the call ended under us: the callback aborted the stream
        pass
    except Exception as exc:  # RST_STREAM (StreamReset), a malformed frame, the stream failed
        failure.append(exc)
        stream.abort()  # wakes the worker's receive: it reports the failure
