"""Invariants of a run, checked on its audit history (`jumpstarter admin audit -o json`).

For fault tests: after a run (crashes, restarts, partitions), read the audit records and call

    problems = audit_problems(records, active=active_lease_keys)
    assert not problems, problems

- no exporter was ever held by two leases at once (granted→end intervals, in audit id order,
  never overlap on one exporter);
- every granted lease has an end record or is still active (when `active` is given: the
  (namespace, name) of every lease the controller now holds; then those must have no end record);
- within a selector group (same namespace, selector and pinned exporter name), leases were granted
  in queue order: a lease is never granted while one ahead of it (higher priority, or the same
  priority and requested earlier) still waits. This assumes the leases of one group may use the
  same exporters (their clients' access policies do not differ for them).

Records are dicts as `admin audit -o json` prints them (or `dataclasses.asdict` of AuditEvent).
The id orders records; pass the whole history of the run (not a `--limit` window of it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ENDS = frozenset({"released", "expired", "ended"})
INFINITY = float("inf")


@dataclass
class LeaseLife:
    namespace: str
    name: str
    created: int | None = None  # audit id of the "created" record
    created_detail: dict[str, Any] = field(default_factory=dict)
    granted: int | None = None
    granted_time: float = 0.0
    exporter: str | None = None
    priority: int | None = None
    ended: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def group(self) -> tuple[str, str, str]:
        detail = self.created_detail
        return (self.namespace, str(detail.get("selector") or ""), str(detail.get("exporter_name") or ""))


def lease_lives(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], LeaseLife]:
    """Each lease's created/granted/ended records (by audit id), with any out-of-order record noted."""
    lives: dict[tuple[str, str], LeaseLife] = {}
    for record in sorted(records, key=lambda r: int(r["id"])):
        if record["kind"] != "lease":
            continue
        key = (record["namespace"], record["name"])
        life = lives.setdefault(key, LeaseLife(*key))
        rid, action, detail = int(record["id"]), record["action"], record.get("detail") or {}
        if life.ended is not None:
            life.problems.append(f"lease {key[1]}: {action} (id {rid}) after its end (id {life.ended})")
        if action == "created":
            life.created, life.created_detail = rid, detail
        elif action == "queued" and life.priority is None:
            life.priority = int(detail.get("priority") or 0)
        elif action == "granted":
            if life.granted is not None:
                life.problems.append(f"lease {key[1]}: granted twice (ids {life.granted}, {rid})")
            life.granted, life.granted_time, life.exporter = rid, float(record["time"]), record["exporter"]
            life.priority = int(detail.get("priority") or 0)
        elif action in ENDS:
            life.ended = rid
    return lives


def _double_holds(lives: dict[tuple[str, str], LeaseLife]) -> list[str]:
    held: dict[tuple[str, str], list[tuple[int, float, str]]] = defaultdict(list)
    for life in lives.values():
        if life.granted is not None and life.exporter is not None:
            end = INFINITY if life.ended is None else life.ended
            held[(life.namespace, life.exporter)].append((life.granted, end, life.name))
    problems = []
    for (_, exporter), intervals in sorted(held.items()):
        intervals.sort()
        for (_, end, first), (start, _, second) in zip(intervals, intervals[1:], strict=False):
            if start < end:
                problems.append(
                    f"exporter {exporter} held by two leases at once: {second} granted (id {start}) "
                    f"before {first} ended ({'never' if end == INFINITY else f'id {int(end)}'})"
                )
    return problems


def _lost(lives: dict[tuple[str, str], LeaseLife], active: set[tuple[str, str]]) -> list[str]:
    problems = []
    for key, life in sorted(lives.items()):
        if life.granted is not None and life.ended is None and key not in active:
            problems.append(
                f"lease {key[1]} was granted (id {life.granted}) but has no end record and is not active"
            )
        if key in active and life.ended is not None:
            problems.append(f"lease {key[1]} is active but the audit says it ended (id {life.ended})")
        if key in active and life.created is not None and life.granted is None:
            problems.append(f"lease {key[1]} is active but the audit has no grant for it")
    return problems


def _queue_order(lives: dict[tuple[str, str], LeaseLife]) -> list[str]:
    groups: dict[tuple[str, str, str], list[LeaseLife]] = defaultdict(list)
    for life in lives.values():
        if life.created is not None:
            groups[life.group].append(life)
    problems = []
    for members in groups.values():
        for life in members:
            if life.granted is None:
                continue
            mine = (-(life.priority or 0), life.created or 0)
            for other in members:
                if other is life or (other.created or 0) > life.granted:
                    continue
                waiting = (other.granted is None or other.granted > life.granted) and (
                    other.ended is None or other.ended > life.granted
                )
                begin = other.created_detail.get("begin_time")
                scheduled_later = begin is not None and float(begin) > life.granted_time
                ahead = (-(other.priority or 0), other.created or 0) < mine
                if waiting and ahead and not scheduled_later:
                    problems.append(
                        f"lease {life.name} was granted (id {life.granted}) while {other.name}, "
                        f"ahead of it in the queue, still waited"
                    )
    return problems


def audit_problems(
    records: Iterable[dict[str, Any]], active: Iterable[tuple[str, str]] | None = None
) -> list[str]:
    """Every broken invariant found in `records`, as sentences (empty: the run kept them all)."""
    lives = lease_lives(records)
    problems = [p for life in lives.values() for p in life.problems]
    problems += _double_holds(lives)
    if active is not None:
        problems += _lost(lives, set(active))
    problems += _queue_order(lives)
    return problems
