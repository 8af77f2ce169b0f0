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
