"""Values in the Kubernetes API's forms: RFC 3339 times, Go durations, LabelSelectors."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from controllerd.errors import InvalidArgument
from jumpstarter.selector import SelectorError, parse

Object = dict[str, Any]


def rfc3339(ts: float | None) -> str | None:
    """A POSIX time as RFC 3339 with nanoseconds: exact for a float time after 1974 (spacing > 1 ns),
    and what metav1.Time / MicroTime and `format: date-time` accept."""
    if ts is None:
        return None
    exact = Decimal(ts)
    whole = int(exact.to_integral_value(rounding=ROUND_FLOOR))
    fraction = (exact - whole).quantize(_NANO)
    if fraction >= 1:  # rounded up to the next second
        whole, fraction = whole + 1, fraction - 1
    stamp = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{format(fraction, 'f')[2:]:0<9}Z"


def from_rfc3339(text: Any) -> float | None:
    """RFC 3339 with any number of fraction digits (upstream writes whole seconds); bad text: unset."""
    match = _RFC3339.match(str(text or ""))
    if not match:
        return None
    try:
        when = datetime.fromisoformat(
            match["base"] + (match["zone"].replace("Z", "+00:00").replace("z", "+00:00"))
        )
    except ValueError:
        return None
    return float(Decimal(int(when.timestamp())) + Decimal("0" + (match["fraction"] or ".0")))


_NANO = Decimal("0.000000001")
_RFC3339 = re.compile(
    r"^(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?P<fraction>\.\d{1,9})?(?P<zone>[Zz]|[+-]\d\d:\d\d)$"
)
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": Decimal("1e-9"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"), "ms": Decimal("1e-3"),
          "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}  # fmt: skip


def go_duration(seconds: float | None) -> str | None:
    """Seconds as a Go duration string (metav1.Duration), e.g. 3723.5 -> "1h2m3.5s" (to the nanosecond)."""
    if seconds is None:
        return None
    exact = Decimal(seconds).quantize(_NANO)
    sign = "-" if exact < 0 else ""
    hours, rest = divmod(abs(exact), 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    secs_text = format(secs.normalize(), "f") if secs else "0"
    return f"{sign}{text}{secs_text}s"


def from_go_duration(text: Any) -> float | None:
    if not text:
        return None
    text = str(text)
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    parts = _DURATION.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        return None
    return sign * float(sum(Decimal(n) * _UNITS[u] for n, u in parts))


def label_selector(text: str) -> Object:
    """Our selector string as a metav1.LabelSelector (`matchLabels` for the plain equalities)."""
    try:
        selector = parse(text)
    except SelectorError as exc:
        raise InvalidArgument(str(exc)) from None
    match_labels: dict[str, str] = {}
    expressions: list[Object] = []
    for req in selector.requirements:
        if req.operator == "In" and len(req.values) == 1 and req.key not in match_labels:
            match_labels[req.key] = req.values[0]
        else:
            expressions.append({"key": req.key, "operator": req.operator, "values": list(req.values)})
    out: Object = {}
    if match_labels:
        out["matchLabels"] = match_labels
    if expressions:
        out["matchExpressions"] = [{k: v for k, v in e.items() if v != []} for e in expressions]
    return out


def selector_text(selector: Any) -> str:
    """A metav1.LabelSelector as our selector string (what `kubectl get -l` would take)."""
    if not isinstance(selector, dict):
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key", ""), e.get("operator", ""), e.get("values") or []
        if op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        elif op in ("In", "NotIn"):
            parts.append(f"{key} {op.lower()} ({','.join(values)})")
    return ",".join(parts)
