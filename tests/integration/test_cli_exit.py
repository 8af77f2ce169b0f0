"""The CLI process exits once its command is done, also while the board is power-cycled under it.

`jumpstarter serial expect` against a real exporterd serving the demo fake board, run
again and again while another client keeps power-cycling the board. A process that does
not exit within a generous bound hangs (e.g. a gRPC channel closed by the GC at interpreter
shutdown); every second run goes through tests/channel_audit.py, which reports the
channels the command left unclosed and the threads still running after it.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
from pathlib import Path

import pytest

import jumpstarter
from jumpstarter.demo.lab import DemoLab

from .conftest import CLI, PY, read_until

RUNS = 20
MIN_CYCLES = RUNS // 2  # the runs really overlap reboots (about 80 happen on an idle machine)
EXIT_BOUND = 90.0  # seconds; a healthy run takes about one, a hung one never ends
AUDIT = [PY, str(Path(__file__).resolve().parents[1] / "channel_audit.py")]
OUR_THREADS = ("console-reader", "logs", "upload", "jmp-")

pytestmark = pytest.mark.timeout(RUNS * EXIT_BOUND)


def keep_power_cycling(
    socket: str, stop: threading.Event, cycles: list[int], errors: list[BaseException]
) -> None:
    """Cycle the board, wait for its login prompt (it booted), cycle again, until `stop`.

    An error ends the cycling and lands in `errors`: the test fails on it instead of losing it."""
    try:
        with jumpstarter.connect(socket) as board, board.serial.console() as console:
            while not stop.is_set():
                board.power.off()
                board.power.on()
                console.expect("login:", timeout=30)
                cycles.append(1)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which asserts on it
        errors.append(exc)


def test_serial_expect_exits_every_time_while_the_board_is_power_cycled(demo_lab: DemoLab, cli_env):
    stop = threading.Event()
    cycles: list[int] = []
    errors: list[BaseException] = []
    cycler = threading.Thread(
        target=keep_power_cycling, args=(demo_lab.socket, stop, cycles, errors), daemon=True
    )
    cycler.start()
    try:
        for run in range(RUNS):
            audited = run % 2 == 1
            argv = [*(AUDIT if audited else CLI), "--host", demo_lab.socket, "--logs"]
            process = subprocess.Popen(
                [*argv, "serial", "expect", "login:", "-t", "60"],
                env={**cli_env, "PYTHONFAULTHANDLER": "1"},  # a hang below ends with every thread's stack
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                out, err = process.communicate(timeout=EXIT_BOUND)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGABRT)  # faulthandler prints where each thread hangs
                try:
                    out, err = process.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    out, err = process.communicate()
                raise AssertionError(
                    f"run {run}: `serial expect` did not exit; stderr: {err[-8000:]}"
                ) from None
            assert process.returncode == 0, f"run {run}: {err[-2000:]}"
            assert "login:" in out
            if audited:
                report = json.loads(err.strip().splitlines()[-1])
                assert report["unclosed"] == [], f"run {run}: channels left to the GC: {report}"
                threads = report["threads"]
                assert not [t for t in threads if not t["daemon"]], f"run {run}: {threads}"
                assert not [t for t in threads if t["name"].startswith(OUR_THREADS)], f"run {run}: {threads}"
    finally:
        stop.set()
        cycler.join(timeout=60)
    assert not cycler.is_alive(), "the power-cycling thread did not stop"
    assert not errors, f"power cycling failed: {errors!r}"
    print(f"{len(cycles)} power cycles during {RUNS} runs")
    assert len(cycles) >= MIN_CYCLES, f"only {len(cycles)} power cycles during the {RUNS} runs"


def test_interactive_console_shows_the_board_and_exits_when_the_user_detaches(demo_lab: DemoLab, cli_env):
    """`serial console` on a terminal: output shows, Ctrl-B three times leaves, the process exits at once."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*CLI, "--host", demo_lab.socket, "serial", "console"],
        env=cli_env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    screen = os.fdopen(controller, "rb", buffering=0)
    try:
        seen = read_until(screen, "console attached", 60)
        with jumpstarter.connect(demo_lab.socket) as board:
            board.power.off()
            board.power.on()
        seen += read_until(screen, "login:", 30)
        os.write(controller, b"\x02\x02\x02")
        seen += read_until(screen, "[console detached]", 30)
        assert process.wait(timeout=EXIT_BOUND) == 0
        assert "[console closed by the exporter]" not in seen, seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        screen.close()
