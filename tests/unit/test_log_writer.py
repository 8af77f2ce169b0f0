"""Daemon log output made cheaper per record: the same text, in the same order, on the stream."""

from __future__ import annotations

import datetime
import io
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
import structlog

from jumpstarter.backoff import Backoff, Deadline
from jumpstarter.log import CachedDumps, IsoStamper, configure
from jumpstarter.log_writer import CoalescingStreamHandler


class Stream(io.StringIO):
    """A StringIO that counts write() calls (one per syscall on a real stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.writes += 1
            return super().write(text)

    def text(self) -> str:
        with self.lock:
            return self.getvalue()


def wait_until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    backoff = Backoff(start=0.005, cap=0.05, deadline=Deadline(30))
    while not condition():
        if not backoff.sleep():
            raise AssertionError(f"timed out waiting for {what}")


def ours() -> logging.Handler:
    return next(h for h in logging.getLogger().handlers if h.get_name() == "jumpstarter")


@pytest.fixture
def daemon_logging() -> Iterator[Stream]:
    """configure() as a daemon does (coalescing), on a stream the test reads; undone afterwards."""
    stream = Stream()
    configure("INFO", json=True, stream=stream, coalesce=True)
    logging.getLogger("coalesce-test").setLevel(logging.INFO)  # whatever other tests left on the root
    try:
        yield stream
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "jumpstarter"]:
            root.removeHandler(handler)
            handler.close()
        structlog.reset_defaults()


def test_the_iso_stamper_writes_structlogs_text_for_every_instant(monkeypatch: pytest.MonkeyPatch) -> None:
    stamper = IsoStamper()
    instants = [
        0,
        1,
        999,
        1000,
        999_999_000,
        1_000_000_000,
        1_764_000_000_123_456_789,
        4_102_444_799_999_999_999,
    ]
    instants += [1_764_000_000_000_000_000 + n * 7_654_321_001 for n in range(2000)]  # crossing seconds
    for ns in instants:
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        micros = ns // 1000
        when = datetime.datetime.fromtimestamp(micros // 10**6, tz=datetime.UTC)
        expected = when.replace(microsecond=micros % 10**6).isoformat().replace("+00:00", "Z")
        assert stamper(None, "info", {})["timestamp"] == expected  # incl. no fraction at .000000


def test_cached_dumps_renders_exactly_what_json_dumps_does() -> None:
    class Custom:
        def __repr__(self) -> str:
            return "<custom>"

    renderer = structlog.processors.JSONRenderer(serializer=CachedDumps())
    reference = structlog.processors.JSONRenderer()
    for event in (
        {"event": "power on", "driver_type": "power", "level": "info"},
        {"event": 'odd "quotes" and ünïcode', "n": 3, "r": 0.5, "none": None, "obj": Custom(), "l": [1, "a"]},
    ):
        assert renderer(None, "info", dict(event)) == reference(None, "info", dict(event))
        json.loads(renderer(None, "info", dict(event)))


def test_info_lines_share_writes_and_arrive_in_order(daemon_logging: Stream) -> None:
    log = structlog.get_logger("coalesce-test.driver").bind(driver_type="power")
    for n in range(200):
        log.info("power on", n=n)
    wait_until(lambda: daemon_logging.text().count("\n") == 200, "200 lines on the stream")
    lines = [json.loads(line) for line in daemon_logging.text().splitlines()]
    assert [line["n"] for line in lines] == list(range(200))
    assert lines[0] == {
        "driver_type": "power",
        "n": 0,
        "event": "power on",
        "level": "info",
        "logger": "coalesce-test.driver",
        "timestamp": lines[0]["timestamp"],
    }
    assert daemon_logging.writes < 200, "every line was a write of its own"


def test_a_warning_is_written_at_once_after_the_lines_before_it(daemon_logging: Stream) -> None:
    log = structlog.get_logger("coalesce-test")
    log.info("first")
    logging.getLogger("coalesce-test.stdlib").info("second %s", "stdlib")
    log.warning("third")
    events = [json.loads(line)["event"] for line in daemon_logging.text().splitlines()]  # no waiting
    assert events == ["first", "second stdlib", "third"]


def test_flush_writes_what_is_pending(daemon_logging: Stream) -> None:
    structlog.get_logger("coalesce-test").info("stopped")
    ours().flush()  # what logging.shutdown() does at exit
    assert '"event": "stopped"' in daemon_logging.text()


def test_a_value_changed_after_logging_is_written_as_it_was(daemon_logging: Stream) -> None:
    seen = ["a"]
    structlog.get_logger("coalesce-test").info("list", seen=seen)  # mutable: formatted at once
    seen.append("b")
    ours().flush()
    assert json.loads(daemon_logging.text())["seen"] == ["a"]


def test_deferred_formatting_gives_the_text_immediate_formatting_gives() -> None:
    records: list[logging.LogRecord] = []
    for coalesce in (False, True):
        stream = Stream()
        configure("INFO", json=True, stream=stream, coalesce=coalesce)
        logging.getLogger("coalesce-test").setLevel(logging.INFO)
        handler = ours()
        try:
            assert isinstance(handler, CoalescingStreamHandler) == coalesce
            log = structlog.get_logger("coalesce-test.driver").bind(driver_type="power")
            log.info("power on", n=1, ratio=0.5, ok=True, none=None)
            handler.flush()
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
            structlog.reset_defaults()
        line = json.loads(stream.text())
        records.append(line)
    assert records[0].pop("timestamp")[:10] == records[1].pop("timestamp")[:10]
    assert records[0] == records[1]
