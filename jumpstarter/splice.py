"""Splice a local stream connection onto a router stream (PROTOCOL.md §5-6).

Both ends of a distributed session do this: the client for every connection to
its tunnel socket, the exporter for every `ListenResponse` (to its own session
socket). The router carries the bytes of a whole gRPC connection in DATA frames.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from jumpstarter import frames
from jumpstarter.v1 import router_pb2

# Up to 256 KiB per frame: the router's cost is per frame (64 KiB frames cost it twice the CPU per
# GiB, tests/bench/bench_router.py); every peer accepts messages of at least 4 MiB (PROTOCOL.md §5).
CHUNK = 256 * 1024


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    call: Any,
    linger: float = 10.0,
    first: Any = None,
) -> None:
    """Copy bytes between a local connection and a router stream (PROTOCOL.md §5 frames).

    EOF travels as GOAWAY + half-close one way and as a half-close of the local
    socket the other way; the call is read to its end so that the router can end
    both sides OK. After local EOF the exporter gets `linger` seconds to finish.
    `first` is a frame already read from the call (the exporter waits for it).
    """

    async def up() -> None:  # local -> router
        while data := await reader.read(CHUNK):
            await call.write(router_pb2.StreamRequest(payload=data))
        await call.write(router_pb2.StreamRequest(frame_type=frames.GOAWAY))
        await call.done_writing()

    async def deliver(frame: Any) -> bool:  # router -> local for one frame; True at EOF (GOAWAY)
        data = frames.content(frame)  # RST_STREAM raises: the local connection is dropped
        if data is None:
            writer.write_eof()
            return True
        if data:
            writer.write(data)
            await writer.drain()
        return False

    async def down() -> None:  # router -> local; GOAWAY or the end of the call = EOF
        # read(), not `async for`: grpc.aio refuses to mix the two styles, and the
        # exporter has already read `first` with read()
        eof = first is not None and await deliver(first)
        while (frame := await call.read()) is not grpc.aio.EOF:
            if not eof:
                eof = await deliver(frame)
        if not eof:
            writer.write_eof()

    sending, receiving = asyncio.ensure_future(up()), asyncio.ensure_future(down())
    try:
        done, _ = await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
        if sending in done and sending.exception() is None and not receiving.done():
            await asyncio.wait({receiving}, timeout=linger)
    except (grpc.RpcError, OSError):
        pass
    finally:
        for task in (sending, receiving):
            task.cancel()
        await asyncio.gather(sending, receiving, return_exceptions=True)
        call.cancel()
