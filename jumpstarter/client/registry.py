"""Which client class drives a reported driver (the `jumpstarter.dev/client` label).

A fixed table maps our own class paths and the upstream ones of PROTOCOL.md §8
to our client classes; installed packages may add more through the
`jumpstarter.clients` entry-point group. A class path sent by a server is never
imported: unknown labels get `GenericClient`.
"""

from __future__ import annotations

import importlib
from functools import cache

from jumpstarter.client.base import DriverClient

_D = "jumpstarter.client.drivers."
KNOWN: dict[str, str] = {
    # upstream Jumpstarter 0.9 class paths
    "jumpstarter_driver_composite.client.CompositeClient": _D + "composite:CompositeClient",
    "jumpstarter_driver_power.client.PowerClient": _D + "power:PowerClient",
    "jumpstarter_driver_power.client.VirtualPowerClient": _D + "power:VirtualPowerClient",
    "jumpstarter_driver_pyserial.client.PySerialClient": _D + "serial:SerialClient",
    "jumpstarter_driver_network.client.NetworkClient": _D + "network:NetworkClient",
    "jumpstarter_driver_shell.client.ShellClient": _D + "shell:ShellClient",
    "jumpstarter_driver_opendal.client.FlasherClient": _D + "storage:FlasherClient",
    "jumpstarter.client.flasher.FlasherClient": _D + "storage:FlasherClient",
    # our own
    _D + "composite.CompositeClient": _D + "composite:CompositeClient",
    _D + "power.PowerClient": _D + "power:PowerClient",
    _D + "serial.SerialClient": _D + "serial:SerialClient",
    _D + "network.NetworkClient": _D + "network:NetworkClient",
    _D + "shell.ShellClient": _D + "shell:ShellClient",
    _D + "storage.FlasherClient": _D + "storage:FlasherClient",
    _D + "generic.GenericClient": _D + "generic:GenericClient",
}


def _load(spec: str) -> type[DriverClient]:
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, DriverClient)):
        raise TypeError(f"{spec} is not a DriverClient")
    return cls


@cache
def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="jumpstarter.clients")}


@cache
def client_class(label: str) -> type[DriverClient]:
    """The client class for a `jumpstarter.dev/client` label; GenericClient when unknown."""
    spec = KNOWN.get(label)
    if spec is None:
        spec = _entry_points().get(label)
    if spec is None:
        spec = KNOWN[_D + "generic.GenericClient"]
    return _load(spec)
