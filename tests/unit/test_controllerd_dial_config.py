"""controllerd.yaml's Dial limits: defaults, values, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from controllerd.config import load
from jumpstarter.errors import ConfigError


def test_dial_limits_have_defaults_and_can_be_set(tmp_path: Path) -> None:
    path = tmp_path / "controllerd.yaml"
    path.write_text("listen: 127.0.0.1:8082\n")
    config = load(str(path))
    assert (config.dial_rate, config.dial_burst, config.max_pending_dials) == (5.0, 30, 8)
    path.write_text("listen: 127.0.0.1:8082\ndial_rate: 0.5\ndial_burst: 3\nmax_pending_dials: 2\n")
    config = load(str(path))
    assert (config.dial_rate, config.dial_burst, config.max_pending_dials) == (0.5, 3, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dial_rate: 0\n", ":1: dial_rate: expected a positive number"),
        ("dial_burst: 2.5\n", ":1: dial_burst: expected a positive whole number"),
        ("max_pending_dials: 0\n", ":1: max_pending_dials: expected a positive whole number"),
    ],
)
def test_bad_dial_limits_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "controllerd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load(str(path))
    assert f"{path}{expected}" in str(error.value)
