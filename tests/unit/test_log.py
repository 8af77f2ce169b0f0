"""Daemon logging: tokens never reach the output; floods are throttled; fatal errors are one line."""

from __future__ import annotations

import io
import logging

import structlog

from jumpstarter.log import Throttle, configure, fatal

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjbGllbnQ6YTpiOmMifQ.c2lnbmF0dXJlLWJ5dGVz"


def test_a_jwt_anywhere_in_a_record_is_redacted_even_in_a_traceback() -> None:
    stream = io.StringIO()
    configure("INFO", json=True, stream=stream)
    try:
        log = structlog.get_logger("test")
        log.warning(f"refused Bearer {TOKEN}", detail=f"header was {TOKEN}", token=TOKEN)
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            log.exception("failed")
        logging.getLogger("grpc").error("stdlib record with %s", TOKEN)
    finally:  # leave no handler behind on the test process's root logger
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "jumpstarter"]:
            root.removeHandler(handler)
        structlog.reset_defaults()
    out = stream.getvalue()
    assert TOKEN.split(".")[1] not in out
    assert out.count("[redacted]") >= 5, out


def test_throttle_lets_one_record_through_per_interval_and_counts_the_rest() -> None:
    throttle = Throttle(interval=3600)
    assert throttle.ready() == 0
    assert [throttle.ready() for _ in range(379)] == [None] * 379
    throttle.next = 0  # the interval has passed
    assert throttle.ready() == 379


def test_fatal_prints_one_line_and_returns_the_status(capsys) -> None:  # type: ignore[no-untyped-def]
    assert fatal("prog", "/x/y: cannot read:\n  line two") == 2
    assert capsys.readouterr().err == "prog: /x/y: cannot read: line two\n"


def test_the_short_formatting_path_renders_exactly_what_the_full_one_does() -> None:
    """Records from structlog skip most of ProcessorFormatter; the line written must not change."""
    for json in (True, False):
        stream = io.StringIO()
        configure("INFO", json=json, stream=stream)
        root = logging.getLogger()
        handler = next(h for h in root.handlers if h.get_name() == "jumpstarter")
        formatter = handler.formatter
        assert formatter is not None
        records: list[logging.LogRecord] = []
        capture = logging.Handler()
        capture.emit = records.append  # type: ignore[method-assign]
        root.addHandler(capture)
        try:
            log = structlog.get_logger("short-path-test").bind(
                driver_type="power"
            )  # no level set on it anywhere
            log.info("power on")
            log.warning('odd "quotes" and ünïcode', count=3, ratio=0.5, token=TOKEN, note=f"Bearer {TOKEN}")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
            logging.getLogger("grpc").error("stdlib record with %s", "args")
        finally:
            root.removeHandler(capture)
            root.removeHandler(handler)
            structlog.reset_defaults()
        assert len(records) == 4
        for record in records[:3]:  # structlog's (stamped already); the stdlib one is stamped when formatted
            full = structlog.stdlib.ProcessorFormatter.format(
                formatter, logging.makeLogRecord(record.__dict__)
            )
            assert formatter.format(record) == full
        assert isinstance(records[0].msg, dict), "the record other handlers see is left as it was"
        out = stream.getvalue()
        assert "power on" in out and "boom" in out and TOKEN.split(".")[1] not in out
