"""Access policies: may this client hold this exporter, for this long (reference §2.4 step 4)."""

from __future__ import annotations

from controllerd.records import AccessPolicy, Client, Exporter, Lease
from jumpstarter.selector import parse


class PolicyDenied(Exception):
    """No access policy approves the change (PERMISSION_DENIED)."""


def approving_priority(
    policies: list[AccessPolicy], exporter: Exporter, client: Client | None, requested: float
) -> int | None:
    """The best priority of the namespace's `policies` approving `client` on `exporter` for
    `requested` seconds; 0 when the namespace has no policy, None when none approves."""
    if not policies:
        return 0
    best: int | None = None
    for policy in policies:
        if not parse(policy.exporter_selector).matches(exporter.labels):
            continue
        if client is None or not parse(policy.client_selector).matches(client.labels):
            continue
        if policy.maximum_duration is not None and requested > policy.maximum_duration:
            continue
        best = policy.priority if best is None else max(best, policy.priority)
    return best


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
