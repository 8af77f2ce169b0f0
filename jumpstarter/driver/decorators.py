"""`@export` and `@exportstream`: mark driver methods as remotely callable."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

MARKER = "__jumpstarter_export__"
UNARY = "unary"
STREAMING = "streaming"
BYTESTREAM = "bytestream"


NAME = "__jumpstarter_export_name__"


def export(fn: F | None = None, *, name: str | None = None) -> Any:
    """Export a method: unary `DriverCall`, or `StreamingDriverCall` for a (async) generator.

    `@export(name="close")` exports it under another wire name (when the Python
    name would clash with the driver lifecycle).
    """

    def mark(function: F) -> F:
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            kind = STREAMING
        elif callable(function):
            kind = UNARY
        else:
            raise ValueError(f"@export needs a function, got {function!r}")
        setattr(function, MARKER, kind)
        if name is not None:
            setattr(function, NAME, name)
        return function

    return mark(fn) if fn is not None else mark


def exportstream(fn: F) -> F:
    """Export a byte stream: an async context manager (or async generator) yielding a `ByteStream`.

    Or a plain generator yielding a `BlockingByteStream` (jumpstarter.streams): it is then served
    in gRPC's threads without the event loop. Clients reach it with a session-level
    `RouterService.Stream` (PROTOCOL.md §5).
    """
    if inspect.isasyncgenfunction(fn):
        fn = contextlib.asynccontextmanager(fn)  # type: ignore[assignment]
    elif inspect.isgeneratorfunction(fn):
        fn = contextlib.contextmanager(fn)  # type: ignore[assignment]
    elif not callable(fn):
        raise ValueError(f"@exportstream needs an async context manager function, got {fn!r}")
    setattr(fn, MARKER, BYTESTREAM)
    return fn


def export_kind(obj: Any) -> str | None:
    return getattr(obj, MARKER, None)


def export_name(obj: Any, default: str) -> str:
    return getattr(obj, NAME, default)
