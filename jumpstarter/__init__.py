"""Jumpstarter: drive lab hardware boards from Python, the CLI and pytest.

`import jumpstarter` stays cheap: the gRPC machinery is imported only when a
connection is opened.

    with jumpstarter.connect("/run/jumpstarter/boards/rpi4.sock") as board:
        board.power.on()

    with jumpstarter.lease(selector="board=rpi4", duration="30m") as board:  # through the controller
        board.power.on()
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# gRPC's core logs each failed TLS handshake to stderr (a flood while a CA is wrong); we report
# such failures in one line ourselves. Set before grpc is imported; a GRPC_VERBOSITY given wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__version__ = "0.1.0"

if TYPE_CHECKING:
    from jumpstarter.client.aio_connection import connect_async
    from jumpstarter.client.connection import connect
    from jumpstarter.client.remote import lease

__all__ = ["connect", "connect_async", "lease", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "connect":
        from jumpstarter.client.connection import connect

        return connect
    if name == "connect_async":
        from jumpstarter.client.aio_connection import connect_async

        return connect_async
    if name == "lease":
        from jumpstarter.client.remote import lease

        return lease
    raise AttributeError(f"module 'jumpstarter' has no attribute {name!r}")
