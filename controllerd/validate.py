"""What a lease request and an exporter's Register may carry, checked before anything is stored.

CreateLease, the legacy RequestLease and UpdateLease all pass through here, so one set of
rules (sizes, character sets, time bounds, the maximum lease duration) holds on every path.
A refusal raises `LeaseRequestError` or `InvalidName` (both INVALID_ARGUMENT); the caller stores nothing.
"""

from __future__ import annotations

import re
import time

from controllerd.errors import InvalidArgument
from controllerd.policy import held_for
from controllerd.records import Lease
from jumpstarter.names import NAME_LABEL, InvalidName, check_label, check_name, reserved, shown
from jumpstarter.selector import SelectorError, parse

MAX_TAGS = 10
MAX_CONTEXT = 8
MAX_CONTEXT_KEY = 32
MAX_CONTEXT_VALUE = 64
MAX_SELECTOR = 1024
MAX_AHEAD = 365 * 86400.0  # how far ahead a lease may be scheduled
LEASE_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
CONTEXT_KEY_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]{0,30}[A-Za-z0-9])?$")
EXPORTER_SET_LABELS = frozenset({NAME_LABEL})  # the only reserved label an exporter may send (its own name)


class LeaseRequestError(InvalidArgument):
    """A lease request that can never be valid (bad selector, times, limits)."""


def resolve_times(
    duration: float | None, begin: float | None, end: float | None
) -> tuple[float | None, float | None, float | None]:
    """Complete (duration, begin, end) as upstream does (reference §2.3)."""
    if duration is not None and duration <= 0:
        raise LeaseRequestError("duration must be positive")
    if begin is not None and end is not None:
        if end <= begin:
            raise LeaseRequestError("end_time must be after begin_time")
        if duration is not None and abs((end - begin) - duration) > 1e-3:
            raise LeaseRequestError("duration conflicts with begin_time and end_time")
        return end - begin, begin, end
    if end is not None:
        if duration is None:
            raise LeaseRequestError(
                "duration is required (must specify Duration, or both BeginTime and EndTime)"
            )
        begin = end - duration
        return duration, (begin if begin > time.time() else None), end
    if duration is None:
        raise LeaseRequestError("duration is required (must specify Duration, or both BeginTime and EndTime)")
    return duration, begin, None


def _refuse(message: str) -> LeaseRequestError:
    return LeaseRequestError(message)


def lease_request(lease: Lease, now: float, max_duration: float) -> None:
    """Check every field of a new lease and resolve its times in place; raises before any store."""
    if not LEASE_ID_RE.match(lease.name):
        raise _refuse(f"invalid lease_id {shown(lease.name)} (1-63 lowercase letters, digits, '-', '.')")
    if not lease.selector and not lease.exporter_name:
        raise _refuse("a lease needs a selector or an exporter_name")
    if len(lease.selector) > MAX_SELECTOR:
        raise _refuse(f"selector longer than {MAX_SELECTOR} characters")
    try:
        parse(lease.selector)
    except SelectorError as exc:
        raise _refuse(f"selector: {exc}") from None
    if lease.exporter_name:
        try:
            check_name(lease.exporter_name, "exporter_name")
        except InvalidName as exc:
            raise _refuse(str(exc)) from None
    tags(lease.tags)
    context(lease.context)
    lease_times(lease, now, max_duration)


def selector_labels(labels: dict[str, str]) -> None:
    """The legacy RequestLease's matchLabels: valid label keys and values, checked before they are
    joined into a selector string (so a key cannot smuggle in `,` or `=`)."""
    for key, value in labels.items():
        try:
            check_label(key, value, "selector label")
        except InvalidName as exc:
            raise _refuse(str(exc)) from None


def tags(values: dict[str, str]) -> None:
    """At most MAX_TAGS; keys are label names without a prefix, values label values (upstream's rule)."""
    if len(values) > MAX_TAGS:
        raise _refuse(f"at most {MAX_TAGS} tags")
    for key, value in values.items():
        if not TAG_KEY_RE.match(key):
            raise _refuse(f"invalid tag key {shown(key)}: 1-63 letters, digits, '-', '_', '.'")
        try:
            check_label(key, value, "tag")
        except InvalidName as exc:
            raise _refuse(str(exc)) from None


def context(values: dict[str, str]) -> None:
    """At most MAX_CONTEXT entries; short plain keys; values printable text (no control characters)."""
    if len(values) > MAX_CONTEXT:
        raise _refuse(f"at most {MAX_CONTEXT} context entries")
    for key, value in values.items():
        if not CONTEXT_KEY_RE.match(key):
            raise _refuse(
                f"invalid context key {shown(key)}: 1-{MAX_CONTEXT_KEY} letters, digits, '-', '_', '.', '/'"
            )
        if len(value) > MAX_CONTEXT_VALUE or not value.isprintable():
            raise _refuse(
                f"invalid context value for {key}: at most {MAX_CONTEXT_VALUE} printable characters"
                " (no control characters)"
            )


def lease_times(lease: Lease, now: float, max_duration: float) -> None:
    """Resolve (duration, begin, end) in place and keep them sane: a start at most MAX_AHEAD
    away, an end in the future, and at most `max_duration` held."""
    for what, value in (("begin_time", lease.begin_time), ("end_time", lease.end_time)):
        if value is not None and not 0 <= value <= now + MAX_AHEAD + max_duration:
            raise _refuse(f"{what} must lie between now and {int(MAX_AHEAD // 86400)} days ahead")
    lease.duration, lease.begin_time, lease.end_time = resolve_times(
        lease.duration, lease.begin_time, lease.end_time
    )
    if lease.duration is not None and lease.duration > max_duration:
        raise _refuse(f"duration {_human(lease.duration)} is longer than the maximum {_human(max_duration)}")
    if lease.begin_time is not None and lease.begin_time > now + MAX_AHEAD:
        raise _refuse(f"begin_time must lie at most {int(MAX_AHEAD // 86400)} days ahead")
    deadline = lease.deadline()
    if deadline is not None and deadline <= now:
        raise _refuse("the lease would end in the past (end_time, or begin_time + duration)")
    held = held_for(lease, now)
    if held > max_duration:
        raise _refuse(f"the lease would last {_human(held)}, longer than the maximum {_human(max_duration)}")


def registered_labels(stored: dict[str, str], sent: dict[str, str], name: str) -> dict[str, str]:
    """An exporter's labels after Register: the administrator's, plus the reserved ones the controller
    derives. Of the reserved labels an exporter may only send its own `jumpstarter.dev/name` (what
    upstream and our exporterd send); any other is refused; plain labels are the admin's to set."""
    for key, value in sent.items():
        if reserved(key) and (key not in EXPORTER_SET_LABELS or value != name):
            raise InvalidName(
                f"label {shown(key)}={shown(value)} is reserved: the controller sets it "
                f"(an exporter may only send {NAME_LABEL}={name})"
            )
    labels = {k: v for k, v in stored.items() if not reserved(k)}
    labels[NAME_LABEL] = name
    return labels


def _human(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g}d"
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    return f"{seconds:g}s"
