"""An environment file: build a board's driver tree in Python.

    jumpstarter --env etc/lab.py describe
    jumpstarter --env etc/lab.py power on
"""

from jumpstarter.drivers.composite import Composite
from jumpstarter.drivers.network import EchoNetwork
from jumpstarter.drivers.power import MockPower
from jumpstarter.drivers.shell import Shell

board = Composite(
    children={
        "power": MockPower(description="a power switch that only remembers its state"),
        "echo": EchoNetwork(),
        "tools": Shell(methods={"date": "date -u"}),
    },
    description="A board made in Python",
)
