"""Several controllerd replicas on the Kubernetes store: the leader serves, the others forward.

Listen queues, Status streams and what each exporter was last told (controllerd/hub.py) live in
one process: the elected leader's (controllerd/leader.py). A replica that does not lead answers
the reads its store can (LOCAL) and forwards every other call of our services, bytes and the
caller's credentials as they came, to the leader's advertised address, which authenticates them
(controllerd/replica_forward.py). When leadership moves, the streams a replica serves (led or
forwarded) end with UNAVAILABLE, so exporters and clients reconnect and reach the new leader.
SQLite mode never builds any of this (controllerd/main.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog

if TYPE_CHECKING:
    from controllerd.leader import LeaderElector
    from controllerd.replica_forward import Forwarder

log = structlog.get_logger("replica")

SERVICES = ("/jumpstarter.v1.ControllerService/", "/jumpstarter.client.v1.ClientService/")
# answered from this replica's store: they read records only, never the leader's in-process state
LOCAL = frozenset(
    {
        "/jumpstarter.v1.ControllerService/GetLease",
        "/jumpstarter.v1.ControllerService/ListLeases",
        "/jumpstarter.v1.ControllerService/GetServiceEndpoints",
        "/jumpstarter.client.v1.ClientService/GetLease",
        "/jumpstarter.client.v1.ClientService/ListLeases",
    }
)
FORWARDED_HEADER = "x-jumpstarter-forwarded-by"  # set by a replica: a forwarded call is never forwarded again
SETTLE_WAIT = 10.0  # seconds a call waits at startup for the first election round


class TermOver(Exception):
    """Leadership (or who leads) changed while a stream was open."""


class ReplicaGate:
    """Who leads, as this replica last saw it; `term()` resolves when that changes."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector
        self.settled = asyncio.Event()
        self._term: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        elector.on_change = self._changed

    def _changed(self) -> None:
        self.settled.set()
        if not self._term.done():
            self._term.set_result(None)
        self._term = asyncio.get_running_loop().create_future()
        log.info("replica role", leading=self.elector.leading, leader=self.elector.leader)

    def term(self) -> asyncio.Future[None]:
        return self._term

    async def settle(self) -> None:
        """At startup, wait (bounded) for the first election round, so a call is not refused for want of a look."""
        if not self.settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.settled.wait(), SETTLE_WAIT)
            self.settled.set()


async def until(items: Any, over: asyncio.Future[None]) -> AsyncIterator[Any]:
    """The items of an async iterator until `over` resolves: then the iterator is cancelled and TermOver raised."""
    iterator = aiter(items)
    try:
        while True:
            step = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({step, over}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(BaseException):  # its own end (cancelled, or whatever it raised)
                    await step
                raise TermOver
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


def shaped(
    like: grpc.RpcMethodHandler,
    unary: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    streaming: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    *,
    raw: bool,
) -> grpc.RpcMethodHandler:
    """A handler of `like`'s shape running `unary` or `streaming` (by its responses); `raw`: bytes in and out."""
    des = None if raw else like.request_deserializer
    ser = None if raw else like.response_serializer
    if like.request_streaming and like.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, des, ser)
    if like.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, des, ser)
    if like.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, des, ser)
    return grpc.unary_unary_rpc_method_handler(unary, des, ser)


def _behavior(handler: grpc.RpcMethodHandler) -> Any:
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


class ReplicaInterceptor(grpc.aio.ServerInterceptor):
    """Serve here when leading (streams end with the term), forward to the leader otherwise."""

    def __init__(self, gate: ReplicaGate, forwarder: Forwarder) -> None:
        self.gate = gate
        self.forwarder = forwarder

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method in LOCAL or not method.startswith(SERVICES):
            return handler
        await self.gate.settle()
        if self.gate.elector.leading:
            return self._led(handler) if handler.response_streaming else handler
        if any(key == FORWARDED_HEADER for key, _ in details.invocation_metadata or ()):
            return self._refused(handler, "this controller replica no longer leads; retry")
        return self.forwarder.handler(method, handler)

    def _led(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A stream served here that ends when this replica stops leading."""
        behavior, term = _behavior(handler), self.gate.term()

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in until(behavior(request, context), term):
                    yield item
            except TermOver:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "this controller replica stopped leading; reconnect"
                )

        return shaped(handler, _behavior(handler), streaming, raw=False)

    @staticmethod
    def _refused(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)
            yield None  # never reached: makes this an async generator

        return shaped(handler, unary, streaming, raw=True)


def advertised_address(listen: str, environ: dict[str, str]) -> str | None:
    """Where the other replicas reach this one: CONTROLLERD_REPLICA_ADDRESS, else POD_IP (the
    downward API) with the listen port; None outside a cluster (one replica: nobody forwards)."""
    explicit = environ.get("CONTROLLERD_REPLICA_ADDRESS")
    if explicit:
        return explicit
    ip = environ.get("POD_IP")
    if not ip:
        return None
    port = listen.rpartition(":")[2]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def interceptors(
    elector: LeaderElector | None, ca_pem: bytes, server_name: str
) -> list[ReplicaInterceptor] | None:
    """The server interceptor of a replicated (Kubernetes) controller; None for SQLite (no interception)."""
    if elector is None:
        return None
    from controllerd.replica_forward import Forwarder

    gate = ReplicaGate(elector)
    return [ReplicaInterceptor(gate, Forwarder(gate, elector.identity, ca_pem, server_name))]
