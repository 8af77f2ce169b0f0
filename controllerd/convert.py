"""Records -> protocol messages, and resource names (PROTOCOL.md §7)."""

from __future__ import annotations

import re
import time
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from controllerd.errors import InvalidArgument
from controllerd.records import Exporter, Lease
from jumpstarter.client.v1 import client_pb2
from jumpstarter.selector import parse
from jumpstarter.v1 import jumpstarter_pb2, kubernetes_pb2

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


class BadName(InvalidArgument):
    """A resource name that is not `namespaces/NS/KIND/NAME` (or `namespaces/NS`)."""


def split_name(name: str, kind: str | None = None) -> tuple[str, str, str]:
    """`namespaces/NS/KIND/NAME` -> (ns, kind, name)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "namespaces" or not parts[1] or not parts[3]:
        raise BadName(f"invalid resource name {name!r} (expected namespaces/NS/{kind or 'KIND'}/NAME)")
    if kind is not None and parts[2] != kind:
        raise BadName(f"invalid resource name {name!r}: expected {kind}")
    return parts[1], parts[2], parts[3]


def split_parent(parent: str) -> str:
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "namespaces" or not parts[1]:
        raise BadName(f"invalid parent {parent!r} (expected namespaces/NS)")
    return parts[1]


def timestamp(ts: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(ts * 1e9))
    return out


def duration(seconds: float) -> Duration:
    out = Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


HEALTH_LABEL, HEALTH_REASON_LABEL = "jumpstarter.dev/health", "jumpstarter.dev/health-reason"


def wire_labels(exporter: Exporter) -> dict[str, str]:
    """Its labels, plus its board state once known (issue 12): the protocol has no field for it."""
    if exporter.health == "unknown":
        return exporter.labels
    state = {HEALTH_LABEL: exporter.health}
    if exporter.health_reason:
        state[HEALTH_REASON_LABEL] = exporter.health_reason
    return {**exporter.labels, **state}


def exporter_message(exporter: Exporter, online: bool) -> client_pb2.Exporter:
    return client_pb2.Exporter(
        name=f"namespaces/{exporter.namespace}/exporters/{exporter.name}",
        labels=wire_labels(exporter),
        online=online,
        status=exporter.status,  # type: ignore[arg-type]
        status_message=exporter.status_message,
        enabled=exporter.enabled,
    )


def condition_message(condition: Any) -> kubernetes_pb2.Condition:
    return kubernetes_pb2.Condition(
        type=condition.type,
        status=condition.status,
        reason=condition.reason,
        message=condition.message,
        lastTransitionTime=kubernetes_pb2.Time(
            seconds=int(condition.last_transition), nanos=int((condition.last_transition % 1) * 1e9)
        ),
    )


def lease_message(lease: Lease, now: float | None = None) -> client_pb2.Lease:
    now = time.time() if now is None else now
    message = client_pb2.Lease(
        name=f"namespaces/{lease.namespace}/leases/{lease.name}",
        selector=str(parse(lease.selector)) if lease.selector else "",
        client=f"namespaces/{lease.namespace}/clients/{lease.client}",
        tags=lease.tags,
        context=lease.context,
        allow_disabled=lease.allow_disabled,
        conditions=[condition_message(c) for c in lease.conditions],
    )
    if lease.duration is not None:
        message.duration.CopyFrom(duration(lease.duration))
    if lease.begin_time is not None:
        message.begin_time.CopyFrom(timestamp(lease.begin_time))
    if lease.end_time is not None:
        message.end_time.CopyFrom(timestamp(lease.end_time))
    if lease.exporter_name:
        message.exporter_name = lease.exporter_name
    if lease.exporter:
        message.exporter = f"namespaces/{lease.namespace}/exporters/{lease.exporter}"
    if lease.effective_begin is not None:
        message.effective_begin_time.CopyFrom(timestamp(lease.effective_begin))
        end = lease.effective_end if lease.effective_end is not None else now
        message.effective_duration.CopyFrom(duration(max(0.0, end - lease.effective_begin)))
        if lease.effective_end is not None:
            message.effective_end_time.CopyFrom(timestamp(lease.effective_end))
    return message


def legacy_lease_message(lease: Lease, exporter_uid: str | None) -> jumpstarter_pb2.GetLeaseResponse:
    """`ControllerService.GetLease` (the old lease API): structured selector, effective times."""
    message = jumpstarter_pb2.GetLeaseResponse(
        selector=kubernetes_pb2.LabelSelector(match_labels=parse(lease.selector).match_labels()),
        conditions=[condition_message(c) for c in lease.conditions],
    )
    if lease.duration is not None:
        message.duration.CopyFrom(duration(lease.duration))
    if lease.effective_begin is not None:
        message.begin_time.CopyFrom(timestamp(lease.effective_begin))
    if lease.effective_end is not None:
        message.end_time.CopyFrom(timestamp(lease.effective_end))
    if exporter_uid is not None:
        message.exporter_uuid = exporter_uid
    return message
