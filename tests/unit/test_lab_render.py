"""The supervisord include rendered from an inventory, and the status table."""

from __future__ import annotations

import configparser
import os
import textwrap

import pytest

from jumpstarter.config.inventory import load_inventory
from jumpstarter.lab.devices import ListLookup
from jumpstarter.lab.render import render, write_atomic
from jumpstarter.lab.status import board_statuses, format_statuses
from jumpstarter.lab.supervisor import ProcessInfo

BOARDS = """\
log_dir: /var/log/js
boards:
  - name: rpi4-01
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "A10"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
  - name: rpi4-02
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "A20"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
  - name: sim
    export:
      power: {type: power.mock}
"""


def load(tmp_path, text: str = BOARDS, name: str = "inventory.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_inventory(str(path))


def parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_three_boards_render_to_three_programs_and_coldplug(tmp_path):
    inventory = load(tmp_path)
    conf = parse(render(inventory, "unix:///run/js/s.sock"))
    assert conf.sections() == [
        "program:board-rpi4-01",
        "program:board-rpi4-02",
        "program:board-sim",
        "program:jumpstarter-coldplug",
        "eventlistener:jumpstarter-status",
    ]
    board = conf["program:board-rpi4-01"]
    assert f"--inventory {inventory.path} --board rpi4-01" in board["command"]
    assert board["command"].split()[0].endswith(("jumpstarter-exporterd", "python", "python3"))
    assert (board["autostart"], board["autorestart"], board["stopsignal"]) == ("false", "true", "TERM")
    assert board["stdout_logfile"] == "/var/log/js/board-rpi4-01.log"
    assert conf["program:board-sim"]["autostart"] == "true"  # no match: always runs
    coldplug = conf["program:jumpstarter-coldplug"]
    assert "--coldplug" in coldplug["command"] and "--supervisor unix:///run/js/s.sock" in coldplug["command"]
    assert (coldplug["autostart"], coldplug["autorestart"], coldplug["startsecs"]) == ("true", "false", "0")
    # Exporterds run as the lab user (default jumpstarter); coldplug and the status listener
    # stay root: they talk to supervisord's root-only control socket.
    for name in ("rpi4-01", "rpi4-02", "sim"):
        assert (conf[f"program:board-{name}"]["user"], conf[f"program:board-{name}"]["umask"]) == (
            "jumpstarter",
            "027",
        )
    assert "user" not in coldplug
    status = conf["eventlistener:jumpstarter-status"]
    assert "user" not in status and status["events"] == "PROCESS_STATE,TICK_60"
    assert "--output /run/jumpstarter/lab-status.json --user jumpstarter" in status["command"]


def test_the_inventory_names_the_user_and_render_refuses_a_missing_or_root_user(tmp_path, capsys):
    from jumpstarter.errors import ConfigError
    from jumpstarter.lab.account import lab_account
    from jumpstarter.lab.cli import main

    inventory = load(tmp_path, "user: nobody\n" + BOARDS)
    assert parse(render(inventory, "unix:///s"))["program:board-sim"]["user"] == "nobody"
    assert lab_account(inventory).uid == 65534
    for user, problem in (("no-such-js-user", "does not exist"), ("root", "is root")):
        inventory = load(tmp_path, f"user: {user}\n" + BOARDS)
        with pytest.raises(ConfigError, match=problem):
            lab_account(inventory)
        output = tmp_path / f"{user}.conf"
        assert main(["lab", "render", "--inventory", inventory.path, "--output", str(output)]) == 2
        assert not output.exists()  # no include: supervisord keeps what it had, never root exporterds
    assert "sudo scripts/install --lab-host" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="user: expected a user name"):
        load(tmp_path, "user: Bad User\n" + BOARDS)


def test_a_changed_board_changes_only_its_own_section(tmp_path):
    before = parse(render(load(tmp_path), "unix:///s"))
    after = parse(
        render(load(tmp_path, BOARDS.replace("power.mock}", "power.mock, description: x}")), "unix:///s")
    )
    assert dict(before["program:board-rpi4-01"]) == dict(after["program:board-rpi4-01"])
    assert before["program:board-sim"]["environment"] != after["program:board-sim"]["environment"]


def supervisord_programs(tmp_path, text: str) -> dict:
    """The program configs supervisord itself reads from the include (its own parser)."""
    from supervisor.options import ServerOptions

    include = tmp_path / "boards.conf"
    include.write_text(text)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisord]\nlogfile={tmp_path}/supervisord.log\n[include]\nfiles={include}\n")
    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    return {group.name: group.process_configs[0] for group in options.process_group_configs}


def test_supervisord_reads_the_include_with_paths_holding_percent_signs_and_spaces(tmp_path):
    import shlex

    directory = tmp_path / "50% lab"
    directory.mkdir()
    inventory = load(
        directory, f"user: nobody\nlog_dir: {tmp_path}\n" + BOARDS.replace("log_dir: /var/log/js\n", "")
    )
    programs = supervisord_programs(tmp_path, render(inventory, "unix:///s"))
    assert sorted(programs) == [
        "board-rpi4-01",
        "board-rpi4-02",
        "board-sim",
        "jumpstarter-coldplug",
        "jumpstarter-status",
    ]
    assert (programs["board-sim"].uid, programs["board-sim"].umask) == (65534, 0o027)
    assert programs["jumpstarter-coldplug"].uid is None
    sim = programs["board-sim"]
    assert shlex.split(sim.command)[1:5] == ["--inventory", inventory.path, "--board", "sim"]
    assert sim.environment["JUMPSTARTER_BOARD_DIGEST"] == inventory.digests["sim"]
    assert (sim.autostart, programs["board-rpi4-01"].autostart) == (True, False)
    assert (
        sim.stdout_logfile == f"{tmp_path}/board-sim.log" and sim.stdout_logfile_maxbytes == 5 * 1024 * 1024
    )


def test_write_atomic_reports_whether_anything_changed(tmp_path):
    path = str(tmp_path / "d" / "boards.conf")
    assert write_atomic(path, "a\n") is True
    assert write_atomic(path, "a\n") is False
    assert (tmp_path / "d" / "boards.conf").read_text() == "a\n"
    assert os.listdir(tmp_path / "d") == ["boards.conf"]


def test_status_names_each_state(tmp_path):
    inventory = load(tmp_path, "device_dir: " + str(tmp_path / "dev") + "\n" + BOARDS)
    processes = {
        "board-rpi4-01": ProcessInfo("board-rpi4-01", "RUNNING", 42, "pid 42, uptime 0:00:05"),
        "board-rpi4-02": ProcessInfo("board-rpi4-02", "STOPPED", 0, "Not started"),
        "board-sim": ProcessInfo("board-sim", "FATAL", 0, "Exited too quickly"),
    }
    answers = {inventory.socket_path("rpi4-01"): "answers"}
    statuses = board_statuses(inventory, processes, ListLookup(), lambda p: answers.get(p, "no socket"))
    assert [(s.name, s.state, s.pid, s.answer) for s in statuses] == [
        ("rpi4-01", "running", 42, "answers"),
        ("rpi4-02", "waiting for device", 0, "no socket"),
        ("sim", "fatal", 0, "no socket"),
    ]
    assert "board-sim.log" in statuses[2].detail
    table = format_statuses(statuses).splitlines()
    assert table[0].split() == ["BOARD", "STATE", "PID", "SOCKET", "GETREPORT"]
    assert "missing: serial" in table[2]
    missing = board_statuses(inventory, {}, ListLookup(), lambda p: "no socket")
    assert {s.state for s in missing} == {"not loaded"}
