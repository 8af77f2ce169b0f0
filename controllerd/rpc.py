"""What every controller RPC shares: turning our errors (controllerd/errors.py) into statuses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from controllerd.errors import StorageError, status_of

log = structlog.get_logger("controllerd.rpc")


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, rpc: str) -> None:
    status = status_of(exc)
    if isinstance(exc, StorageError):
        log.error("write refused by the store", rpc=rpc, error=str(exc))
    if status is None:
        log.exception("internal error", rpc=rpc)
        status = (grpc.StatusCode.INTERNAL, f"internal error in {rpc}")
    await context.abort(*status)


def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await _abort(context, exc, fn.__name__)

    return wrapper


def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            await _abort(context, exc, fn.__name__)

    return wrapper
