"""Noticing that the exporter's session changed under an open client tree (the exporterd restarted).

A tree's driver uuids belong to one exporter session, and exporterd builds fresh
drivers (new uuids) for every session, so after a restart every call of an old
handle fails with NOT_FOUND. A `SessionPin` remembers the session a tree was built
from; a NOT_FOUND for one of its drivers is checked against a fresh GetReport and
surfaces as `BoardRestarted` instead of a puzzling "no driver with uuid".

The handle is not re-mapped to the new drivers on purpose: the board may have been
reset in between, and a test must not carry on as if nothing happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jumpstarter.errors import BoardRestarted, DriverMethodNotFound, JumpstarterError

RESTARTED = (
    "the board's exporter restarted; reconnect (its drivers are new and the board may have been reset)"
)
#: How long the check may wait for the exporter's current report.
REPORT_TIMEOUT = 5.0


@dataclass(frozen=True)
class SessionPin:
    """The exporter session (GetReport `uuid`) and driver uuids a client tree was built from."""

    session: str
    drivers: frozenset[str]

    @classmethod
    def of(cls, report: Any) -> SessionPin:
        return cls(report.uuid, frozenset(entry.uuid for entry in report.reports))

    def suspects(self, error: BaseException, uuid: str | None) -> bool:
        """Whether `error` may mean a new session: NOT_FOUND for a driver this tree was given."""
        return isinstance(error, DriverMethodNotFound) and uuid in self.drivers

    def changed(self, report: Any) -> bool:
        """Whether `report` comes from another session (a new uuid, or drivers of ours are gone)."""
        return report.uuid != self.session or not self.drivers <= {entry.uuid for entry in report.reports}

    def error(self, what: str) -> BoardRestarted:
        return BoardRestarted(f"{what}: {RESTARTED}")

    def verdict(self, error: JumpstarterError, what: str, report: Any) -> JumpstarterError:
        """What a suspect `error` means given the exporter's current `report`: itself, or BoardRestarted."""
        return self.error(what) if self.changed(report) else error
