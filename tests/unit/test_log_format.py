"""Daemon log lines made cheaper per record (issue 9): exactly the text structlog's own processors give."""

from __future__ import annotations

import datetime
import json
import time

import pytest
import structlog

from jumpstarter.log import CachedDumps, IsoStamper


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
