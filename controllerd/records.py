"""The controller's records (DESIGN.md §5). Times are POSIX seconds (float), UTC."""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jumpstarter.v1 import common_pb2


def now() -> float:
    return time.time()


def new_uid() -> str:
    return str(uuid.uuid4())


def uuid7() -> str:
    """A UUIDv7 (time-ordered), as upstream names generated leases."""
    ms = int(time.time() * 1000)
    rand = uuid.uuid4().int
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | (rand & ((1 << 12) - 1)) << 64
        | 0b10 << 62
        | (rand >> 64) & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=value))


class ExporterStatus(enum.IntEnum):
    """`jumpstarter.v1.ExporterStatus` by name: the protocol's own numbers."""

    UNSPECIFIED = common_pb2.EXPORTER_STATUS_UNSPECIFIED
    OFFLINE = common_pb2.EXPORTER_STATUS_OFFLINE
    AVAILABLE = common_pb2.EXPORTER_STATUS_AVAILABLE
    BEFORE_LEASE_HOOK = common_pb2.EXPORTER_STATUS_BEFORE_LEASE_HOOK
    LEASE_READY = common_pb2.EXPORTER_STATUS_LEASE_READY
    AFTER_LEASE_HOOK = common_pb2.EXPORTER_STATUS_AFTER_LEASE_HOOK
    BEFORE_LEASE_HOOK_FAILED = common_pb2.EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED
    AFTER_LEASE_HOOK_FAILED = common_pb2.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED


@dataclass
class Condition:
    type: str
    status: str  # "True" | "False"
    reason: str = ""
    message: str = ""
    last_transition: float = field(default_factory=now)


@dataclass
class Exporter:
    namespace: str
    name: str
    uid: str = field(default_factory=new_uid)
    labels: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    status: int = (
        ExporterStatus.UNSPECIFIED
    )  # an ExporterStatus, or a newer one this controller does not know
    status_message: str = ""
    last_seen: float | None = None
    registered: bool = False
    devices: list[dict[str, Any]] = field(default_factory=list)
    health: str = "unknown"  # healthy | unhealthy | maintenance | unknown (issue 12)
    health_reason: str = ""
    created: float = field(default_factory=now)

    @property
    def subject(self) -> str:
        return f"exporter:{self.namespace}:{self.name}:{self.uid}"


@dataclass
class Client:
    namespace: str
    name: str
    uid: str = field(default_factory=new_uid)
    labels: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=now)

    @property
    def subject(self) -> str:
        return f"client:{self.namespace}:{self.name}:{self.uid}"


@dataclass
class Lease:
    namespace: str
    name: str
    client: str
    selector: str = ""
    exporter_name: str | None = None  # requested exporter, if pinned
    duration: float | None = None
    begin_time: float | None = None  # requested (scheduled) start
    end_time: float | None = None  # requested end
    tags: dict[str, str] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=dict)
    allow_disabled: bool = False
    uid: str = field(default_factory=new_uid)
    created: float = field(default_factory=now)
    seq: int = 0  # request order, assigned by the store
    exporter: str | None = None  # assigned exporter
    priority: int = 0
    effective_begin: float | None = None
    effective_end: float | None = None
    released: bool = False
    ended: bool = False
    paused: bool = False
    conditions: list[Condition] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.exporter is not None and not self.ended

    @property
    def pending(self) -> bool:
        return self.exporter is None and not self.ended

    def condition(self, type_: str) -> Condition | None:
        for c in self.conditions:
            if c.type == type_:
                return c
        return None

    def set_condition(self, type_: str, status: str, reason: str = "", message: str = "") -> None:
        existing = self.condition(type_)
        if existing is None:
            self.conditions.append(Condition(type_, status, reason, message))
        elif (existing.status, existing.reason, existing.message) != (status, reason, message):
            if existing.status != status:
                existing.last_transition = now()
            existing.status, existing.reason, existing.message = status, reason, message

    def remove_condition(self, type_: str) -> None:
        self.conditions = [c for c in self.conditions if c.type != type_]

    def deadline(self) -> float | None:
        """When an acquired lease ends: end_time, else begin + duration."""
        if self.end_time is not None:
            return self.end_time
        if self.duration is None:
            return None
        start = self.begin_time if self.begin_time is not None else self.effective_begin
        return None if start is None else start + self.duration


@dataclass
class AccessPolicy:
    """Clients matching `client_selector` may lease exporters matching `exporter_selector`."""

    namespace: str
    name: str
    exporter_selector: str = ""
    client_selector: str = ""
    priority: int = 0
    maximum_duration: float | None = None
    created: float = field(default_factory=now)


@dataclass
class TokenRecord:
    jti: str
    subject: str
    namespace: str
    kind: str  # Client | Exporter
    name: str
    issued: float
    expires: float
    revoked: bool = False


@dataclass
class AuditEvent:
    """One transition of a lease, exporter, client or policy (DESIGN.md §5: the audit history).

    Written by the store in the same transaction as the change it records; `id` is
    assigned by the store and only grows, so it orders events even when clocks do not.
    """

    namespace: str
    kind: str  # lease | exporter | client | policy
    name: str  # the object's name
    action: str  # created, granted, paused, released, online, ...
    actor: str  # client:NAME, exporter:NAME, admin, scheduler
    lease: str | None = None
    exporter: str | None = None
    client: str | None = None
    reason: str = ""
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)  # small machine-readable facts (priority, selector)
    time: float = field(default_factory=now)
    id: int = 0
