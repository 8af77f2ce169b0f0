"""Records <-> Kubernetes objects, with upstream's field names and JSON casing (issue 11 §1).

Upstream's fields carry what they mean upstream (Exporter `spec.enabled`, `status.exporterStatus`,
Lease `spec.selector` as a LabelSelector, `status.exporterRef`, label `jumpstarter.dev/lease-ended`).
What upstream has no field for lives in our own annotations under `lab.jumpstarter.dev/`, never in
upstream's fields (a real API server would prune unknown fields anyway): exact times, the lease's
request order, `paused`, and every record field this module does not map (JSON in FIELDS), so a
field added to a record later is stored without a change here. Our own kinds (`ControllerToken`,
`AuditEvent`, `ControllerSequence`) are in the group `lab.jumpstarter.dev`.

Encoding starts from the stored object when there is one (`base`), so what others wrote into it
(kubectl, upstream tools: `spec.username`, `status.endpoint`, owner references) is kept.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from typing import Any

from controllerd.errors import InvalidArgument
from controllerd.records import (
    AccessPolicy,
    AuditEvent,
    Client,
    Condition,
    Exporter,
    ExporterStatus,
    Lease,
    TokenRecord,
)
from controllerd.store.kube_values import (
    Object,
    from_go_duration,
    from_rfc3339,
    go_duration,
    label_selector,
    rfc3339,
    selector_text,
)

GROUP, VERSION = "jumpstarter.dev", "v1alpha1"
OUR_GROUP = "lab.jumpstarter.dev"
PREFIX = "lab.jumpstarter.dev/"
FIELDS = PREFIX + "fields"  # record fields with no upstream home, as JSON
CREATED = PREFIX + "created"
SEQ = PREFIX + "seq"
UID = "jumpstarter.dev/migrated-uid"  # upstream's: the UID used in token subjects (common_helpers.go)
ENDED_LABEL = "jumpstarter.dev/lease-ended"
LEASE_REF = "leaseRef"


# Proto ExporterStatus <-> upstream's PascalCase strings (protoStatusToString).
_STATUS_NAMES: dict[int, str] = {
    s.value: "".join(w.capitalize() for w in s.name.split("_")) for s in ExporterStatus
}
_STATUS_VALUES = {name: value for value, name in _STATUS_NAMES.items()}


# -- common metadata ----------------------------------------------------------------------


def _start(base: Object | None, kind: str, namespace: str, name: str, group: str = GROUP) -> Object:
    obj = copy.deepcopy(base) if base else {}
    obj["apiVersion"], obj["kind"] = f"{group}/{VERSION}", kind
    meta = obj.setdefault("metadata", {})
    meta["name"], meta["namespace"] = name, namespace
    return obj


def _annotations(obj: Object) -> dict[str, str]:
    meta = obj.setdefault("metadata", {})
    if meta.get("annotations") is None:
        meta["annotations"] = {}
    return meta["annotations"]  # type: ignore[no-any-return]


def _put_extras(obj: Object, record: Any, mapped: set[str]) -> None:
    extras = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name not in mapped}
    annotations = _annotations(obj)
    if extras:
        annotations[FIELDS] = json.dumps(extras, sort_keys=True)
    else:
        annotations.pop(FIELDS, None)


def _get_extras(obj: Object, cls: Any, mapped: set[str]) -> dict[str, Any]:
    try:
        extras = json.loads((obj["metadata"].get("annotations") or {}).get(FIELDS) or "{}")
    except ValueError:
        extras = {}
    known = {f.name for f in dataclasses.fields(cls)} - mapped
    return {k: v for k, v in extras.items() if k in known} if isinstance(extras, dict) else {}


def _identity(obj: Object, record: Any) -> None:
    """uid and creation time: upstream's metadata when they agree, else our annotations."""
    annotations = _annotations(obj)
    if record.uid != obj["metadata"].get("uid"):
        annotations[UID] = record.uid
    annotations[CREATED] = repr(record.created)


def _read_identity(obj: Object) -> dict[str, Any]:
    meta, annotations = obj["metadata"], obj["metadata"].get("annotations") or {}
    created = annotations.get(CREATED)
    try:
        when = float(created) if created else from_rfc3339(meta.get("creationTimestamp"))
    except ValueError:
        when = from_rfc3339(meta.get("creationTimestamp"))
    return {"uid": annotations.get(UID) or meta.get("uid", ""), "created": when or 0.0}


def _labels(obj: Object) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def _conditions_out(conditions: list[Condition], generation: int) -> list[Object]:
    return [
        {
            "type": c.type,
            "status": c.status,
            "reason": c.reason or c.type,  # metav1.Condition requires a reason
            "message": c.message,
            "lastTransitionTime": rfc3339(c.last_transition),
            "observedGeneration": generation,
        }
        for c in conditions
    ]


def _conditions_in(items: Any) -> list[Condition]:
    out = []
    for c in items or []:
        reason = c.get("reason", "")
        out.append(
            Condition(
                c.get("type", ""),
                c.get("status", ""),
                "" if reason == c.get("type") and not c.get("message") else reason,
                c.get("message", ""),
                from_rfc3339(c.get("lastTransitionTime")) or 0.0,
            )
        )
    return out


# -- Exporter -----------------------------------------------------------------------------

_EXPORTER = {"namespace", "name", "uid", "created", "labels", "enabled", "status", "status_message",
             "last_seen", "registered", "devices"}  # fmt: skip


def exporter_object(record: Exporter, base: Object | None) -> Object:
    obj = _start(base, "Exporter", record.namespace, record.name)
    obj["metadata"]["labels"] = dict(record.labels)
    obj.setdefault("spec", {})["enabled"] = record.enabled
    status = obj.setdefault("status", {})
    status["exporterStatus"] = _STATUS_NAMES.get(record.status, "Unspecified")
    if record.status not in _STATUS_NAMES:  # a newer status than the CRD knows: kept exactly in ours
        _annotations(obj)[PREFIX + "exporter-status"] = str(record.status)
    status["statusMessage"] = record.status_message
    _set(status, "lastSeen", rfc3339(record.last_seen))
    status["devices"] = [{k: v for k, v in d.items() if v is not None} for d in record.devices]
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Registered"]
    registered = Condition(
        "Registered",
        "True" if record.registered else "False",
        "Register" if record.registered else "Unregister",
    )
    status["conditions"] = conditions + _conditions_out([registered], obj["metadata"].get("generation", 1))
    _identity(obj, record)
    _put_extras(obj, record, _EXPORTER)
    return obj


def exporter_record(obj: Object) -> Exporter:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    annotations = obj["metadata"].get("annotations") or {}
    code = annotations.get(PREFIX + "exporter-status")
    value = (
        int(code) if code and code.isdigit() else _STATUS_VALUES.get(status.get("exporterStatus") or "", 0)
    )
    registered = any(
        c.get("type") == "Registered" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    devices = [
        {
            "uuid": d.get("uuid", ""),
            "parent_uuid": d.get("parent_uuid"),
            "labels": dict(d.get("labels") or {}),
        }
        for d in status.get("devices") or []
    ]
    return Exporter(
        namespace=obj["metadata"]["namespace"],
        name=obj["metadata"]["name"],
        labels=_labels(obj),
        enabled=spec.get("enabled") is not False,  # nil counts as enabled (upstream IsEnabled)
        status=value,
        status_message=status.get("statusMessage") or "",
        last_seen=from_rfc3339(status.get("lastSeen")),
        registered=registered,
        devices=devices,
        **_read_identity(obj),
        **_get_extras(obj, Exporter, _EXPORTER),
    )


def lease_ref(obj: Object) -> str | None:
    return ((obj.get("status") or {}).get(LEASE_REF) or {}).get("name") or None


# -- Client -------------------------------------------------------------------------------

_CLIENT = {"namespace", "name", "uid", "created", "labels"}


def client_object(record: Client, base: Object | None) -> Object:
    obj = _start(base, "Client", record.namespace, record.name)
    obj["metadata"]["labels"] = dict(record.labels)
    obj.setdefault("spec", {})
    _identity(obj, record)
    _put_extras(obj, record, _CLIENT)
    return obj


def client_record(obj: Object) -> Client:
    return Client(
        namespace=obj["metadata"]["namespace"],
        name=obj["metadata"]["name"],
        labels=_labels(obj),
        **_read_identity(obj),
        **_get_extras(obj, Client, _CLIENT),
    )


# -- Lease --------------------------------------------------------------------------------

_LEASE = {"namespace", "name", "uid", "created", "client", "selector", "exporter_name", "duration",
          "begin_time", "end_time", "tags", "context", "allow_disabled", "released", "seq", "exporter",
          "priority", "effective_begin", "effective_end", "ended", "conditions"}  # fmt: skip


def lease_object(record: Lease, base: Object | None) -> Object:
    obj = _start(base, "Lease", record.namespace, record.name)
    spec = obj.setdefault("spec", {})
    spec["clientRef"] = {"name": record.client}
    spec["selector"] = label_selector(record.selector)
    _set(spec, "exporterRef", {"name": record.exporter_name} if record.exporter_name else None)
    _set(spec, "duration", go_duration(record.duration))
    _set(spec, "beginTime", rfc3339(record.begin_time))
    _set(spec, "endTime", rfc3339(record.end_time))
    _set(spec, "tags", dict(record.tags) or None)
    _set(spec, "context", dict(record.context) or None)
    spec["allowDisabled"] = record.allow_disabled
    spec["release"] = record.released
    status = obj.setdefault("status", {})
    _set(status, "exporterRef", {"name": record.exporter} if record.exporter else None)
    _set(status, "beginTime", rfc3339(record.effective_begin))
    _set(status, "endTime", rfc3339(record.effective_end))
    status["ended"] = record.ended
    status["priority"] = record.priority
    status["conditions"] = _conditions_out(record.conditions, obj["metadata"].get("generation", 1))
    labels = obj["metadata"].setdefault("labels", {}) if obj["metadata"].get("labels") is not None else {}
    obj["metadata"]["labels"] = labels
    if record.ended:
        labels[ENDED_LABEL] = "true"
    else:
        labels.pop(ENDED_LABEL, None)
    annotations = _annotations(obj)
    annotations[SEQ] = str(record.seq)
    # the exact string: several selector strings give one LabelSelector ("k=v" and "k==v")
    annotations[PREFIX + "selector"] = record.selector
    if record.duration is not None and from_go_duration(go_duration(record.duration)) != record.duration:
        annotations[PREFIX + "duration"] = repr(record.duration)  # finer than Go's nanoseconds
    else:
        annotations.pop(PREFIX + "duration", None)
    _identity(obj, record)
    _put_extras(obj, record, _LEASE)
    return obj


def lease_record(obj: Object) -> Lease:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    annotations = obj["metadata"].get("annotations") or {}
    selector = selector_text(spec.get("selector"))
    exact = annotations.get(PREFIX + "selector")
    if exact is not None and _same_selector(exact, spec.get("selector")):
        selector = exact
    times = [
        from_go_duration(spec.get("duration")),
        from_rfc3339(spec.get("beginTime")),
        from_rfc3339(spec.get("endTime")),
        from_rfc3339(status.get("beginTime")),
        from_rfc3339(status.get("endTime")),
    ]
    with contextlib.suppress(ValueError):
        exact = float(annotations.get(PREFIX + "duration", "x"))
        if times[0] is not None and abs(exact - times[0]) < 1e-6:  # still what spec.duration says
            times[0] = exact
    seq = annotations.get(SEQ, "")
    return Lease(
        namespace=obj["metadata"]["namespace"],
        name=obj["metadata"]["name"],
        client=(spec.get("clientRef") or {}).get("name", ""),
        selector=selector,
        exporter_name=(spec.get("exporterRef") or {}).get("name") or None,
        duration=times[0],
        begin_time=times[1],
        end_time=times[2],
        tags=dict(spec.get("tags") or {}),
        context=dict(spec.get("context") or {}),
        allow_disabled=bool(spec.get("allowDisabled")),
        released=bool(spec.get("release")),
        seq=int(seq) if seq.isdigit() else 0,
        exporter=(status.get("exporterRef") or {}).get("name") or None,
        priority=int(status.get("priority") or 0),
        effective_begin=times[3],
        effective_end=times[4],
        ended=bool(status.get("ended")) or (obj["metadata"].get("labels") or {}).get(ENDED_LABEL) == "true",
        conditions=_conditions_in(status.get("conditions")),
        **_read_identity(obj),
        **_get_extras(obj, Lease, _LEASE),
    )


def _same_selector(text: str, selector: Any) -> bool:
    try:
        return label_selector(text) == (selector or {})
    except InvalidArgument:
        return False


# -- ExporterAccessPolicy -----------------------------------------------------------------


def policy_object(record: AccessPolicy, base: Object | None) -> Object:
    """One of our policies is one ExporterAccessPolicy with one rule for one client selector."""
    obj = _start(base, "ExporterAccessPolicy", record.namespace, record.name)
    rule: Object = {
        "priority": record.priority,
        "from": [{"clientSelector": label_selector(record.client_selector)}],
    }
    if record.maximum_duration is not None:
        rule["maximumDuration"] = go_duration(record.maximum_duration)
    obj["spec"] = {"exporterSelector": label_selector(record.exporter_selector), "policies": [rule]}
    _annotations(obj)[CREATED] = repr(record.created)
    return obj


def policy_records(obj: Object) -> list[AccessPolicy]:
    """Every (rule, client selector) of an ExporterAccessPolicy; several get `-N` names (read-only)."""
    spec = obj.get("spec") or {}
    exporter_selector = selector_text(spec.get("exporterSelector"))
    created = _read_identity(obj)["created"]
    pairs = [(rule, source) for rule in spec.get("policies") or [] for source in rule.get("from") or [{}]]
    out = []
    for index, (rule, source) in enumerate(pairs):
        name = obj["metadata"]["name"] if len(pairs) == 1 else f"{obj['metadata']['name']}-{index}"
        out.append(
            AccessPolicy(
                namespace=obj["metadata"]["namespace"],
                name=name,
                exporter_selector=exporter_selector,
                client_selector=selector_text(source.get("clientSelector")),
                priority=int(rule.get("priority") or 0),
                maximum_duration=from_go_duration(rule.get("maximumDuration")),
                created=created,
            )
        )
    return out


# -- our own kinds ------------------------------------------------------------------------


def token_object(record: TokenRecord, namespace: str, base: Object | None) -> Object:
    obj = _start(base, "ControllerToken", namespace, f"jti-{record.jti}", OUR_GROUP)
    obj["spec"] = dataclasses.asdict(record)
    obj["metadata"]["labels"] = {"revoked": str(record.revoked).lower()}
    return obj


def token_record(obj: Object) -> TokenRecord:
    fields = {f.name for f in dataclasses.fields(TokenRecord)}
    return TokenRecord(**{k: v for k, v in (obj.get("spec") or {}).items() if k in fields})


def audit_object(event: AuditEvent, namespace: str) -> Object:
    obj = _start(None, "AuditEvent", namespace, f"audit-{event.id:016d}", OUR_GROUP)
    obj["spec"] = dataclasses.asdict(event)
    obj["metadata"]["labels"] = {"kind": event.kind}
    return obj


def audit_record(obj: Object) -> AuditEvent:
    fields = {f.name for f in dataclasses.fields(AuditEvent)}
    return AuditEvent(**{k: v for k, v in (obj.get("spec") or {}).items() if k in fields})


def _set(target: Object, key: str, value: Any) -> None:
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value
