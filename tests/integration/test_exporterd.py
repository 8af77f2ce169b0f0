"""exporterd as a process: its socket, signals, config errors, reload, surviving clients."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import textwrap

import pytest

import jumpstarter
from jumpstarter.demo.lab import socket_answers, wait_for
from jumpstarter.errors import JumpstarterError

from .conftest import EXPORTERD, PY, exporter_config, read_until

MOCK_BOARD = exporter_config("""
    power:
      type: power.mock
    echo:
      type: network.echo
""")


def driver_names(socket_path: str) -> set[str]:
    with jumpstarter.connect(socket_path) as board:
        return set(board.children)


def echo_round_trip(socket_path: str, payload: bytes = b"still serving") -> bytes:
    with jumpstarter.connect(socket_path) as board, board.echo.open() as stream:
        stream.send(payload)
        received = b""
        while len(received) < len(payload):
            chunk = stream.receive()
            assert chunk, "echo stream ended early"
            received += chunk
        return received


def test_socket_is_created_with_mode_0660_in_a_new_directory(exporterd, workdir):
    path = os.path.join(workdir, "run", "nested", "board.sock")

    exporter = exporterd.start(MOCK_BOARD, socket_path=path)

    mode = os.stat(exporter.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_removes_the_socket_and_exits_0(exporterd, sig):
    exporter = exporterd.start(MOCK_BOARD)

    code = exporter.stop(sig)

    assert code == 0, exporter.log()[-2000:]
    assert not os.path.exists(exporter.socket)


@pytest.mark.parametrize(
    ("name", "text", "line", "key_and_problem"),
    [
        ("bad-yaml", "export:\n  power: [\n", None, r".+"),
        (
            "unknown-type",
            exporter_config("power:\n  type: power.teleport\n"),
            6,
            r"export\.power\.type: unknown driver type 'power\.teleport' \(known: .*power\.mock.*\)",
        ),
        (
            "unknown-setting",
            exporter_config("power:\n  type: power.mock\n  config:\n    volts: 5\n"),
            8,
            r"export\.power\.config\.volts: unknown setting for power\.mock",
        ),
        (
            "unknown-node-key",
            exporter_config("power:\n  type: power.mock\n  colour: red\n"),
            7,
            r"export\.power\.colour: unknown key",
        ),
    ],
)
def test_malformed_config_exits_nonzero_with_one_file_line_message_and_no_socket(
    workdir, name, text, line, key_and_problem
):
    config = os.path.join(workdir, f"{name}.yaml")
    with open(config, "w") as handle:
        handle.write(text)
    path = os.path.join(workdir, "boards", "board.sock")

    result = subprocess.run(
        [*EXPORTERD, "--config", config, "--socket", path],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    expected_line = str(line) if line else r"\d+"
    assert re.search(rf"{re.escape(config)}:{expected_line}: {key_and_problem}", lines[0]), lines[0]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(path)


def test_check_accepts_a_valid_config_and_rejects_a_bad_one_without_serving(workdir):
    good = os.path.join(workdir, "good.yaml")
    bad = os.path.join(workdir, "bad.yaml")
    with open(good, "w") as handle:
        handle.write(MOCK_BOARD)
    with open(bad, "w") as handle:
        handle.write(exporter_config("power:\n  type: power.mock\n  config: {volts: 5}\n"))
    path = os.path.join(workdir, "boards", "board.sock")

    ok = subprocess.run(
        [*EXPORTERD, "--config", good, "--socket", path, "--check"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    failed = subprocess.run(
        [*EXPORTERD, "--config", bad, "--socket", path, "--check"], capture_output=True, text=True, timeout=20
    )

    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    assert failed.returncode != 0
    assert f"{bad}:7: export.power.config.volts" in failed.stderr
    assert not os.path.exists(path)


def test_sighup_reloads_the_config_and_get_report_shows_the_new_driver(exporterd):
    exporter = exporterd.start(MOCK_BOARD)
    assert driver_names(exporter.socket) == {"power", "echo"}
    with open(exporter.config, "w") as handle:
        handle.write(MOCK_BOARD + "  relay:\n    type: power.mock\n")

    exporter.process.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        try:
            return "relay" in driver_names(exporter.socket)
        except JumpstarterError:  # the socket is briefly gone while the tree is rebuilt
            return False

    wait_for(reloaded, 10, "reloaded exporterd", exporter.process)
    assert driver_names(exporter.socket) == {"power", "echo", "relay"}


def test_sighup_with_an_invalid_config_keeps_serving_the_old_tree(exporterd):
    exporter = exporterd.start(MOCK_BOARD)
    with open(exporter.config, "w") as handle:
        handle.write(exporter_config("power:\n  type: power.teleport\n"))

    exporter.process.send_signal(signal.SIGHUP)

    wait_for(lambda: "config reload failed" in exporter.log(), 10, "reload attempt", exporter.process)
    wait_for(lambda: socket_answers(exporter.socket), 10, "exporterd after reload", exporter.process)
    assert driver_names(exporter.socket) == {"power", "echo"}
    assert "power.teleport" in exporter.log()
    assert echo_round_trip(exporter.socket) == b"still serving"


ECHO_CLIENT = textwrap.dedent("""
    import sys, jumpstarter
    with jumpstarter.connect(sys.argv[1]) as board, board.echo.open() as stream:
        while True:
            stream.send(b"ping")
            assert stream.receive()
            print("streaming", flush=True)
""")


def test_exporterd_keeps_serving_after_a_client_is_killed_mid_stream(exporterd, processes):
    exporter = exporterd.start(MOCK_BOARD)
    client = subprocess.Popen(
        [PY, "-c", ECHO_CLIENT, exporter.socket], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    processes.append(client)
    read_until(client.stdout, "streaming\nstreaming\n", timeout=10)

    client.kill()
    client.wait()

    assert exporter.process.poll() is None
    assert echo_round_trip(exporter.socket) == b"still serving"
    with jumpstarter.connect(exporter.socket) as board:
        board.power.on()


def test_second_exporterd_on_a_live_socket_refuses_to_start_and_the_first_keeps_serving(exporterd):
    first = exporterd.start(MOCK_BOARD)
    intruder_config = MOCK_BOARD + "  intruder:\n    type: power.mock\n"

    second = exporterd.spawn(intruder_config, name="intruder", socket_path=first.socket)
    wait_for(lambda: second.process.poll() is not None or '"serving"' in second.log(), 15, "second exporterd")

    assert second.process.poll() is not None, "a second exporterd took over the live socket of the first"
    assert second.process.returncode != 0
    assert first.socket in second.log()
    assert driver_names(first.socket) == {"power", "echo"}


def test_unusable_socket_path_exits_nonzero_with_a_one_line_message(workdir):
    config = os.path.join(workdir, "board.yaml")
    with open(config, "w") as handle:
        handle.write(MOCK_BOARD)
    path = os.path.join(config, "board.sock")  # its "directory" is a regular file

    result = subprocess.run(
        [*EXPORTERD, "--config", config, "--socket", path],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert path in lines[0] or config in lines[0]
