"""Forward one call, as opaque bytes, to the leading controller replica (controllerd/replica.py).

The leader authenticates the call: only the metadata it reads (PROTOCOL.md §3) is passed, as it
came. The leader's certificate is the replicas' shared Service certificate, checked against the
controller's CA under the Service's host name. Bounded: at most MAX_FORWARDED calls at a time
per replica, and the message limits of jumpstarter/channels.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import structlog

from controllerd.replica import FORWARDED_HEADER, ReplicaGate, TermOver, shaped, until
from jumpstarter.backoff import Deadline
from jumpstarter.channels import CONTROLLER_MAX_RECEIVE, message_limits

log = structlog.get_logger("replica")

FORWARDED_METADATA = frozenset(
    {"authorization", "jumpstarter-kind", "jumpstarter-namespace", "jumpstarter-name"}
)
HOLD = 30.0  # seconds a call waits for a reachable leader (longer than a dead leader's claim, 15 s)
MAX_FORWARDED = 16384  # calls in flight (exporters hold two streams each)
KEEP_CHANNELS = 2  # the current leader's channel and the previous one (its calls are ending)
CHANNEL_OPTIONS = [
    *message_limits(receive=CONTROLLER_MAX_RECEIVE, send=CONTROLLER_MAX_RECEIVE),
    ("grpc.enable_retries", 0),
    ("grpc.max_reconnect_backoff_ms", 3000),
    # a leader that went silent (its node died) is noticed within seconds; the server allows 5 s pings
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class Forwarder:
    def __init__(
        self,
        gate: ReplicaGate,
        identity: str,
        ca_pem: bytes,
        server_name: str,
        max_calls: int = MAX_FORWARDED,
    ) -> None:
        self.gate = gate
        self.identity = identity
        self.credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        self.server_name = server_name  # the name the shared certificate carries, not the pod's address
        self.max_calls = max_calls
        self.active = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.pop(address, None)
        if channel is None:
            channel = grpc.aio.secure_channel(
                address,
                self.credentials,
                options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self.server_name)],
            )
        self._channels[address] = channel  # most recently used last
        while len(self._channels) > KEEP_CHANNELS:
            old = self._channels.pop(next(iter(self._channels)))
            closing = asyncio.get_running_loop().create_task(old.close(grace=5))
            self._closing.add(closing)  # held until done: the loop keeps only weak references to tasks
            closing.add_done_callback(self._closing.discard)
        return channel

    async def _leader_channel(
        self, context: grpc.aio.ServicerContext
    ) -> tuple[grpc.aio.Channel, asyncio.Future[None]]:
        """A ready channel to the leader, and the term it leads in (a stream through it ends with
        that term). While there is none (an election; a dead leader's claim running out), the call
        waits for the next one, up to HOLD seconds or its deadline: a caller that gives up after a
        few quick retries (upstream's exporter) then sees a takeover as a pause."""
        left = context.time_remaining()
        deadline = Deadline(HOLD if left is None else min(HOLD, left))
        while True:
            term = self.gate.term()
            ready = None
            try:
                holder, address = self._route()
                channel = self._channel(address)
                ready = asyncio.ensure_future(channel.channel_ready())
                why = f"the leading controller replica {holder} at {address} is unreachable; retry"
            except UnavailableLeader as exc:
                why = str(exc)
            waits: set[asyncio.Future[Any]] = {term} if ready is None else {term, ready}
            try:
                done, _ = await asyncio.wait(
                    waits, timeout=deadline.remaining(), return_when=asyncio.FIRST_COMPLETED
                )
            finally:  # also when the caller goes away meanwhile: no wait outlives its call
                if ready is not None and not ready.done():
                    ready.cancel()
            if ready is not None and ready in done:
                return channel, term
            if self.gate.elector.leading:  # this replica took over: the caller's retry is served here
                raise UnavailableLeader("this controller replica leads now; retry")
            if term not in done:
                log.warning("no reachable controller leader to forward to", reason=why)
                raise UnavailableLeader(why)

    def _route(self) -> tuple[str, str]:
        """(holder, address) of the leader, or UnavailableLeader."""
        leader = self.gate.elector.leader
        if leader is None or leader[0] == self.identity:
            raise UnavailableLeader("no controller replica leads yet (election in progress); retry")
        holder, address = leader
        if not address:
            raise UnavailableLeader(
                f"the leading controller replica {holder} advertises no address (POD_IP unset?); retry"
            )
        return holder, address

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self.active >= self.max_calls:
            raise Exhausted(f"this controller replica forwards {self.max_calls} calls already; retry")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def _metadata(self, context: grpc.aio.ServicerContext) -> list[tuple[str, Any]]:
        passed = [(k, v) for k, v in context.invocation_metadata() or () if k in FORWARDED_METADATA]
        return [*passed, (FORWARDED_HEADER, self.identity)]

    def handler(self, method: str, like: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A handler of `like`'s shape that forwards `method` to the leader."""
        shape = (like.request_streaming, like.response_streaming)

        async def open_call(
            request: Any, context: grpc.aio.ServicerContext
        ) -> tuple[Any, asyncio.Future[None]]:
            channel, term = await self._leader_channel(context)
            factory = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[shape]
            call = factory(method)(
                request, metadata=self._metadata(context), timeout=context.time_remaining()
            )
            return call, term

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = None
            try:
                with self._slot():
                    call, _ = await open_call(request, context)
                    return await call
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            except (UnavailableLeader, Exhausted) as exc:
                await context.abort(exc.code, str(exc))
            finally:
                if call is not None:
                    call.cancel()  # the caller went away: so does the leader's call

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = None
            try:
                with self._slot():
                    # the term the channel's leader leads in, not the one the call came in: a call
                    # held through an election would otherwise end as soon as it reached the new leader
                    call, term = await open_call(request, context)
                    async for item in until(call, term):
                        yield item
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            except (UnavailableLeader, Exhausted) as exc:
                await context.abort(exc.code, str(exc))
            except TermOver:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the controller leader changed; reconnect")
            finally:
                if call is not None:
                    call.cancel()

        return shaped(like, unary, streaming, raw=True)


class UnavailableLeader(Exception):
    code = grpc.StatusCode.UNAVAILABLE


class Exhausted(Exception):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
