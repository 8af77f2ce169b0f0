"""Invariants of the lease records and of what clients saw, for the fault tests.

`store_rows` reads controllerd's SQLite file directly (read-only); `Seen`/`Ledger` hold what
the clients did and observed. Each check returns a list of problems (empty: the invariant holds).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.integration.central import Central

ENDED_REASONS = {"Released", "Expired"}


@dataclass
class Seen:
    """One lease message a client received: the lease was in this state at some instant of [sent, got]."""

    lease: str
    observer: str
    exporter: str
    granted: bool  # Ready=True, an exporter, not ended
    effective_begin: float | None
    sent: float
    got: float


@dataclass
class Ledger:
    """What the clients did and saw (appends from many threads: list.append is atomic)."""

    seen: list[Seen] = field(default_factory=list)
    released_ok: set[str] = field(default_factory=set)  # DeleteLease answered OK at the first try
    release_asked: set[str] = field(default_factory=set)
    ops: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    retries: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, op: str) -> int:
        with self.lock:
            self.ops[op] += 1
            return sum(self.ops.values())

    def total(self) -> int:
        with self.lock:
            return sum(self.ops.values())


def store_rows(central: Central) -> list[dict[str, Any]]:
    """Every lease row, read from the SQLite file in one read transaction (WAL: a consistent snapshot)."""
    db = sqlite3.connect(f"file:{central.state}/controller.db?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM leases ORDER BY seq")]
    finally:
        db.close()
    for row in rows:
        row["conditions"] = {c["type"]: c for c in json.loads(row["conditions"])}
    return rows


def describe(row: dict[str, Any]) -> str:
    ready = row["conditions"].get("Ready", {})
    return (
        f"{row['name']} [{row['effective_begin']}, {row['effective_end']}] ended={row['ended']} "
        f"duration={row['duration']} {ready.get('reason')}"
    )


def double_holds(rows: list[dict[str, Any]]) -> list[str]:
    """Leases whose effective [begin, end) overlap on one exporter."""
    by_exporter: dict[str, list[dict[str, Any]]] = defaultdict(list)
    problems = []
    for row in rows:
        if row["exporter"] is not None:
            if row["effective_begin"] is None or (row["ended"] and row["effective_end"] is None):
                problems.append(f"{row['name']}: granted without effective times: {row}")
            by_exporter[row["exporter"]].append(row)
    for exporter, held in by_exporter.items():
        held.sort(key=lambda r: r["effective_begin"])
        for before, after in zip(held, held[1:], strict=False):
            end = before["effective_end"] if before["ended"] else float("inf")
            if end > after["effective_begin"]:
                problems.append(f"{exporter}: {describe(before)} overlaps {describe(after)}")
    return problems


def held_spans(seen: list[Seen]) -> dict[tuple[str, str], tuple[float, float]]:
    """(exporter, lease) -> the wall-time span clients certainly saw it held (see client_overlaps)."""
    spans: dict[tuple[str, str], tuple[float, float]] = {}
    for s in seen:
        if s.granted:
            first, last = spans.get((s.exporter, s.lease), (s.got, s.sent))
            spans[(s.exporter, s.lease)] = (min(first, s.got), max(last, s.sent))
    return {key: span for key, span in spans.items() if span[0] < span[1]}


def client_overlaps(seen: list[Seen]) -> list[str]:
    """Two leases certainly held at one wall time on one exporter, by what clients saw.

    A lease seen granted in answers [s1, g1] ... [sN, gN] was held all through [g1, sN].
    """
    by_exporter: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for (exporter, lease), (first, last) in held_spans(seen).items():
        by_exporter[exporter].append((first, last, lease))
    problems = []
    for exporter, held in by_exporter.items():
        held.sort()
        for (_, end, a), (begin, _, b) in zip(held, held[1:], strict=False):
            if end > begin:
                problems.append(f"{exporter}: clients held {a} and {b} at once around {begin:.3f}")
    return problems


def lost_leases(rows: list[dict[str, Any]], ledger: Ledger) -> list[str]:
    by_name = {r["name"]: r for r in rows}
    problems = []
    for s in ledger.seen:
        if not s.granted:
            continue
        row = by_name.get(s.lease)
        if row is None:
            problems.append(f"{s.lease}: seen granted by {s.observer}, not in the store")
            continue
        if (
            row["exporter"] != s.exporter
            or abs((row["effective_begin"] or 0) - (s.effective_begin or 0)) > 1e-3
        ):
            problems.append(f"{s.lease}: seen on {s.exporter} from {s.effective_begin}, stored {row}")
        elif row["effective_begin"] > s.got or (row["ended"] and row["effective_end"] < s.sent):
            problems.append(f"{s.lease}: seen granted at [{s.sent:.3f}, {s.got:.3f}], stored {row}")
    for name in {s.lease for s in ledger.seen if s.granted}:
        row = by_name.get(name)
        if row is None or not row["ended"]:
            continue
        ready = row["conditions"].get("Ready", {})
        reason = ready.get("reason")
        if ready.get("status") != "False" or reason not in ENDED_REASONS:
            problems.append(f"{name}: ended without a recorded reason: {row['conditions']}")
        elif reason == "Released" and name not in ledger.release_asked:
            problems.append(f"{name}: Released, but no client released it")
        elif reason == "Expired" and row["effective_end"] < row["effective_begin"] + row["duration"] - 1e-3:
            problems.append(f"{name}: Expired before its duration: {row}")
        if name in ledger.released_ok and reason != "Released":
            problems.append(f"{name}: DeleteLease answered OK, but it ended {reason}")
    return problems


def queue_problems(rows: list[dict[str, Any]], exporters: list[str]) -> list[str]:
    """Pending leases: each with the position the (priority, request time) order gives it."""
    pending = [r for r in rows if r["exporter"] is None and not r["ended"]]
    busy = {r["exporter"] for r in rows if r["exporter"] is not None and not r["ended"]}
    problems = []
    earlier: list[set[str]] = []
    for row in pending:  # rows are in seq order; all leases here have priority 0 (no policies)
        wants = {row["exporter_name"]} if row["exporter_name"] else set(exporters)
        position = 1 + sum(1 for other in earlier if other & wants)
        earlier.append(wants)
        message = row["conditions"].get("Pending", {}).get("message", "")
        if not message.endswith(f"queue position {position}"):
            problems.append(f"{row['name']} (seq {row['seq']}): expected position {position}, {message!r}")
        if not wants <= busy:
            problems.append(f"{row['name']} waits although {sorted(wants - busy)} are free")
    return problems


def fifo_problems(rows: list[dict[str, Any]], selector: str) -> list[str]:
    """No lease of `selector` (all the same candidates) was granted while an earlier one still waited."""
    pool = [r for r in rows if r["selector"] == selector and not r["exporter_name"]]
    problems = []
    for later in pool:
        if later["exporter"] is None:
            continue
        granted_at = later["effective_begin"]
        for earlier in pool:
            if earlier["seq"] >= later["seq"] or earlier["created"] > granted_at:
                continue
            waiting = (
                earlier["effective_begin"] > granted_at
                if earlier["exporter"] is not None
                else not earlier["ended"] or earlier["effective_end"] > granted_at
            )
            if waiting:
                problems.append(f"{later['name']} granted at {granted_at} before earlier {earlier['name']}")
    return problems
