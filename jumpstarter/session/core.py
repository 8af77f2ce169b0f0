"""The state behind one session server: the driver tree, its status and report (PROTOCOL.md §4).

The servicers (session/servicers.py) answer calls from it; exporterd swaps a fresh one
into the `SessionSlot` for every lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid as uuidlib
from collections.abc import Callable
from typing import Any, TypeAlias

from jumpstarter.driver.base import Driver
from jumpstarter.errors import MethodNotFound, NotReady
from jumpstarter.session.logstream import LogBroadcaster
from jumpstarter.v1 import common_pb2, jumpstarter_pb2

Status: TypeAlias = common_pb2.ExporterStatus

CALLABLE_STATES = frozenset(
    {
        common_pb2.EXPORTER_STATUS_LEASE_READY,
        common_pb2.EXPORTER_STATUS_BEFORE_LEASE_HOOK,
        common_pb2.EXPORTER_STATUS_AFTER_LEASE_HOOK,
    }
)
#: Initial metadata of an opened driver stream is never empty, so a client can tell
#: success from a trailers-only error without racing the call's completion.
OPEN_MARKER = "x-jumpstarter-stream-open"


class FreshIds:
    """Fresh canonical UUIDs for response messages (PROTOCOL.md §4: "any fresh uuid").

    One random UUIDv4 per process whose last 48 bits count up: unique like uuid4() for this
    purpose, without a getrandom() call and a UUID object per response.
    """

    def __init__(self) -> None:
        seed = uuidlib.uuid4()
        self._prefix = str(seed)[:24]
        self._counter = itertools.count(seed.int & 0xFFFFFFFFFFFF)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


fresh_uuid = FreshIds()
Prepared: TypeAlias = tuple[Callable[..., Any], Any, bool]


class Session:
    """A driver tree plus its status; the state behind one session server."""

    def __init__(
        self,
        root: Driver,
        *,
        labels: dict[str, str] | None = None,
        motd: str = "",
        status: Status = common_pb2.EXPORTER_STATUS_LEASE_READY,
        name: str = "local",
    ) -> None:
        self.uuid = str(uuidlib.uuid4())
        self.name = name
        self.root = root
        self.labels = dict(labels or {})
        self.motd = motd
        self.drivers: dict[str, Driver] = {}
        for driver, _, _ in root.enumerate():
            self.drivers.setdefault(driver.uuid, driver)
        self.status = status
        self.status_message = "Ready for commands" if status in CALLABLE_STATES else ""
        self.status_version = 1
        self.previous_status: Status | None = None
        self.on_end_session: Callable[[], Any] | None = None
        self.logs: LogBroadcaster | None = None
        self._report: jumpstarter_pb2.GetReportResponse | None = None
        #: (driver uuid, method, kind) -> bound method, binder, is_async; only names that exist get in.
        self._methods: dict[tuple[str, str, str], Prepared] = {}

    def set_status(self, status: Status, message: str = "") -> None:
        if status == self.status and message == self.status_message:
            return
        self.previous_status = self.status
        self.status = status
        self.status_message = message
        self.status_version += 1

    def report(self) -> jumpstarter_pb2.GetReportResponse:
        if self._report is None:
            response = jumpstarter_pb2.GetReportResponse(uuid=self.uuid, labels=self.labels, motd=self.motd)
            for driver, parent, name in self.root.enumerate():
                entry = response.reports.add(uuid=driver.uuid, labels=driver.report_labels(name))
                if parent is not None:
                    entry.parent_uuid = parent.uuid
                if driver.description:
                    entry.description = driver.description
                methods = dict(driver.methods_description)
                for method_name, exported in driver.exported_methods().items():
                    if exported.doc and method_name not in methods:
                        methods[method_name] = exported.doc.splitlines()[0]
                entry.methods_description.update(methods)
            self._report = response
        return self._report

    def driver(self, uuid: str) -> Driver:
        driver = self.drivers.get(uuid)
        if driver is None:
            raise MethodNotFound(f"no driver with uuid {uuid!r} in this session (call GetReport again)")
        return driver

    def method(self, uuid: str, name: str, kind: str) -> Prepared:
        """The bound method `name` of driver `uuid`, its argument binder and whether it is async."""
        key = (uuid, name, kind)
        prepared = self._methods.get(key)
        if prepared is None:
            driver = self.driver(uuid)
            exported, function = driver.method(name, kind)
            prepared = (function, exported.binder(type(driver)), exported.is_async)
            self._methods[key] = prepared
        return prepared

    def check_ready(self) -> None:
        if self.status not in CALLABLE_STATES:
            name = common_pb2.ExporterStatus.Name(self.status)
            raise NotReady(f"exporter not ready for driver calls (status: {name}: {self.status_message})")

    async def start(self) -> None:
        """Reset the drivers (children first) and start forwarding logs."""
        from jumpstarter.log import ensure_configured

        ensure_configured()
        loop = asyncio.get_running_loop()
        self.logs = LogBroadcaster(loop)
        logging.getLogger().addHandler(self.logs)
        for driver, _, _ in self.root.enumerate():
            driver.session_name = self.name
        await self.root.reset()

    async def stop(self) -> None:
        """Close every driver (once); never raises."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        if self.logs is not None:
            logging.getLogger().removeHandler(self.logs)
        with contextlib.suppress(Exception):
            await self.root.close()


class SessionSlot:
    """The session a server serves now; exporterd swaps in a fresh one for every lease."""

    def __init__(self, session: Session) -> None:
        self.current = session
