"""Power clients: `board.power.on()`, `off()`, `cycle()`, `read()`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from jumpstarter.client.base import DriverClient
from jumpstarter.interfaces.power import PowerInterface, PowerReading

__all__ = ["PowerClient", "PowerReading", "VirtualPowerClient"]


class PowerClient(DriverClient):
    """Power switch: on, off, cycle, read."""

    interface = PowerInterface

    def on(self) -> None:
        """Switch the board on."""
        self.call("on")

    def off(self) -> None:
        """Switch the board off."""
        self.call("off")

    def cycle(self, wait: float = 2) -> None:
        """Off, wait `wait` seconds, on."""
        self.off()
        time.sleep(wait)
        self.on()

    def read(self) -> Iterator[PowerReading]:
        """Voltage/current readings, as the switch reports them."""
        for item in self.streamingcall("read"):
            yield PowerReading.from_value(item)

    def readings(self, count: int, interval: float = 1.0) -> Iterator[PowerReading]:
        """`count` readings (0 = forever): `read()` again, `interval` s later, when a switch sends fewer."""
        given = 0
        while True:
            for reading in self.read():
                yield reading
                given += 1
                if given == count:
                    return
            time.sleep(interval)  # the switch's stream ended: ask again at a steady pace

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        sub.add_parser("on", help=self.method_help("on", "switch the board on")).set_defaults(
            func=lambda a: self.on()
        )
        sub.add_parser("off", help=self.method_help("off", "switch the board off")).set_defaults(
            func=lambda a: self.off()
        )
        cycle = sub.add_parser("cycle", help=self.method_help("cycle", "switch off, wait, switch on"))
        cycle.add_argument(
            "-w", "--wait", type=float, default=2.0, metavar="SECONDS", help="pause while off (default 2)"
        )
        cycle.set_defaults(func=lambda a: self.cycle(a.wait))
        read = sub.add_parser("read", help=self.method_help("read", "print voltage and current readings"))
        read.add_argument(
            "-n", "--count", type=int, default=1, help="number of readings (default 1, 0 = forever)"
        )
        read.add_argument(
            "-i",
            "--interval",
            type=float,
            default=1.0,
            metavar="SECONDS",
            help="pause before asking again when the switch has no more readings (default 1)",
        )

        def run_read(a: argparse.Namespace) -> None:
            for r in self.readings(a.count, a.interval):
                print(f"{r.voltage:.3f} V  {r.current:.3f} A  {r.power:.3f} W", flush=True)

        read.set_defaults(func=run_read)


class VirtualPowerClient(PowerClient):
    """Power of a virtual board: `off(destroy)` may also discard its state."""

    def off(self, destroy: bool = False) -> None:  # type: ignore[override]
        self.call("off", destroy)
