"""Pairing across routerd workers (`workers: N`): who waits where, and relaying to that worker.

Workers share the listen port (SO_REUSEPORT), so the two callers of one stream id
may reach different workers. The first caller *claims* the stream id in the
workers' private directory: a hard link named after the hash of the id to its
worker's identity file (link() is atomic, so exactly one caller wins). A caller
that finds the id claimed by another worker relays its call, frames verbatim,
to that worker's private unix socket, where the ordinary pairing happens; the
owner learns the caller's address from `PEER_KEY` (trusted on that socket only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Sequence

import grpc

from jumpstarter.channels import message_limits

PEER_KEY = "x-jumpstarter-router-peer"
METHOD = "/jumpstarter.v1.RouterService/Stream"
CLAIM_TRIES = 3  # a claim released between our link() and our read: try again


def worker_socket(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


class Claims:
    """The stream ids whose lone caller waits in this worker, shared through `directory/claims`."""

    def __init__(self, directory: str, index: int) -> None:
        self.index = index
        self.folder = os.path.join(directory, "claims")
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        self.identity = os.path.join(directory, f"worker-{index}.id")
        with open(self.identity, "w") as handle:
            handle.write(str(index))

    def _path(self, stream_id: str) -> str:
        return os.path.join(self.folder, hashlib.sha256(stream_id.encode()).hexdigest())

    def claim(self, stream_id: str) -> int | None:
        """None when this worker took `stream_id` now; else the index of the worker holding it (maybe ours)."""
        path = self._path(stream_id)
        for _ in range(CLAIM_TRIES):
            try:
                os.link(self.identity, path)
                return None
            except FileExistsError:
                pass
            try:
                with open(path) as handle:
                    owner = int(handle.read())
            except (FileNotFoundError, ValueError):
                continue
            return owner
        return self.index  # claimed and released over and over: wait here (the peer will time out alone)

    def release(self, stream_id: str) -> None:
        path = self._path(stream_id)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.stat(self.identity).st_ino:
                os.unlink(path)


class Workers:
    """Channels to the other workers' private sockets (plaintext: the directory is 0700)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.channels: dict[int, grpc.aio.Channel] = {}

    def channel(self, index: int) -> grpc.aio.Channel:
        channel = self.channels.get(index)
        if channel is None:
            target = f"unix:{worker_socket(self.directory, index)}"
            channel = self.channels[index] = grpc.aio.insecure_channel(target, options=message_limits())
        return channel

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def relay(
    context: grpc.aio.ServicerContext, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]
) -> tuple[grpc.StatusCode, str]:
    """Forward `context`'s call to the owner worker until it ends; returns the owner's status.

    Messages pass as bytes both ways; a half-close is passed on; when our caller goes
    away the relayed call is cancelled, which the owner reports to the other peer.
    """
    call = channel.stream_stream(METHOD)(metadata=tuple(metadata))

    async def up() -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            await call.write(message)
        await call.done_writing()

    sending = asyncio.ensure_future(up())
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            await context.write(message)
        code = await call.code()
        if code == grpc.StatusCode.OK and not sending.done():
            await sending  # the owner ended OK: our caller has half-closed too
        return code, await call.details() or ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    finally:
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        call.cancel()
