"""Python values <-> `google.protobuf.Value` (PROTOCOL.md §4).

The wire is JSON-shaped: numbers are doubles, binary travels as base64 text,
and there are no keyword arguments. Two rules make that pleasant in Python:

* decoding turns an integral double (|x| <= 2**53) back into an `int`, so an
  integer sent as an integer is an integer again on our side;
* the receiver's type annotations finish the job: a driver method declared
  `def write(self, data: bytes)` gets `bytes`, `timeout: float` gets a float
  (see `jumpstarter.driver.signature`).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from google.protobuf.struct_pb2 import NULL_VALUE, ListValue, Struct, Value

MAX_SAFE_INT = 2**53


def encode(obj: Any) -> Value:
    """A `Value` holding `obj`; raises `ValueError` for what JSON cannot carry."""
    value = Value()
    _fill(value, obj)
    return value


def encode_into(value: Value, obj: Any) -> None:
    """Like `encode`, into a `Value` field of a message being built (no copy of the result)."""
    _fill(value, obj)


def _fill(value: Value, obj: Any) -> None:
    if obj is None:
        value.null_value = NULL_VALUE
    elif isinstance(obj, bool):
        value.bool_value = obj
    elif isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INT:
            raise ValueError(f"integer {obj} does not fit a double exactly; send it as a string")
        value.number_value = obj
    elif isinstance(obj, float):
        value.number_value = obj
    elif isinstance(obj, str):
        value.string_value = obj
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        value.string_value = base64.b64encode(bytes(obj)).decode("ascii")
    elif isinstance(obj, enum.Enum):
        _fill(value, obj.value)
    elif isinstance(obj, Mapping):
        value.struct_value.SetInParent()  # an empty mapping is still a mapping
        _fill_struct(value.struct_value, obj)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        value.list_value.SetInParent()
        _fill_list(value.list_value, obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        value.struct_value.SetInParent()
        _fill_struct(value.struct_value, dataclasses.asdict(obj))
    else:
        # UUID, Path, datetime and friends travel as their text form.
        if type(obj).__str__ is object.__str__:
            raise ValueError(f"cannot send a {type(obj).__name__} over the wire")
        value.string_value = str(obj)


def _fill_struct(struct: Struct, obj: Mapping[Any, Any]) -> None:
    for key, item in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"mapping keys must be strings on the wire, got {key!r}")
        _fill(struct.fields[key], item)


def _fill_list(lst: ListValue, obj: Any) -> None:
    for item in obj:
        _fill(lst.values.add(), item)


def decode(value: Value) -> Any:
    """The Python value held by `value` (integral numbers become `int`)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= MAX_SAFE_INT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: decode(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [decode(item) for item in value.list_value.values]
    return None


def b64decode(text: str) -> bytes:
    """Strict base64 for `bytes` arguments; a clear ValueError otherwise."""
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError("expected bytes (base64 text on the wire)") from exc
