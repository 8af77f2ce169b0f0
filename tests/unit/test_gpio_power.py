"""power.gpio over real gRPC, against tests/fakes/gpiod: a stand-in for libgpiod's v2 binding.

The kernel's gpio-sim (configfs) is not available in this container (no /sys/kernel/config, no
modules), so the chip is the stand-in's: same `request_lines`/`set_value`/`Value` API, the physical
level of each line recorded where these tests read it.
"""

from __future__ import annotations

import doctest
import os
import sys
import time

import pytest

from jumpstarter.config.exporter import load_exporter_config
from jumpstarter.driver.serve import serve
from jumpstarter.errors import ConfigError, DriverUnavailable

FAKES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakes")


@pytest.fixture
def chip(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """The stand-in binding on sys.path with /dev/gpiochip0 (54 lines, GPIO17 named); yields a state reader."""
    monkeypatch.syspath_prepend(FAKES)
    monkeypatch.delitem(sys.modules, "gpiod", raising=False)
    monkeypatch.delitem(sys.modules, "gpiod.line", raising=False)
    state = str(tmp_path / "gpiochips.json")
    monkeypatch.setenv("JUMPSTARTER_FAKE_GPIOD", state)
    import gpiod

    gpiod.new_chip(state, names={"GPIO17": 17})
    yield lambda: gpiod.chip_state(state)
    monkeypatch.delitem(sys.modules, "gpiod", raising=False)
    monkeypatch.delitem(sys.modules, "gpiod.line", raising=False)


def power(**config):  # type: ignore[no-untyped-def]
    from jumpstarter.drivers.gpio import GpioPower

    return GpioPower(**config)


def test_gpio_power_docstring_example_runs_over_real_grpc(chip):
    from jumpstarter.drivers.gpio import GpioPower

    tests = [t for t in doctest.DocTestFinder(recurse=False).find(GpioPower, "GpioPower") if t.examples]
    assert tests
    for test in tests:
        test.globs["GpioPower"] = GpioPower
        output: list[str] = []
        result = doctest.DocTestRunner().run(test, out=output.append)
        assert result.failed == 0 and result.attempted == len(test.examples), "".join(output)


@pytest.mark.parametrize(("active_low", "on_level", "off_level"), [(False, 1, 0), (True, 0, 1)])
def test_on_and_off_drive_the_physical_level_that_active_low_asks_for(chip, active_low, on_level, off_level):
    with serve(power(line=17, active_low=active_low)) as client:
        client.on()
        assert chip()["levels"]["17"] == on_level
        assert client.call("is_on") is True
        client.off()
        assert chip()["levels"]["17"] == off_level
        assert client.call("is_on") is False
    assert [level for _, _, level in chip()["timeline"]] == [
        on_level,
        off_level,
        off_level,
    ]  # last: safe state


def test_requesting_the_line_starts_at_the_requested_value_without_a_glitch(chip):
    with serve(power(line="GPIO17", active_low=True)) as client:
        client.on()
    timeline = chip()["timeline"]
    assert timeline[0][1:] == [17, 0]  # the very first level the line ever had is "on"


def test_cycle_keeps_the_board_off_at_least_off_delay_and_on_returns_after_on_delay(chip):
    with serve(power(line=17, off_delay=0.4, on_delay=0.3)) as client:
        client.on()
        client.cycle(wait=0)
        before_last_on = time.time()
        client.on()
        returned = time.time()
    (_, _, on1), (off_at, _, off), (on_at, _, on2), (last_at, _, on3) = chip()["timeline"][:4]
    assert (on1, off, on2, on3) == (1, 0, 1, 1)
    assert on_at - off_at >= 0.4  # off() waited off_delay before cycle() switched on again
    assert returned - last_at >= 0.3 and last_at >= before_last_on  # on() returned only after on_delay


def test_session_end_leaves_the_safe_state_and_releases_the_line(chip):
    with serve(power(line=17)) as client:
        client.on()
        assert chip()["holders"] == {"17": os.getpid()}
    assert chip()["levels"]["17"] == 0
    assert chip()["holders"] == {}
    with serve(power(line=17, safe_state="on")) as client:  # the line is free again: a new session gets it
        client.off()
    assert chip()["levels"]["17"] == 1


def test_a_line_held_by_another_program_is_a_clear_error(chip):
    import gpiod

    with gpiod.request_lines("/dev/gpiochip0", consumer="other", config={17: gpiod.LineSettings()}):
        with serve(power(line=17)) as client, pytest.raises(DriverUnavailable) as busy:
            client.on()
    assert "cannot request line 17 of /dev/gpiochip0: Device or resource busy" in str(busy.value)
    assert "gpioinfo" in str(busy.value)


def test_unknown_chip_and_unknown_line_name_are_clear_errors(chip):
    with (
        serve(power(line=3, chip="/dev/gpiochip9")) as client,
        pytest.raises(DriverUnavailable, match="No such file"),
    ):
        client.on()
    with serve(power(line="GPIO99")) as client, pytest.raises(ValueError, match="unknown line name: GPIO99"):
        client.on()


def load(tmp_path, config: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "exporter.yaml"
    path.write_text(f"export:\n  power:\n    type: power.gpio\n    config:\n      {config}\n")
    return load_exporter_config(str(path)).build().children["power"]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("chip: /dev/gpiochip0", "power.gpio needs the setting 'line'"),
        ("line: -1", "line: expected a line offset (0-1023) or a line name"),
        ("line: 'GPIO 17'", "line: expected a line offset"),
        ("{line: 17, active_low: 'yes'}", "active_low: expected true or false"),
        ("{line: 17, off_delay: -2}", "off_delay: expected seconds from 0 to 600"),
        ("{line: 17, safe_state: maybe}", "safe_state: expected off or on"),
        ("{line: 17, chip: gpiochip0}", "chip: expected a GPIO chip device under /dev/"),
    ],
)
def test_bad_gpio_config_is_refused_at_load_with_file_and_line(chip, tmp_path, config, problem):
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, config)
    assert f"{tmp_path / 'exporter.yaml'}:" in str(refused.value)
    assert problem in str(refused.value), str(refused.value)


def test_without_the_binding_the_config_fails_at_load_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpiod", None)  # `import gpiod` raises ImportError
    with pytest.raises(
        ConfigError, match=r"exporter.yaml:4: export.power.config: power.gpio: .*pip install 'gpiod>=2'"
    ):
        load(tmp_path, "line: 17")
