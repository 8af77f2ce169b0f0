"""A lab host's exporterds run as an unprivileged user, and board users see the status without supervisord.

Real processes: supervisord (root, as under jumpstarter-lab.service) starts the
exporterds from the include `jumpstarter lab render` wrote; they must run as the
inventory's user (`nobody` here: the tests run as root), and so must every
command a board user triggers through them. A board user (a uid in the lab
user's group, not root) cannot reach supervisord's control socket but reads
`jumpstarter lab status` from the snapshot the status listener keeps.
"""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import jumpstarter
from jumpstarter.demo.lab import wait_for
from tests.harness.sandbox import LabSandbox

BOARD_USER_UID = 65533  # a uid with no passwd entry: a board user in the lab group, nothing more


def uids(pid: int) -> list[int]:
    """The real, effective, saved and filesystem uids of a process."""
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith("Uid:"))
    return [int(v) for v in line.split()[1:]]


@pytest.fixture
def lab() -> Iterator[LabSandbox]:
    with LabSandbox() as sandbox:
        out = os.path.join(sandbox.directory, "out")
        os.mkdir(out)
        os.chown(out, sandbox.uid, -1)  # where the board's power command may write
        sandbox.write_inventory(
            f"""
            boards:
              - name: relay
                export:
                  power:
                    type: power.command
                    config: {{on: 'id -u > {out}/on-uid', off: 'true'}}
            """
        )
        sandbox.start()
        sandbox.wait_serving("relay", 15)
        yield sandbox


def snapshot_state(lab: LabSandbox, program: str) -> str:
    """The program's state in the status snapshot ("" while there is none)."""
    try:
        document = json.loads(Path(lab.status_file).read_text())
    except (FileNotFoundError, ValueError):
        return ""
    return next((p["state"] for p in document["processes"] if p["name"] == program), "")


def as_board_user(
    lab: LabSandbox, *args: str, groups: list[int] | None = None
) -> subprocess.CompletedProcess[str]:
    """`jumpstarter lab ARGS` as a board user: not root, a member of the lab user's group."""
    gid = os.stat(lab.socket_dir).st_gid
    return subprocess.run(
        [
            lab.python,
            "-m",
            "jumpstarter.lab.cli",
            "lab",
            *args,
            "--inventory",
            lab.inventory,
            "--supervisor",
            lab.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        user=BOARD_USER_UID,
        group=BOARD_USER_UID,
        extra_groups=[gid] if groups is None else groups,
    )


def test_exporterd_and_the_commands_it_runs_are_not_root(lab):
    assert lab.uid != 0
    pid = lab.pid("relay")
    assert pid and uids(pid) == [lab.uid] * 4, f"exporterd runs with uids {uids(pid)}"
    with jumpstarter.connect(lab.socket("relay")) as board:
        board.power.on()
    with open(os.path.join(lab.directory, "out", "on-uid")) as handle:
        assert int(handle.read()) == lab.uid, "the board's power command ran as another user"
    info = os.stat(lab.socket("relay"))
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o660, lab.uid)
    directory = os.stat(lab.socket_dir)
    assert (stat.S_IMODE(directory.st_mode), directory.st_uid) == (0o750, lab.uid)


def test_a_board_user_reads_the_status_but_cannot_reach_supervisord(lab):
    control = lab.url[len("unix://") :]
    info = os.stat(control)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o700)
    wait_for(lambda: snapshot_state(lab, "board-relay") == "RUNNING", 15, "relay RUNNING in the snapshot")

    result = as_board_user(lab, "status")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["relay"][1] == "running" and rows["relay"][4] == "answers", result.stdout
    assert lab.status_file in result.stderr  # says where the states came from
    as_json = as_board_user(lab, "status", "-o", "json")  # for scripts: the same rows as data
    assert as_json.returncode == 0, as_json.stderr
    (relay,) = [b for b in json.loads(as_json.stdout) if b["name"] == "relay"]
    assert (relay["state"], relay["answer"]) == ("running", "answers"), as_json.stdout

    stopped = subprocess.run(
        [lab.python, "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({control!r})"],
        capture_output=True,
        text=True,
        user=BOARD_USER_UID,
        group=BOARD_USER_UID,
        extra_groups=[0, os.stat(lab.socket_dir).st_gid],  # even a member of the socket's group
        cwd="/",
    )
    assert "PermissionError" in stopped.stderr, stopped.stderr
    assert lab.state("relay")[0] == "RUNNING"


def test_someone_outside_the_lab_group_reads_no_status(lab):
    wait_for(lambda: os.path.exists(lab.status_file), 15, "the status snapshot")
    result = as_board_user(lab, "status", groups=[])
    assert result.returncode == 1
    assert "no permission to read the lab status" in result.stderr
    group = grp.getgrgid(os.stat(lab.status_file).st_gid).gr_name  # the file's own group, named
    assert f"usermod -aG {group} $USER" in result.stderr, result.stderr
