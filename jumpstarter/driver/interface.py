"""`Interface`: the contract of one kind of hardware, shared by its drivers and its client.

An interface lists the exported methods (abstract ones every driver of the kind
must implement), the `jumpstarter.dev/client` label its drivers report (the wire
contract of PROTOCOL.md §8, upstream's class path) and our client class for that
label. Drivers subclass it before `Driver`: `class MockPower(PowerInterface, Driver)`.

Kept free of the driver base (no logging, no gRPC): clients import interfaces too.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar


class Interface:
    """Base of the hardware interfaces in `jumpstarter.interfaces`."""

    #: The `jumpstarter.dev/client` label drivers of this kind report (keep upstream's path: interop).
    client: ClassVar[str]
    #: Our client class for that label, as `module:Class`.
    client_class: ClassVar[str]
    #: Other labels our client class also drives (older or upstream names of the same contract).
    also_drives: ClassVar[tuple[str, ...]] = ()
    #: A short kind for logs (power, serial, network, shell, storage).
    kind: ClassVar[str]

    @classmethod
    def abstract_methods(cls) -> dict[str, str]:
        """The methods every implementation must define: attribute name -> first doc line."""
        methods: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if not (isinstance(klass, type) and issubclass(klass, Interface)):
                continue
            for name, attr in vars(klass).items():
                if getattr(attr, "__isabstractmethod__", False):
                    methods[name] = next(iter((inspect.getdoc(attr) or "").splitlines()), "")
        return methods


def interface_of(cls: type) -> type[Interface] | None:
    """The most specific hardware interface `cls` implements, or None."""
    for klass in cls.__mro__:
        if isinstance(klass, type) and issubclass(klass, Interface) and "client_class" in vars(klass):
            return klass
    return None


def missing_methods(cls: type) -> list[str]:
    """The abstract methods of `cls`'s interface that `cls` leaves unimplemented."""
    interface = interface_of(cls)
    if interface is None:
        return []
    missing = []
    for name in interface.abstract_methods():
        attr = getattr(cls, name, None)
        if attr is None or getattr(attr, "__isabstractmethod__", False):
            missing.append(name)
    return missing


def contract_error(cls: type) -> str | None:
    """Why `cls` cannot serve as a driver of its interface (a sentence naming what is missing), or None."""
    missing = missing_methods(cls)
    if not missing:
        return None
    interface = interface_of(cls)
    assert interface is not None
    docs = interface.abstract_methods()
    listed = "; ".join(f"{name}() ({docs[name]})" if docs[name] else f"{name}()" for name in missing)
    return (
        f"driver {cls.__module__}.{cls.__qualname__} does not implement {interface.__name__}: "
        f"missing {listed}"
    )


def check_order(cls: type, driver_base: type[Any]) -> None:
    """An interface listed after `Driver` would have its client label shadowed by Driver's generic one."""
    interface = interface_of(cls)
    if interface is None:
        return
    mro = cls.__mro__
    if mro.index(interface) > mro.index(driver_base):
        raise TypeError(
            f"{cls.__qualname__}: list the interface before Driver: "
            f"class {cls.__name__}({interface.__name__}, Driver)"
        )


def wire_number(value: Any, what: str) -> float:
    """A finite number from the wire (numbers travel as doubles; a bool is not one), for result types."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    return float(value)
