"""Board states (issue 12): healthy, unhealthy, maintenance, unknown; who may be granted what.

An exporter's `health` says whether ordinary leases may have it: `unhealthy` (its last health
check failed) and `maintenance` (an administrator took it out, with a reason) are out of
service. A lease marked `out_of_service_ok` (an administrator's explicit lease, or the
controller's own health-check lease) may still get them. Every change is audited here.
"""

from __future__ import annotations

from collections.abc import Sequence

from controllerd import audit
from controllerd.errors import InvalidArgument
from controllerd.records import AuditEvent, Exporter

HEALTHY, UNHEALTHY, MAINTENANCE, UNKNOWN = "healthy", "unhealthy", "maintenance", "unknown"
STATES = frozenset({HEALTHY, UNHEALTHY, MAINTENANCE, UNKNOWN})
OUT_OF_SERVICE = frozenset({UNHEALTHY, MAINTENANCE})  # never granted to an ordinary lease
MAX_REASON = 200  # characters of a maintenance reason
SHOWN_BOARDS = 3  # out-of-service boards a pending lease's message names


def check_reason(reason: object) -> str:
    """A maintenance reason: 1 to MAX_REASON printable characters, refused (not trimmed) otherwise."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidArgument("maintenance needs --reason TEXT (why the board is out of service)")
    text = reason.strip()
    if len(text) > MAX_REASON:
        raise InvalidArgument(f"reason too long: {len(text)} characters, at most {MAX_REASON}")
    if not text.isprintable():
        raise InvalidArgument("reason: printable characters only (no newlines or control characters)")
    return text


def describe(exporter: Exporter) -> str:
    """`board-1 in maintenance (new SD card)` / `board-2 unhealthy (health check exited with 1)`."""
    state = "in maintenance" if exporter.health == MAINTENANCE else exporter.health
    return f"{exporter.name} {state}" + (f" ({exporter.health_reason})" if exporter.health_reason else "")


def out_of_service_text(boards: Sequence[Exporter]) -> str:
    """Why a lease whose matching boards are all out of service waits (a few named, with reasons)."""
    named = "; ".join(describe(e) for e in boards[:SHOWN_BOARDS])
    more = f"; {len(boards) - SHOWN_BOARDS} more" if len(boards) > SHOWN_BOARDS else ""
    return f"all {len(boards)} matching exporters are out of service: {named}{more}"


def change(
    exporter: Exporter,
    state: str,
    reason: str,
    actor: str,
    action: str,
    why: str,
    **detail: object,
) -> AuditEvent:
    """Set `exporter`'s state (in the record, not yet stored) and return the event recording it."""
    assert state in STATES, state
    before = exporter.health
    exporter.health, exporter.health_reason = state, audit.bounded(reason, MAX_REASON)
    return audit.event(
        exporter.namespace,
        "exporter",
        exporter.name,
        action,
        actor,
        why,
        f"{before} → {state}" + (f": {exporter.health_reason}" if exporter.health_reason else ""),
        state=state,
        previous=before,
        **detail,
    )
