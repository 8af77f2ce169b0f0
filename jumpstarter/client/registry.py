"""Which client class drives a reported driver (the `jumpstarter.dev/client` label).

A fixed table, built from the hardware interfaces (`jumpstarter.interfaces`), maps
our own class paths and the upstream ones of PROTOCOL.md §8 to our client classes; installed packages may add more through the
`jumpstarter.clients` entry-point group. A class path sent by a server is never
imported: unknown labels get `GenericClient`.
"""

from __future__ import annotations

import importlib
from functools import cache

from jumpstarter.client.base import DriverClient

_D = "jumpstarter.client.drivers."


def _known() -> dict[str, str]:
    """Label -> `module:Class`: each hardware interface's labels, then the kinds without one."""
    from jumpstarter.interfaces import INTERFACES

    known: dict[str, str] = {}
    for interface in INTERFACES:
        for label in (interface.client, *interface.also_drives):
            known[label] = interface.client_class
    known.update(
        {
            "jumpstarter_driver_composite.client.CompositeClient": _D + "composite:CompositeClient",
            _D + "composite.CompositeClient": _D + "composite:CompositeClient",
            _D + "qemu.QemuClient": _D + "qemu:QemuClient",
            # upstream's QEMU power; no driver of ours reports it
            "jumpstarter_driver_power.client.VirtualPowerClient": _D + "power:VirtualPowerClient",
            _D + "generic.GenericClient": _D + "generic:GenericClient",
        }
    )
    return known


KNOWN: dict[str, str] = _known()


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
