"""Power: switch a board on and off, and read what it draws."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from jumpstarter.driver.decorators import export
from jumpstarter.driver.interface import Interface, wire_number


@dataclass(frozen=True)
class PowerReading:
    """One measurement; on the wire `{"voltage": float, "current": float}` (upstream's model)."""

    voltage: float
    current: float

    @property
    def power(self) -> float:
        return self.voltage * self.current

    def to_value(self) -> dict[str, float]:
        return {"voltage": float(self.voltage), "current": float(self.current)}

    @classmethod
    def from_value(cls, value: Any) -> PowerReading:
        if not isinstance(value, Mapping):
            raise ValueError(f"power reading: expected {{voltage, current}}, got {value!r}")
        return cls(
            wire_number(value.get("voltage"), "power reading voltage"),
            wire_number(value.get("current"), "power reading current"),
        )


class PowerInterface(Interface):
    """A power switch: `on()`, `off()`; `read()` if it can measure. Clients add `cycle(wait=2)`.

    Serve a MockPower and drive it through a real gRPC client:

    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.power import MockPower
    >>> with serve(MockPower()) as power:
    ...     power.on()
    ...     list(power.read())
    ...     power.cycle(wait=0)
    [PowerReading(voltage=5.0, current=2.0)]
    """

    client = "jumpstarter_driver_power.client.PowerClient"
    client_class = "jumpstarter.client.drivers.power:PowerClient"
    also_drives = ("jumpstarter.client.drivers.power.PowerClient",)
    kind = "power"

    @export
    @abstractmethod
    async def on(self) -> None:
        """Switch the board on."""

    @export
    @abstractmethod
    async def off(self) -> None:
        """Switch the board off."""

    @export
    async def read(self) -> AsyncIterator[PowerReading]:
        """Voltage and current readings."""
        raise NotImplementedError(f"{type(self).__name__} cannot measure power")
        yield  # pragma: no cover
