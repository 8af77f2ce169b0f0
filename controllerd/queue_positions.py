"""A waiting lease's queue position: 1 + the waiting leases ahead of it that want any of its exporters.

Leases that share an `Evaluation` share a candidate set; positions are counted per distinct
candidate set, and whether two sets overlap is computed once per pair, so a pass over a
thousand waiting leases with a few distinct requests stays linear (tests/unit/test_scheduler.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from controllerd.candidates import Evaluation, ExporterKey
from controllerd.records import Lease


def queue_order(lease: Lease, priority: int) -> tuple[bool, int, int]:
    """The order waiting leases are granted in: an administrator's explicit (or health-check) lease
    first (it asks for one board by name), then policy priority, then request order."""
    return (not lease.out_of_service_ok, -priority, lease.seq)


def queue_positions(waiting: Sequence[tuple[Lease, Evaluation]]) -> list[int]:
    """The position of each of `waiting` (in queue order), counting only the leases ahead that compete."""
    groups: dict[frozenset[ExporterKey], int] = {}  # distinct candidate sets -> group number
    group_keys: list[frozenset[ExporterKey]] = []
    group_of: dict[int, int] = {}  # id(evaluation) -> group number
    overlap: dict[tuple[int, int], bool] = {}
    ahead: dict[int, int] = {}  # group number -> waiting leases seen so far
    positions: list[int] = []
    for _, evaluation in waiting:
        if id(evaluation) not in group_of:
            keys = evaluation.keys
            if keys not in groups:
                groups[keys] = len(group_keys)
                group_keys.append(keys)
            group_of[id(evaluation)] = groups[keys]
        group = group_of[id(evaluation)]
        competing = 0
        for other, count in ahead.items():
            if (group, other) not in overlap:
                overlap[(group, other)] = not group_keys[group].isdisjoint(group_keys[other])
            competing += count if overlap[(group, other)] else 0
        ahead[group] = ahead.get(group, 0) + 1
        positions.append(competing + 1)
    return positions
