"""`serve(driver)`: a driver served in this process and its client, over real gRPC (for examples and tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from jumpstarter.driver.base import Driver


@contextlib.contextmanager
def serve(driver: Driver) -> Iterator[Any]:
    """Serve `driver` on a private unix socket; yield the client of its root (`PowerClient`...).

    The same path as any exporter: a session, GetReport, the client tree from the labels.
    """
    from jumpstarter.client.connection import connect
    from jumpstarter.session.local import LocalServer

    with LocalServer(lambda: driver) as path, connect(path) as client:
        yield client
