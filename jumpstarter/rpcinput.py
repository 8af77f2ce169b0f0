"""Requests whose bytes do not parse: INVALID_ARGUMENT and a short rate-limited warning, no traceback.

grpc parses a request before any servicer code runs (so before authentication);
when the parser raises, grpc logs the exception with its traceback at error level
(~1 KB a call) and answers UNKNOWN. `guarded(server)` stands in for a server while
handlers are registered (the generated `add_*_to_server` functions included) and
wraps every request deserializer, so bad bytes cost one throttled log line at most.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from jumpstarter.log import Throttle

log = structlog.get_logger("rpc")
_throttle = Throttle()
MAX_CACHED_METHODS = 1024


class MalformedRequest(ValueError):
    """A request message that does not parse (a ValueError: every servicer maps it to INVALID_ARGUMENT)."""


class _Malformed:
    """What a unary request that did not parse becomes: the servicer wrapper answers it."""

    def __init__(self, method: str) -> None:
        self.message = f"malformed request message for {method}"


def _report(method: str, exc: BaseException) -> None:
    dropped = _throttle.ready()
    if dropped is not None:  # never the bytes: they are the caller's, unauthenticated
        log.warning("malformed request", method=method, error=type(exc).__name__, suppressed=dropped)


def guard_handler(handler: grpc.RpcMethodHandler, method: str, sync: bool = False) -> grpc.RpcMethodHandler:
    """`handler` with a request deserializer that turns bad bytes into INVALID_ARGUMENT.

    `sync`: for grpc's synchronous server, whose handlers are plain functions and generators.
    """
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler  # raw bytes: nothing to parse
    if sync:
        return _guard_sync(handler, method, deserialize)
    if handler.request_streaming:

        def parse_streamed(data: bytes) -> Any:
            try:
                return deserialize(data)
            except Exception as exc:  # any parser failure is the caller's bad input
                _report(method, exc)
                raise MalformedRequest(f"malformed request message for {method}") from None

        behavior = handler.stream_unary or handler.stream_stream
        wrapped = _catching(behavior)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(wrapped, parse_streamed, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(wrapped, parse_streamed, handler.response_serializer)

    parse = _lenient(deserialize, method)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _refusing(handler.unary_unary), parse, handler.response_serializer
        )
    return grpc.unary_stream_rpc_method_handler(
        _refusing(handler.unary_stream), parse, handler.response_serializer
    )


def _lenient(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """A parser that never raises: bad bytes become a `_Malformed` the servicer wrapper answers."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any parser failure is the caller's bad input
            _report(method, exc)
            return _Malformed(method)

    return parse


def _refusing(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Answer a `_Malformed` request with INVALID_ARGUMENT; pass anything else to `behavior`."""
    if inspect.isasyncgenfunction(behavior):

        async def generate(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for item in behavior(request, context):
                yield item

        return generate

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


def _catching(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Answer a MalformedRequest that escapes `behavior` with INVALID_ARGUMENT."""
    if inspect.isasyncgenfunction(behavior):

        async def generate(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in behavior(requests, context):
                    yield item
            except MalformedRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        return generate

    async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            result = behavior(requests, context)
            return await result if inspect.isawaitable(result) else result
        except MalformedRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    return call


def _guard_sync(
    handler: grpc.RpcMethodHandler, method: str, deserialize: Callable[[bytes], Any]
) -> grpc.RpcMethodHandler:
    """`guard_handler` for the synchronous server: its deserializers must not raise (grpc logs a traceback)."""

    def checked(requests: Any) -> Any:
        for request in requests:
            if isinstance(request, _Malformed):
                raise MalformedRequest(request.message)
            yield request

    def admitted(request: Any, context: grpc.ServicerContext) -> Any:
        if handler.request_streaming:
            return checked(request)
        if isinstance(request, _Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return request

    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if handler.response_streaming:

        def generate(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from behavior(admitted(request, context), context)
            except MalformedRequest as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        wrapped: Callable[..., Any] = generate
    else:

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(admitted(request, context), context)
            except MalformedRequest as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        wrapped = call
    make = _MAKERS[handler.request_streaming, handler.response_streaming]
    return make(wrapped, _lenient(deserialize, method), handler.response_serializer)


#: (request streaming, response streaming) -> grpc's method handler constructor.
_MAKERS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class _GuardedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are guarded (wrapped once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, sync: bool = False) -> None:
        self.inner = inner
        self.sync = sync
        self.cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self.inner.service(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = str(handler_call_details.method)  # type: ignore[attr-defined]
        cached = self.cache.get(method)
        if cached is None or cached[0] is not handler:
            if len(self.cache) >= MAX_CACHED_METHODS:
                self.cache.clear()  # only a catch-all handler gets here; stay bounded
            cached = (handler, guard_handler(handler, method, self.sync))
            self.cache[method] = cached
        return cached[1]


class _Registry:
    """Stands in for a server while handlers are registered; everything else goes to the server."""

    def __init__(self, server: grpc.aio.Server | grpc.Server) -> None:
        self.server = server
        self.sync = not isinstance(server, grpc.aio.Server)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.server.add_generic_rpc_handlers(tuple(_GuardedGeneric(h, self.sync) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.server.add_registered_method_handlers(
            service, {name: guard_handler(h, f"/{service}/{name}", self.sync) for name, h in handlers.items()}
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)


def guarded(server: grpc.aio.Server | grpc.Server) -> Any:
    """Register handlers through this (`add_XServicer_to_server(servicer, guarded(server))`)."""
    return _Registry(server)
