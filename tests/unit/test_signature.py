"""Fitting wire arguments to exported method signatures."""

from __future__ import annotations

import pytest

from jumpstarter.driver.signature import Binder


def make(fn):
    return Binder(fn, f"Drv.{fn.__name__}")


def test_arity_errors_name_the_method_and_its_parameters():
    def set_level(self, level: int, ramp: float = 0.0): ...

    binder = make(set_level)
    with pytest.raises(ValueError, match=r"Drv.set_level\(level, ramp\) takes 1 to 2 argument\(s\), 0 given"):
        binder.bind([])
    with pytest.raises(ValueError, match="3 given"):
        binder.bind([1, 2, 3])


def test_annotations_convert_wire_values():
    def f(self, n: int, x: float, flag: bool, data: bytes, name: str): ...

    assert make(f).bind([3, 2, True, "AAE=", "a"]) == [3, 2.0, True, b"\x00\x01", "a"]
    assert type(make(f).bind([3, 2, True, "", "a"])[1]) is float


@pytest.mark.parametrize(
    "args, message",
    [
        ([2.5, 1, True, "", "a"], "expected an integer"),
        ([1, "x", True, "", "a"], "expected a number"),
        ([1, 1, 1, "", "a"], "expected true or false"),
        ([1, 1, True, 5, "a"], "expected bytes"),
        ([1, 1, True, "", 3], "expected text"),
    ],
)
def test_wrong_types_are_rejected_with_the_argument_name(args, message):
    def f(self, n: int, x: float, flag: bool, data: bytes, name: str): ...

    with pytest.raises(ValueError, match=message):
        make(f).bind(args)


def test_optional_list_and_varargs():
    def f(self, ids: list[int], limit: int | None = None, *rest: str): ...

    assert make(f).bind([[1.0, 2]]) == [[1, 2]]
    assert make(f).bind([[1], None, "a", "b"]) == [[1], None, "a", "b"]
    with pytest.raises(ValueError, match="expected a list"):
        make(f).bind(["nope"])


def test_unannotated_parameters_pass_through():
    def f(self, anything): ...

    assert make(f).bind([{"k": [1]}]) == [{"k": [1]}]
