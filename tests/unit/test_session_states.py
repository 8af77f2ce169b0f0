"""RemoteSession's state machine: the legal transitions, the refused ones, and where open/close end up.

The sessions here talk to the in-process fake controller of test_remote_client (real gRPC over TLS).
"""

from __future__ import annotations

import itertools

import grpc
import pytest

from jumpstarter.client.remote import ControllerClient, LeaseError
from jumpstarter.client.session import (
    TRANSITIONS,
    RemoteSession,
    SessionState,
    SessionStateError,
)
from tests.unit.test_remote_client import certificate, condition, fake, lease  # noqa: F401 - fixtures

S = SessionState
LEGAL = {
    (S.PENDING, S.LEASED),
    (S.PENDING, S.FAILED),
    (S.LEASED, S.EXPORTER_READY),
    (S.LEASED, S.FAILED),
    (S.EXPORTER_READY, S.ENDED),
}


def session_in(state: SessionState) -> RemoteSession:
    session = RemoteSession(None, selector="board=x")  # type: ignore[arg-type] - no call is made
    session.state = state
    return session


def test_the_table_allows_exactly_the_documented_transitions():
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL
    assert not TRANSITIONS[S.ENDED] and not TRANSITIONS[S.FAILED]


@pytest.mark.parametrize(("start", "to"), sorted(LEGAL, key=str))
def test_a_legal_transition_moves(start, to):
    session = session_in(start)
    session.move(to)
    assert session.state == to


@pytest.mark.parametrize(("start", "to"), sorted(set(itertools.product(S, S)) - LEGAL, key=str))
def test_an_illegal_transition_is_refused_and_the_state_stays(start, to):
    session = session_in(start)
    with pytest.raises(SessionStateError, match=f"{start.value} -> {to.value}"):
        session.move(to)
    assert session.state == start


def test_a_new_session_is_pending():
    assert RemoteSession(None, lease_name="namespaces/lab/leases/l1").state == S.PENDING  # type: ignore[arg-type]


def test_an_unsatisfiable_lease_fails_the_session_and_releases_it(fake):  # noqa: F811
    state, config = fake
    state.get_lease = [lease(condition("Unsatisfiable", "True", "ExporterNotFound", "no exporter matches"))]
    with ControllerClient(config) as client:
        session = RemoteSession(client, selector="board=y", duration=60)
        with pytest.raises(LeaseError, match="lease l1 cannot be acquired: ExporterNotFound"):
            session.open()
    assert session.state == S.FAILED
    assert session.created and session.name == "l1"
    assert "namespaces/lab/leases/l1" in state.deleted


def test_a_refused_dial_fails_the_session_with_the_dial_error(fake):  # noqa: F811
    state, config = fake
    state.get_lease = [lease(condition("Ready", "True", "Ready", ""))] * 3
    state.dial = [
        (grpc.StatusCode.PERMISSION_DENIED, "permission denied: lease l1 belongs to another client")
    ]
    with ControllerClient(config) as client:
        client.poll_interval = 0.01
        session = RemoteSession(client, lease_name="l1", show_hook_logs=False)
        with pytest.raises(Exception, match="dial lease l1: permission denied") as caught:
            session.open()
    assert getattr(caught.value, "code", None) == grpc.StatusCode.PERMISSION_DENIED
    assert session.state == S.FAILED
    assert not session.created and state.deleted == []  # an attached lease is not released
    session.close()  # a second close changes nothing
    assert session.state == S.FAILED
