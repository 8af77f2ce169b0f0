"""What every controller RPC shares: authentication and turning our errors into statuses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from controllerd.auth import AuthError
from controllerd.convert import BadName
from controllerd.policy import PolicyDenied
from controllerd.scheduler import LeaseRequestError, QuotaExceeded
from controllerd.store import Conflict, NotFound, StorageError

log = structlog.get_logger("controllerd.rpc")


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The one table of our errors' statuses (the admin socket uses it too); None: an internal error."""
    if isinstance(exc, (AuthError, RpcError)):
        return exc.code, str(exc)
    if isinstance(exc, QuotaExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, (BadName, LeaseRequestError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, PolicyDenied):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, Conflict):
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    if isinstance(exc, StorageError):  # a write the store refused: retry once there is room
        return (grpc.StatusCode.RESOURCE_EXHAUSTED if exc.full else grpc.StatusCode.UNAVAILABLE), str(exc)
    return None


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
