"""Fit positional wire arguments to a driver method's signature and annotations.

A call that does not fit raises `ValueError` (INVALID_ARGUMENT) naming the method
and what it takes, before the driver runs.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from jumpstarter.values import b64decode

Coerce = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _coercer(annotation: Any, where: str) -> Coerce:
    """A function converting a decoded wire value to `annotation` (or raising ValueError)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return _identity
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _coercer(options[0], where) if len(options) == 1 else _identity
        allow_none = len(options) != len(typing.get_args(annotation))

        def coerce_optional(value: Any) -> Any:
            if value is None and allow_none:
                return None
            return inner(value)

        return coerce_optional
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        homogeneous = len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis)
        item = _coercer(args[0], where) if args and homogeneous else _identity
        container = origin or annotation

        def coerce_sequence(value: Any) -> Any:
            if not isinstance(value, list):
                raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
            return container(item(v) for v in value)

        return coerce_sequence
    if origin is dict or annotation is dict:

        def coerce_dict(value: Any) -> Any:
            if not isinstance(value, dict):
                raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
            return value

        return coerce_dict
    if annotation is bool:

        def coerce_bool(value: Any) -> bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}: expected true or false, got {value!r}")
            return value

        return coerce_bool
    if annotation is int:

        def coerce_int(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: expected an integer, got {value!r}")
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{where}: expected an integer, got {value!r}")
            return int(value)

        return coerce_int
    if annotation is float:

        def coerce_float(value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: expected a number, got {value!r}")
            return float(value)

        return coerce_float
    if annotation is str:

        def coerce_str(value: Any) -> str:
            if not isinstance(value, str):
                raise ValueError(f"{where}: expected text, got {value!r}")
            return value

        return coerce_str
    if annotation is bytes:

        def coerce_bytes(value: Any) -> bytes:
            if not isinstance(value, str):
                raise ValueError(f"{where}: expected bytes, got {type(value).__name__}")
            return b64decode(value)

        return coerce_bytes
    return _identity


class Binder:
    """Checks and converts the positional arguments of one exported method."""

    def __init__(self, fn: Callable[..., Any], qualname: str) -> None:
        self.qualname = qualname
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # an annotation that does not resolve only loses coercion
            hints = {}
        params = [p for p in sig.parameters.values() if p.name != "self"]
        self.coercers: list[Coerce] = []
        self.required = 0
        self.maximum: int | None = 0
        self.varargs: Coerce | None = None
        for p in params:
            where = f"{qualname}() argument {p.name!r}"
            if p.kind == p.VAR_POSITIONAL:
                self.varargs = _coercer(hints.get(p.name, p.annotation), where)
                self.maximum = None
            elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self.coercers.append(_coercer(hints.get(p.name, p.annotation), where))
                if p.default is p.empty:
                    self.required += 1
                if self.maximum is not None:
                    self.maximum += 1
        self.names = [p.name for p in params if p.kind != p.VAR_KEYWORD]

    def describe(self) -> str:
        return f"{self.qualname}({', '.join(self.names)})"

    def bind(self, args: list[Any]) -> list[Any]:
        count = len(args)
        if count < self.required or (self.maximum is not None and count > self.maximum):
            if self.maximum == self.required:
                wanted = f"{self.required}"
            elif self.maximum is None:
                wanted = f"at least {self.required}"
            else:
                wanted = f"{self.required} to {self.maximum}"
            raise ValueError(f"{self.describe()} takes {wanted} argument(s), {count} given")
        if not args:
            return args
        out = [c(a) for c, a in zip(self.coercers, args, strict=False)]
        if count > len(self.coercers):
            extra = self.varargs or _identity
            out.extend(extra(a) for a in args[len(self.coercers) :])
        return out
