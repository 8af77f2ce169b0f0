"""A small validator for CRD structural schemas (apiextensions.k8s.io/v1), for offline manifest tests.

It implements the subset our CRDs use, as the Kubernetes docs define it ("Specifying a structural
schema", "Validation"): type, properties, additionalProperties, items, required, enum, pattern,
min/maxLength, format date-time/int64, minimum, min/maxProperties, default, nullable, and
x-kubernetes-preserve-unknown-fields. Unknown fields are errors, as with kubectl's default strict
field validation (the API server would otherwise prune them silently). A schema using any keyword
outside the subset is refused, so nothing is ignored by accident. CEL rules
(x-kubernetes-validations) are not evaluated; `cel_rules` lists them so a test can count them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
CHECKED = {
    "type", "properties", "additionalProperties", "items", "required", "enum", "pattern", "minLength",
    "maxLength", "format", "minimum", "minProperties", "maxProperties", "default", "nullable",
    "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip
# Keywords that change only documentation, server-side-apply merging or CEL (not evaluated here).
NOT_VALIDATING = {
    "description",
    "x-kubernetes-map-type",
    "x-kubernetes-list-type",
    "x-kubernetes-validations",
}


def structural_problems(schema: dict[str, Any], where: str = "") -> list[str]:
    """Why this is not a structural schema we can check (empty when it is)."""
    problems = []
    unknown = set(schema) - CHECKED - NOT_VALIDATING
    if unknown:
        problems.append(f"{where or '.'}: keywords outside the checked subset: {sorted(unknown)}")
    if schema.get("type") not in TYPES and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{where or '.'}: every node needs a type, got {schema.get('type')!r}")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    for name, sub in schema.get("properties", {}).items():
        problems += structural_problems(sub, f"{where}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{where}.*")
    if "items" in schema:
        problems += structural_problems(schema["items"], f"{where}[]")
    for name in schema.get("required", []):
        if name not in schema.get("properties", {}):
            problems.append(f"{where}: required field {name!r} is not among the properties")
    return problems


def errors(schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
    """Every way `value` breaks `schema`; empty when it is valid."""
    here = where or "."
    if value is None:
        return [] if schema.get("nullable") else [f"{here}: null is not allowed"]
    kind = schema.get("type")
    if kind is not None and (
        isinstance(value, bool) and kind != "boolean" or not isinstance(value, TYPES[kind])
    ):
        return [f"{here}: expected {kind}, got {type(value).__name__}"]
    found: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{here}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        found += _string_errors(schema, value, here)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{here}: {value} is below the minimum {schema['minimum']}")
        if schema.get("format") == "int64" and not -(2**63) <= value < 2**63:
            found.append(f"{here}: {value} does not fit int64")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += errors(schema["items"], item, f"{where}[{index}]")
    if isinstance(value, dict):
        found += _object_errors(schema, value, where)
    return found


def cel_rules(schema: dict[str, Any]) -> list[str]:
    """The CEL rules anywhere in `schema` (declared for the API server; not evaluated here)."""
    rules = [rule["rule"] for rule in schema.get("x-kubernetes-validations", [])]
    children = list(schema.get("properties", {}).values())
    children += [
        schema[key] for key in ("items", "additionalProperties") if isinstance(schema.get(key), dict)
    ]
    for child in children:
        rules += cel_rules(child)
    return rules


def _string_errors(schema: dict[str, Any], value: str, here: str) -> list[str]:
    found = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        found.append(f"{here}: shorter than {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        found.append(f"{here}: longer than {schema['maxLength']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        found.append(f"{here}: {value!r} does not match {schema['pattern']}")
    if schema.get("format") == "date-time":
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            found.append(f"{here}: {value!r} is not an RFC 3339 date-time")
    return found


def _object_errors(schema: dict[str, Any], value: dict[str, Any], where: str) -> list[str]:
    found = []
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value and "default" not in properties.get(name, {}):  # the server defaults first
            found.append(f"{where}.{name}: required")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        found.append(f"{where or '.'}: more than {schema['maxProperties']} entries")
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        found.append(f"{where or '.'}: fewer than {schema['minProperties']} entries")
    extra = schema.get("additionalProperties")
    for name, item in value.items():
        if name in properties:
            found += errors(properties[name], item, f"{where}.{name}")
        elif isinstance(extra, dict):
            found += errors(extra, item, f"{where}.{name}")
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            found.append(f"{where}.{name}: unknown field")
    return found
