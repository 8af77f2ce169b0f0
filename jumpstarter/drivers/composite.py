"""Composite: a named group of drivers; Proxy: a second name for an existing driver (`ref:`)."""

from __future__ import annotations

from typing import Any

from jumpstarter.driver.base import CLIENT_LABEL, Driver


class Composite(Driver):
    """Groups child drivers by name: `board.power`, `board.serial`.

    >>> from jumpstarter.drivers.power import MockPower
    >>> board = Composite(children={"power": MockPower()})
    >>> [name for _, _, name in board.enumerate()]
    [None, 'power']
    """

    client = "jumpstarter_driver_composite.client.CompositeClient"
    kind = "composite"


class Proxy(Driver):
    """Reports and behaves as `target` under another name (YAML `ref: a.b`)."""

    def __init__(self, target: Driver, **base: Any) -> None:
        super().__init__(**base)
        self.target = target
        self.uuid = target.uuid
        self.children = target.children
        self.kind = target.kind  # type: ignore[misc]

    def report_labels(self, name: str | None) -> dict[str, str]:
        labels = self.target.report_labels(name)
        labels[CLIENT_LABEL] = self.target.client
        return labels

    def exported_methods(self):  # type: ignore[no-untyped-def]
        return self.target.exported_methods()

    def method(self, name: str, kind: str):  # type: ignore[no-untyped-def]
        return self.target.method(name, kind)

    async def reset(self) -> None:  # the target resets itself where it sits in the tree
        return None

    async def close(self) -> None:
        return None
