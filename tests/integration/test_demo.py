"""`jumpstarter demo`: the whole lab, start to finish, leaving nothing behind."""

from __future__ import annotations

import os


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_demo_prints_the_boot_banner_and_leaves_no_processes_or_sockets(cli, workdir):
    private_tmp = os.path.join(workdir, "tmp")
    os.makedirs(private_tmp)

    result = cli("demo", env={"TMPDIR": private_tmp}, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "| Welcome to Jumpstarter demo board!" in result.stdout
    assert "Linux demo 6.1.0-demo" in result.stdout
    assert private_tmp in result.stdout  # the lab really lived in our private TMPDIR...
    assert os.listdir(private_tmp) == []  # ...and its socket, pty link and files are gone
    assert processes_mentioning(private_tmp) == []
