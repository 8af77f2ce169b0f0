"""Build the client tree from a `GetReport` answer (PROTOCOL.md §4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jumpstarter.client.base import DriverClient, Link
from jumpstarter.client.registry import client_class
from jumpstarter.client.restart import SessionPin
from jumpstarter.errors import JumpstarterError

if TYPE_CHECKING:
    from jumpstarter.client.aio_connection import AsyncConnection
    from jumpstarter.client.connection import Connection

CLIENT_LABEL = "jumpstarter.dev/client"
NAME_LABEL = "jumpstarter.dev/name"


def build_tree(
    report: Any, connection: Connection | None, aconnection: AsyncConnection | None = None
) -> DriverClient:
    """The root client; children are reachable as attributes (`root.power`)."""
    if not report.reports:
        raise JumpstarterError("the exporter reported no drivers")
    pin = SessionPin.of(report)
    for pinned in (connection, aconnection):
        if pinned is not None:
            pinned.pin = pin  # a later NOT_FOUND for these uuids is checked for a restart
    link = Link(connection, aconnection)
    # Reports are pre-order; a uuid may repeat (aliases), so index by position and
    # resolve a parent_uuid to the most recent report carrying that uuid.
    latest: dict[str, int] = {}
    parents: list[int | None] = []
    for index, entry in enumerate(report.reports):
        parent = latest.get(entry.parent_uuid) if entry.HasField("parent_uuid") else None
        if entry.HasField("parent_uuid") and parent is None:
            raise JumpstarterError(f"report lists driver {entry.uuid} before its parent {entry.parent_uuid}")
        parents.append(parent)
        latest[entry.uuid] = index
    children: list[dict[str, DriverClient]] = [{} for _ in report.reports]
    paths: list[str] = []
    for index, entry in enumerate(report.reports):
        parent = parents[index]
        name = entry.labels.get(NAME_LABEL, "")
        paths.append(name if parent is None or not paths[parent] else f"{paths[parent]}.{name}")
    clients: list[DriverClient | None] = [None] * len(report.reports)
    for index in reversed(range(len(report.reports))):  # children before parents
        entry = report.reports[index]
        cls = client_class(entry.labels.get(CLIENT_LABEL, ""))
        client = cls(
            link,
            entry.uuid,
            name=entry.labels.get(NAME_LABEL, ""),
            path=paths[index],
            labels=dict(entry.labels),
            description=entry.description if entry.HasField("description") else None,
            methods_description=dict(entry.methods_description),
            children=dict(reversed(list(children[index].items()))),
        )
        clients[index] = client
        parent = parents[index]
        if parent is not None:
            children[parent][client.name] = client
    roots = [c for i, c in enumerate(clients) if parents[i] is None]
    root = roots[0]
    assert root is not None
    return root
