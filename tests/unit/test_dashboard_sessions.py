"""Dashboard settings in controllerd.yaml and dashboard logins (controllerd/dashboard/sessions.py),
with the real token authority and an in-memory SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controllerd.auth import VIEWER, TokenAuthority
from controllerd.config import load
from controllerd.dashboard.sessions import COOKIE, PER_IDENTITY, Sessions, cookie_value, set_cookie
from controllerd.errors import PermissionDenied, Unauthenticated
from controllerd.records import Client, Exporter
from controllerd.store.sqlite import SqliteStore
from jumpstarter.errors import ConfigError


def test_the_dashboard_is_off_unless_configured_and_its_bounds_have_defaults(tmp_path: Path) -> None:
    path = tmp_path / "controllerd.yaml"
    path.write_text("listen: 127.0.0.1:8082\n")
    assert load(str(path)).dashboard is None
    path.write_text("listen: 127.0.0.1:8082\ndashboard:\n  listen: 127.0.0.1:8084\n")
    dashboard = load(str(path)).dashboard
    assert dashboard is not None
    assert (dashboard.listen, dashboard.anonymous, dashboard.max_sessions) == ("127.0.0.1:8084", False, 256)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dashboard:\n  anonymous: true\n", ":1: dashboard: missing 'listen'"),
        ("dashboard:\n  listen: nowhere\n", ":2: dashboard.listen: expected HOST:PORT"),
        (
            "dashboard:\n  listen: :1\n  anonymous: yes please\n",
            ":3: dashboard.anonymous: expected true or false",
        ),
        (
            "dashboard:\n  listen: :1\n  max_subscribers: 0\n",
            ":3: dashboard.max_subscribers: expected a positive",
        ),
        (
            "dashboard:\n  listen: :1\n  session_hours: 9000\n",
            ":3: dashboard.session_hours: at most 720 hours",
        ),
        ("dashboard:\n  listen: :1\n  port: 1\n", ":3: dashboard.port: unknown key"),
    ],
)
def test_bad_dashboard_settings_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "controllerd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load(str(path))
    assert f"{path}{expected}" in str(error.value)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lab() -> tuple[TokenAuthority, SqliteStore]:
    store = SqliteStore(":memory:")
    auth = TokenAuthority(store, ec.generate_private_key(ec.SECP256R1()), "controller.lab:8082")
    return auth, store


def test_client_and_viewer_tokens_log_in_exporter_and_forged_tokens_do_not(lab) -> None:
    auth, store = lab

    async def scenario() -> None:
        alice = Client("default", "alice")
        await store.save_client(alice)
        board = Exporter("default", "board1")
        await store.save_exporter(board)
        sessions = Sessions(auth, lifetime=3600, max_sessions=10)
        client_token, _ = await auth.issue("Client", "default", "alice", alice.uid)
        viewer_token, _ = await auth.issue(VIEWER, "lab", "wall", "uid-1")
        exporter_token, _ = await auth.issue("Exporter", "default", "board1", board.uid)

        _, session = await sessions.login(client_token)
        assert (session.who, session.namespace) == ("client:default/alice", "default")
        _, session = await sessions.login(viewer_token)
        assert (session.who, session.namespace) == ("viewer:lab/wall", "lab")
        with pytest.raises(PermissionDenied):
            await sessions.login(exporter_token)
        with pytest.raises(Unauthenticated):
            await sessions.login(viewer_token[:-4] + "AAAA")
        other = TokenAuthority(store, ec.generate_private_key(ec.SECP256R1()), "controller.lab:8082")
        forged, _ = await other.issue(VIEWER, "lab", "wall", "uid-1")
        with pytest.raises(Unauthenticated):
            await sessions.login(forged)
        assert len(sessions) == 2

    asyncio.run(scenario())


def test_sessions_are_bounded_expire_and_end_with_their_token(lab) -> None:
    auth, _ = lab
    clock = Clock()

    async def scenario() -> None:
        sessions = Sessions(auth, lifetime=600, max_sessions=PER_IDENTITY + 2, clock=clock)
        wall, _ = await auth.issue(VIEWER, "lab", "wall", "u1")
        kiosk, _ = await auth.issue(VIEWER, "lab", "kiosk", "u2")
        first, _ = await sessions.login(kiosk)
        mine = [(await sessions.login(wall))[0] for _ in range(PER_IDENTITY + 3)]
        assert [sessions.lookup(s) is not None for s in mine] == [False] * 3 + [True] * PER_IDENTITY
        assert sessions.lookup(first) is not None  # one identity's logins push out only its own
        assert len(sessions) <= PER_IDENTITY + 2

        third, _ = await auth.issue(VIEWER, "lab", "third", "u3")
        for _ in range(3):
            await sessions.login(third)
        assert len(sessions) == PER_IDENTITY + 2  # the total is bounded: the oldest went first

        clock.now += 601
        assert sessions.lookup(mine[-1]) is None  # expired
        fresh, _ = await sessions.login(kiosk)
        await auth.revoke(subject_prefix="viewer:lab:kiosk:")
        assert sessions.lookup(fresh) is None  # revoked: at once
        assert sessions.lookup("x" * 500) is None and sessions.lookup(None) is None

    asyncio.run(scenario())


def test_the_cookie_is_host_only_secure_httponly_and_same_site_strict() -> None:
    cookie = set_cookie("abc", 3600)
    assert cookie.startswith(f"{COOKIE}=abc; Path=/;")
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Max-Age=3600"):
        assert f"; {attribute}" in cookie
    assert COOKIE.startswith("__Host-")  # the browser refuses it with a Domain or over plain HTTP
    assert cookie_value(f"theme=dark; {COOKIE}=abc; other=1") == "abc"
    assert cookie_value("theme=dark") is None
