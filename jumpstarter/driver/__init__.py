"""The driver framework: what an exporter serves.

A driver is a `Driver` subclass owning one piece of hardware; methods marked
`@export` (unary, or streaming when they are generators) and `@exportstream`
(byte streams) are callable remotely. Drivers form a tree by name. A driver of a
standard kind of hardware also subclasses its `Interface` (jumpstarter/interfaces/).

Imported lazily: interfaces (shared with clients) use `decorators` and `interface`
without pulling in the driver base and its logging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jumpstarter.driver.base import Driver
    from jumpstarter.driver.decorators import export, exportstream
    from jumpstarter.driver.interface import Interface

__all__ = ["Driver", "Interface", "export", "exportstream"]


def __getattr__(name: str) -> Any:
    if name == "Driver":
        from jumpstarter.driver.base import Driver

        return Driver
    if name in ("export", "exportstream"):
        from jumpstarter.driver import decorators

        return getattr(decorators, name)
    if name == "Interface":
        from jumpstarter.driver.interface import Interface

        return Interface
    raise AttributeError(f"module 'jumpstarter.driver' has no attribute {name!r}")
