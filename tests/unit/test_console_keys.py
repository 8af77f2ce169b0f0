"""The console's escape keys, the scrollback replay cut and console-log retention (no processes)."""

from __future__ import annotations

import os

import pytest

from jumpstarter.client.console import BREAK, DETACH, HELP, POWER_CYCLE, EscapeReader
from jumpstarter.drivers.console_log import ConsoleLog
from jumpstarter.drivers.serial import replay_tail


def test_escape_keys_split_across_reads_become_actions_and_the_rest_reaches_the_board():
    reader = EscapeReader()

    first = list(reader.feed(b"ls\r\x1d"))
    second = list(reader.feed(b"bpwd\x1d?\x1dP\x1d\x1d\x1dD"))

    assert first == [b"ls\r"]
    assert second == [BREAK, b"pwd", HELP, POWER_CYCLE, b"\x1d", DETACH]


def test_an_unknown_escape_key_is_not_sent_and_says_how_to_list_the_keys():
    assert list(EscapeReader().feed(b"a\x1dzb")) == [
        b"a",
        "unknown escape key b'z': Ctrl-] ? lists them",
        b"b",
    ]


def test_upstreams_three_ctrl_b_still_detach():
    assert list(EscapeReader().feed(b"\x02\x02\x02")) == [b"\x02\x02", DETACH]


def test_the_replay_starts_at_a_line_and_is_bounded():
    scrollback = b"".join(b"line %04d\r\n" % i for i in range(1000))
    tail = replay_tail(scrollback, 4096)
    assert len(tail) <= 4096 and tail.startswith(b"line ") and tail.endswith(b"line 0999\r\n")
    assert replay_tail(b"short", 4096) == b"short"


def test_console_logs_keep_the_newest_files_and_never_touch_others(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    logs = ConsoleLog(str(tmp_path), max_bytes=100, keep=2)
    for index, lease in enumerate(["lease-a", "lease-b", "lease-c"]):
        old = tmp_path / f"{lease}-2026010{index}T000000Z.log"
        old.write_bytes(lease.encode())
        os.utime(old, (index, index))
    current = logs.open("lease-d")
    logs.write(b"now")

    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["lease-c-20260102T000000Z.log", os.path.basename(current), "notes.txt"]
    assert b"".join(logs.read(logs.find(None))) == b"now"
    assert b"".join(logs.read(logs.find("lease-c"))) == b"lease-c"
    for bad in ("../notes", "notes.txt/..", ""):
        with pytest.raises(ValueError):
            logs.find(bad)
    logs.close()
