from __future__ import annotations

import asyncio
import math

import pytest

from jumpstarter.backoff import Backoff, Deadline


def test_pauses_double_up_to_the_cap_and_reset_starts_over() -> None:
    backoff = Backoff(start=0.5, cap=3.0)
    assert [backoff.next_pause() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_pause() == 0.5


def test_jitter_stays_within_its_fraction() -> None:
    backoff = Backoff(start=1.0, cap=1.0, jitter=0.2)
    pauses = [backoff.next_pause() for _ in range(200)]
    assert all(p is not None and 0.8 <= p <= 1.2 for p in pauses)
    assert len(set(pauses)) > 1, "jitter must spread the pauses"


def test_no_pause_is_offered_past_the_deadline() -> None:
    backoff = Backoff(start=1000.0, cap=1000.0, deadline=Deadline(1.0))
    assert backoff.next_pause() is None
    assert backoff.sleep() is False
    assert asyncio.run(backoff.wait()) is False


def test_sleep_and_wait_pause_when_the_deadline_allows() -> None:
    backoff = Backoff(start=0.001, cap=0.001, deadline=Deadline(60))
    assert backoff.sleep() is True
    assert asyncio.run(backoff.wait()) is True


def test_deadline_remaining_and_clamp() -> None:
    never = Deadline(None)
    assert never.remaining() == math.inf and not never.expired()
    assert never.clamp(40.0) == 40.0
    soon = Deadline(0.0)
    assert soon.expired() and soon.remaining() == 0.0
    assert soon.clamp(40.0) == 1.0, "a last attempt still gets the least timeout"
    assert 5.0 < Deadline(10).clamp(40.0) <= 10.0


@pytest.mark.parametrize("args", [dict(start=0), dict(start=2, cap=1), dict(factor=0.5), dict(jitter=1.0)])
def test_nonsense_settings_are_refused(args: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(**args)


def test_a_set_stop_event_ends_the_pause_at_once() -> None:
    import threading

    stop = threading.Event()
    stop.set()
    backoff = Backoff(start=1000.0, cap=1000.0, deadline=Deadline(None))
    assert backoff.sleep(stop) is False, "a set stop event gives up instead of pausing 1000 s"
    assert Backoff(start=0.001, cap=0.001).sleep(threading.Event()) is True
