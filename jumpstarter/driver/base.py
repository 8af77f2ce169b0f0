"""`Driver`: the base class of everything an exporter serves."""

from __future__ import annotations

import contextlib
import inspect
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

import structlog

from jumpstarter.driver.decorators import BYTESTREAM, STREAMING, UNARY, export_kind, export_name
from jumpstarter.driver.interface import Interface, check_order, contract_error, interface_of
from jumpstarter.driver.signature import Binder
from jumpstarter.errors import MethodNotFound
from jumpstarter.log import ensure_configured

CLIENT_LABEL = "jumpstarter.dev/client"
NAME_LABEL = "jumpstarter.dev/name"


class ExportedMethod:
    """One remotely callable method of a driver class."""

    __slots__ = ("name", "kind", "function", "_binder", "doc", "is_async")

    def __init__(self, name: str, kind: str, function: Callable[..., Any]) -> None:
        self.name = name
        self.kind = kind
        self.function = function
        if kind == BYTESTREAM:  # a context manager: blocking only when made from a plain generator
            self.is_async = not inspect.isgeneratorfunction(inspect.unwrap(function))
        else:
            self.is_async = inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
        self._binder: Binder | None = None
        self.doc = inspect.getdoc(function) or ""

    def binder(self, owner: type) -> Binder:
        if self._binder is None:
            self._binder = Binder(self.function, f"{owner.__name__}.{self.name}")
        return self._binder

    def bind(self, driver: Driver) -> Callable[..., Any]:
        """The method bound to `driver`; typed results (`to_value()`) leave as their wire value."""
        function = self.function.__get__(driver, type(driver))
        if self.kind == UNARY and self.is_async:

            async def call_async(*args: Any) -> Any:
                return to_wire(await function(*args))

            return call_async
        if self.kind == UNARY:
            return lambda *args: to_wire(function(*args))
        if self.kind == STREAMING and self.is_async:

            async def stream_async(*args: Any) -> AsyncIterator[Any]:
                async with contextlib.aclosing(function(*args)) as items:  # closing us closes the driver's
                    async for item in items:
                        yield to_wire(item)

            return stream_async
        if self.kind == STREAMING:
            return lambda *args: map(to_wire, function(*args))
        return function  # type: ignore[no-any-return]


def to_wire(value: Any) -> Any:
    """A result type of an interface (PowerReading, ShellChunk...) as its wire value; others as is."""
    to_value = getattr(value, "to_value", None)
    return to_value() if callable(to_value) else value


class Driver:
    """One piece of hardware, exported over gRPC.

    Subclasses take their configuration as keyword arguments of `__init__`
    (the YAML `config:` mapping), call `super().__init__(**kwargs)`, and mark
    methods with `@export` / `@exportstream`. `reset()` runs when a session
    starts, `close()` when it ends.
    """

    #: The `jumpstarter.dev/client` label: the class path a client uses to drive this.
    client: ClassVar[str] = "jumpstarter.client.drivers.generic.GenericClient"
    #: A short kind for logs (power, serial, network, shell, composite, ...).
    kind: ClassVar[str] = "other"
    #: The hardware interface this driver implements (set from its bases), or None.
    interface: ClassVar[type[Interface] | None] = None
    #: Checks of jumpstarter.config.schema for some `config:` keys, run at config load (`file:line` errors).
    SETTINGS: ClassVar[dict[str, Any]] = {}
    _exported: ClassVar[dict[str, ExportedMethod]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_order(cls, Driver)
        cls.interface = interface_of(cls)
        exported: dict[str, ExportedMethod] = {}
        wire_names: dict[str, str] = {}  # attribute name -> exported name (`close_port` -> "close")
        for klass in reversed(cls.__mro__):
            for attr_name, attr in vars(klass).items():
                kind = export_kind(attr)
                if kind is not None:
                    name = export_name(attr, attr_name)
                elif attr_name in wire_names and callable(attr):
                    name = wire_names[attr_name]  # an override of an exported method stays exported
                    kind = exported[name].kind
                    if kind == BYTESTREAM and inspect.isasyncgenfunction(attr):
                        attr = contextlib.asynccontextmanager(attr)
                    elif kind == BYTESTREAM and inspect.isgeneratorfunction(attr):
                        attr = contextlib.contextmanager(attr)
                else:
                    continue
                wire_names[attr_name] = name
                exported[name] = ExportedMethod(name, kind, attr)
        cls._exported = exported

    def __init__(
        self,
        *,
        children: dict[str, Driver] | None = None,
        description: str | None = None,
        methods_description: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        log_level: str | None = None,
    ) -> None:
        broken = contract_error(type(self))
        if broken is not None:
            raise TypeError(broken)
        self.uuid = str(uuidlib.uuid4())
        self.children: dict[str, Driver] = dict(children or {})
        self.description = description
        self.methods_description = dict(methods_description or {})
        self.labels = dict(labels or {})
        #: Resource streams opened by clients for this driver, by resource uuid (set by the session).
        self.resources: dict[str, Any] = {}
        #: The session's name (the lease name in distributed mode, "local" otherwise); set before reset().
        self.session_name = "local"
        logger_name = f"driver.{type(self).__name__}"
        # bind() fixes the routing now: without it a driver built before its session starts logs past LogStream
        ensure_configured()
        self.log = structlog.get_logger(logger_name).bind(driver_type=self.kind)
        if log_level is not None:  # upstream's per-driver `config: {log_level: DEBUG}`
            import logging

            logging.getLogger(logger_name).setLevel(str(log_level).upper())

    # -- lifecycle -------------------------------------------------------

    async def reset(self) -> None:
        """Bring the hardware to a known state at the start of a session (children first)."""
        for child in self.children.values():
            await child.reset()

    async def close(self) -> None:
        """Release everything this driver holds (children last); must not raise."""
        for child in reversed(list(self.children.values())):
            with contextlib.suppress(Exception):
                await child.close()

    # -- tree and report -------------------------------------------------

    def enumerate(self) -> Iterator[tuple[Driver, Driver | None, str | None]]:
        """Depth-first pre-order walk: (driver, parent, name in parent); root first."""
        yield self, None, None
        for name, child in self.children.items():
            for node, parent, child_name in child.enumerate():
                yield (
                    node,
                    (parent if parent is not None else self),
                    (child_name if parent is not None else name),
                )

    def report_labels(self, name: str | None) -> dict[str, str]:
        labels = dict(self.labels)
        labels[CLIENT_LABEL] = self.client
        if name is not None:
            labels[NAME_LABEL] = name
        return labels

    def exported_methods(self) -> dict[str, ExportedMethod]:
        return self._exported

    def method(self, name: str, kind: str) -> tuple[ExportedMethod, Callable[..., Any]]:
        """The exported method `name` of the given kind, bound to this driver (or MethodNotFound)."""
        exported = self._exported.get(name)
        if exported is None or exported.kind != kind:
            wanted = [m for m, e in self._exported.items() if e.kind == kind]
            if exported is not None:
                raise MethodNotFound(f"{type(self).__name__}.{name} is a {exported.kind} method, not {kind}")
            raise MethodNotFound(
                f"{type(self).__name__} has no {kind} method {name!r}"
                f" (it has: {', '.join(sorted(wanted)) or 'none'})"
            )
        return exported, exported.bind(self)

    # -- resources -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def resource(self, handle: Any) -> AsyncIterator[Any]:
        """Open a resource handle passed by a client (PROTOCOL.md §5) as a `ByteStream`."""
        from jumpstarter.session.resources import open_resource

        async with open_resource(self, handle) as stream:
            yield stream

    @classmethod
    def config_keys(cls) -> tuple[set[str], set[str]]:
        """The `config:` keys this driver accepts, and those it requires."""
        accepted: set[str] = set()
        required: set[str] = set()
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass is Driver:
                continue
            for name, p in inspect.signature(klass.__init__).parameters.items():  # type: ignore[misc]
                if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    continue
                accepted.add(name)
                if p.default is inspect.Parameter.empty:
                    required.add(name)
            if not any(
                p.kind == p.VAR_KEYWORD
                for p in inspect.signature(klass.__init__).parameters.values()  # type: ignore[misc]
            ):
                break  # this __init__ does not pass keywords further up
        return accepted, required
