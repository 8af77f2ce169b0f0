"""The serial driver with the fake board on a pty, behind a real exporterd and an HTTP power switch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

import jumpstarter
from jumpstarter.demo.lab import DemoLab, wait_for
from jumpstarter.errors import JumpstarterError

from .conftest import CLI, PY, exporter_config, read_until

BANNER = "Welcome to Jumpstarter demo board!"


def fresh_boot(board) -> None:  # type: ignore[no-untyped-def]
    """Power-cycle the board so it prints its boot log again (no pause needed on the fake board)."""
    board.power.off()
    board.power.on()


def test_two_clients_attached_at_once_both_see_the_boot_banner(shared_lab):
    with jumpstarter.connect(shared_lab.socket) as first, jumpstarter.connect(shared_lab.socket) as second:
        with first.serial.console() as one, second.serial.console() as two:
            fresh_boot(first)

            one.expect("login:", timeout=10)
            two.expect("login:", timeout=10)

            assert BANNER in one.before
            assert BANNER in two.before


def test_keystrokes_from_a_client_reach_the_board(shared_lab):
    with jumpstarter.connect(shared_lab.socket) as board, board.serial.console() as console:
        fresh_boot(board)
        console.expect("login:", timeout=10)

        console.sendline("root")
        console.expect("root@demo:~# ", timeout=10)
        console.sendline("uname -a")
        console.expect(re.compile(r"Linux demo \S+ .*GNU/Linux"), timeout=10)

        assert console.after.startswith("Linux demo 6.1.0-demo")


def test_keystrokes_from_one_client_show_their_output_to_the_other(shared_lab):
    with jumpstarter.connect(shared_lab.socket) as typist, jumpstarter.connect(shared_lab.socket) as viewer:
        with typist.serial.console() as keyboard, viewer.serial.console() as screen:
            fresh_boot(typist)
            keyboard.expect("login:", timeout=10)
            keyboard.sendline("root")
            keyboard.expect("# ", timeout=10)

            keyboard.sendline("echo shared-screen")

            screen.expect("\r\nshared-screen\r\n", timeout=10)


def test_serial_pipe_sends_piped_stdin_and_prints_the_console_output(shared_lab, cli_env, processes):
    with jumpstarter.connect(shared_lab.socket) as board, board.serial.console() as console:
        fresh_boot(board)
        console.expect("login:", timeout=10)
        pipe = subprocess.Popen(
            [*CLI, "--host", shared_lab.socket, "serial", "pipe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=cli_env,
        )
        processes.append(pipe)
        assert pipe.stdin is not None
        pipe.stdin.write(b"root\nuname -a\n")
        pipe.stdin.close()

        output = read_until(pipe.stdout, "GNU/Linux", timeout=10)

        assert "root@demo:~# " in output
        assert "Linux demo 6.1.0-demo" in output
        console.expect("GNU/Linux", timeout=10)  # the board really ran it: other viewers saw it too


def test_exporterd_keeps_serving_after_a_console_client_is_killed(shared_lab, processes):
    script = textwrap.dedent("""
        import sys, jumpstarter
        with jumpstarter.connect(sys.argv[1]) as board, board.serial.open() as stream:
            print("attached", flush=True)
            for data in stream:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
    """)
    client = subprocess.Popen(
        [PY, "-c", script, shared_lab.socket], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    processes.append(client)
    read_until(client.stdout, "attached", timeout=10)
    with jumpstarter.connect(shared_lab.socket) as board:
        fresh_boot(board)
        read_until(client.stdout, "Starting kernel", timeout=10)  # mid-boot-log

        client.kill()
        client.wait()

        with board.serial.console() as console:
            fresh_boot(board)
            console.expect("login:", timeout=10)
            assert BANNER in console.before
    assert shared_lab.exporter is not None and shared_lab.exporter.poll() is None


def test_serial_device_that_disappears_and_returns_is_reopened(demo_lab, processes):
    def exporter_log() -> str:
        with open(demo_lab.exporter_log, errors="replace") as handle:
            return handle.read()

    def opened_count() -> int:
        return exporter_log().count("serial port open")

    wait_for(lambda: opened_count() == 1, 10, "first open of the serial port", demo_lab.exporter)
    demo_lab.stop_process(demo_lab.board)  # the USB adapter is unplugged...
    wait_for(lambda: "serial port closed" in exporter_log(), 10, "exporter noticing", demo_lab.exporter)
    with jumpstarter.connect(demo_lab.socket) as board:
        with pytest.raises(ConnectionError, match="not present"):
            board.serial.open().close()

    port_file = demo_lab.port_file + ".2"
    replacement = subprocess.Popen(  # ...and plugged in again: same path, same switch address
        [
            sys.executable,
            "-m",
            "jumpstarter.demo.fakeboard",
            "--link",
            demo_lab.tty,
            "--http",
            f"127.0.0.1:{demo_lab.port}",
            "--port-file",
            port_file,
            "--boot-delay",
            "0.01",
        ],
        stdin=subprocess.DEVNULL,
    )
    processes.append(replacement)
    wait_for(lambda: os.path.exists(port_file), 10, "replacement board", replacement)
    wait_for(lambda: opened_count() == 2, 10, "exporter reopening the serial port", demo_lab.exporter)

    with jumpstarter.connect(demo_lab.socket) as board, board.serial.console() as console:
        board.power.on()
        console.expect("login:", timeout=10)
        assert BANNER in console.before


def test_missing_serial_device_gives_a_clear_error_and_other_drivers_keep_working(exporterd, workdir, cli):
    device = os.path.join(workdir, "ttyUSB-unplugged")
    flag = os.path.join(workdir, "powered")
    exporter = exporterd.start(
        exporter_config(f"""
        serial:
          type: serial
          config: {{url: {device}}}
        power:
          type: power.command
          config: {{on: touch {flag}, off: rm {flag}}}
    """)
    )

    with jumpstarter.connect(exporter.socket) as board:
        with pytest.raises(JumpstarterError, match=re.escape(device)):
            board.serial.open().close()
        with pytest.raises(JumpstarterError, match=re.escape(device)):
            board.serial.console().close()
    piped = cli("--host", exporter.socket, "serial", "pipe", "--no-input")
    power = cli("--host", exporter.socket, "power", "on")

    assert piped.returncode == 1
    assert device in piped.stderr and "not present" in piped.stderr
    assert "Traceback" not in piped.stderr
    assert power.returncode == 0, power.stderr
    assert os.path.exists(flag)
    assert exporter.process.poll() is None


def test_demo_lab_switch_reports_power_state_through_the_exporter(shared_lab):
    with jumpstarter.connect(shared_lab.socket) as board:
        board.power.on()
        assert board.power.call("is_on") is True
        board.power.off()
        assert board.power.call("is_on") is False


@pytest.fixture(autouse=True)
def _board_off_afterwards(request):  # type: ignore[no-untyped-def]
    """Leave the shared board powered off so the next test's boot log starts fresh."""
    yield
    if "shared_lab" in request.fixturenames:
        lab: DemoLab = request.getfixturevalue("shared_lab")
        with jumpstarter.connect(lab.socket) as board:
            board.power.off()
