"""Values on the wire: JSON-shaped `google.protobuf.Value`, with ints and bytes kept faithful."""

from __future__ import annotations

import enum
import uuid

import pytest

from jumpstarter import values


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        7,
        -3,
        2**53,
        1.5,
        -0.25,
        "",
        "text",
        [],
        [1, "a", None],
        {},
        {"a": {"b": [1, 2.5]}},
    ],
)
def test_round_trip_keeps_json_values(value):
    decoded = values.decode(values.encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_integers_come_back_as_int_and_fractions_as_float():
    assert type(values.decode(values.encode(42))) is int
    assert type(values.decode(values.encode(42.5))) is float


def test_integer_beyond_double_precision_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        values.encode(2**53 + 1)


def test_bytes_travel_as_base64_text():
    wire = values.encode(b"\x00\xffabc")
    assert wire.WhichOneof("kind") == "string_value"
    assert values.b64decode(values.decode(wire)) == b"\x00\xffabc"


def test_empty_containers_keep_their_kind():
    assert values.encode({}).WhichOneof("kind") == "struct_value"
    assert values.encode([]).WhichOneof("kind") == "list_value"


def test_enum_uuid_and_tuple_are_converted():
    class Color(enum.Enum):
        RED = "red"

    u = uuid.uuid4()
    assert values.decode(values.encode([Color.RED, u, (1, 2)])) == ["red", str(u), [1, 2]]


def test_unsupported_objects_and_keys_are_clear_errors():
    with pytest.raises(ValueError, match="cannot send a object"):
        values.encode(object())
    with pytest.raises(ValueError, match="keys must be strings"):
        values.encode({1: "x"})


def test_bad_base64_is_a_value_error():
    with pytest.raises(ValueError, match="expected bytes"):
        values.b64decode("not base64!!")
