"""The driver framework: what an exporter serves.

A driver is a `Driver` subclass owning one piece of hardware; methods marked
`@export` (unary, or streaming when they are generators) and `@exportstream`
(byte streams) are callable remotely. Drivers form a tree by name.
"""

from jumpstarter.driver.base import Driver
from jumpstarter.driver.decorators import export, exportstream

__all__ = ["Driver", "export", "exportstream"]
