"""The rules of controllerd/validate.py and jumpstarter/names.py, and the max_lease_duration setting.

The attacks themselves run against the real daemon in tests/integration/test_controller_validation.py.
"""

from __future__ import annotations

import pytest

from controllerd import validate
from controllerd.config import load
from controllerd.policy import held_for
from controllerd.records import Lease
from controllerd.scheduler import LeaseRequestError
from jumpstarter.errors import ConfigError
from jumpstarter.names import InvalidName, check_labels, check_name, reserved

NOW = 1_800_000_000.0


@pytest.mark.parametrize("name", ["a", "board-01", "x" * 63, "0a"])
def test_dns_1123_labels_are_names(name: str):
    assert check_name(name, "client name") == name


@pytest.mark.parametrize(
    "name", ["", "A", "a_b", "a.b", "a/b", "a:b", "-a", "a-", "a\nb", "a\x00b", "x" * 64]
)
def test_anything_else_is_refused_with_the_rule(name: str):
    with pytest.raises(InvalidName, match="lowercase letters, digits and '-'"):
        check_name(name, "client name")


def test_reserved_keys_are_the_jumpstarter_dev_domain_and_its_subdomains():
    assert reserved("jumpstarter.dev/name") and reserved("metadata.jumpstarter.dev/x")
    assert not reserved("notjumpstarter.dev/x") and not reserved("jumpstarter.dev") and not reserved("board")
    with pytest.raises(InvalidName, match="reserved"):
        check_labels({"jumpstarter.dev/name": "board1"})


def test_an_exporter_may_send_only_its_own_name_label():
    stored = {"board": "rpi4", "jumpstarter.dev/name": "stale"}
    assert validate.registered_labels(stored, {}, "e1") == {"board": "rpi4", "jumpstarter.dev/name": "e1"}
    own = validate.registered_labels(stored, {"jumpstarter.dev/name": "e1", "x": "ignored"}, "e1")
    assert own == {"board": "rpi4", "jumpstarter.dev/name": "e1"}
    for sent in ({"jumpstarter.dev/name": "board1"}, {"jumpstarter.dev/client": "x"}):
        with pytest.raises(InvalidName, match=next(iter(sent))):
            validate.registered_labels(stored, sent, "e1")


def test_an_extension_by_end_time_counts_towards_the_maximum():
    lease = Lease("ns", "l", "alice", selector="a=b", duration=60.0, effective_begin=NOW, exporter="e")
    lease.end_time = NOW + 7200
    assert held_for(lease, NOW + 10) == 7200  # `duration` still says 60
    with pytest.raises(LeaseRequestError, match="maximum"):
        validate.lease_times(lease, NOW + 10, 3600.0)


def test_a_request_is_checked_whole_and_its_times_resolved():
    lease = Lease("ns", "l", "alice", selector="a=b", end_time=NOW + 600, duration=60.0)
    validate.lease_request(lease, NOW, 3600.0)
    assert lease.begin_time == NOW + 540
    with pytest.raises(LeaseRequestError, match="selector"):
        validate.lease_request(Lease("ns", "l", "alice", selector="a=" + "b" * 2000, duration=1.0), NOW, 60.0)


def test_max_lease_duration_defaults_to_seven_days_and_is_bounded(tmp_path):
    path = tmp_path / "controllerd.yaml"
    path.write_text("listen: 127.0.0.1:1\n")
    assert load(str(path)).max_lease_duration == 7 * 86400
    path.write_text("listen: 127.0.0.1:1\nmax_lease_duration: 3600\n")
    assert load(str(path)).max_lease_duration == 3600
    for bad, problem in (("0", "positive"), ("400000000", "ten years"), ("soon", "positive")):
        path.write_text(f"listen: 127.0.0.1:1\nmax_lease_duration: {bad}\n")
        with pytest.raises(ConfigError, match=rf"controllerd.yaml:2: max_lease_duration: .*{problem}"):
            load(str(path))
