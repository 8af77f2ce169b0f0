"""Access policies: how long a lease holds its exporter, which the policies bound (reference §2.4 step 4).

Which policy approves what is decided in one place, controllerd/candidates.py."""

from __future__ import annotations

from controllerd.errors import PermissionDenied
from controllerd.records import Lease


class PolicyDenied(PermissionDenied):
    """No access policy approves the change (PERMISSION_DENIED)."""


def held_for(lease: Lease, now: float) -> float:
    """How long `lease` holds (or would hold) its exporter, from its start to its deadline.

    An extension by `end_time` leaves `duration` as it was, so this, not `duration`, is
    what a maximum duration bounds."""
    if lease.effective_begin is not None:
        start = lease.effective_begin
    else:
        start = max(lease.begin_time, now) if lease.begin_time is not None else now
    if lease.end_time is not None:
        return lease.end_time - start
    return lease.duration or 0.0
