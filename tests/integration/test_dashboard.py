"""The web dashboard (issue 12 §2) in a real headless Chromium, on a real controllerd + routerd +
exporterd stack: logging in, live updates, a board's maintenance reason, refusals and bounds."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

from .central import (
    CLI,
    ROOT,
    Central,
    Identity,
    close_central,
    refused,
    wait_until,
)
from .dashboard_page import Reply, chromium, https, ink, login, session_cookie, start_dashboard_central

DEADLINE = 60.0  # generous: the machine may be loaded; each wait ends as soon as its condition holds
MAX_SUBSCRIBERS = 4


@dataclass
class Lab:
    central: Central
    port: int
    alice: str  # a client config file
    viewer: str  # a viewer token
    env: dict[str, str]

    def get(self, path: str, cookie: str = "", **headers: str) -> Reply:
        return https(
            self.port,
            self.central.ca,
            "GET",
            path,
            headers={"Cookie": cookie, **headers} if cookie else headers,
        )

    def cookie(self, token: str | None = None) -> str:
        reply = login(self.port, self.central.ca, token or self.viewer)
        assert reply.status == 200, reply.body
        return session_cookie(reply)

    def snapshot(self, cookie: str) -> dict[str, Any]:
        reply = self.get("/api/snapshot", cookie)
        assert reply.status == 200, reply.body
        return dict(reply.json())

    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def jmp(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )

    def new_viewer(self, name: str) -> str:
        path = os.path.join(self.central.directory, f"viewer-{name}.yaml")
        self.central.admin("default", "create", "viewer", name, "-o", path)
        document = yaml.safe_load(Path(path).read_text())
        assert document["dashboard"] == self.url()
        return str(document["token"])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    central, port = start_dashboard_central("jsdash-", max_subscribers=MAX_SUBSCRIBERS)
    try:
        board = central.create("exporter", "default", "board1", board="x")
        power = {"power": {"type": "power.command", "config": {"on": "true", "off": "true"}}}
        central.spawn_exporterd("board1", board.config, power, os.path.join(central.directory, "b1.sock"))
        alice = central.create("client", "default", "alice").config
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}
        env["JMP_CLIENT_CONFIG_HOME"] = os.path.join(central.directory, "client-home")
        env["JUMPSTARTER_BOARDS_DIR"] = os.path.join(central.directory, "no-boards")
        lab = Lab(central, port, alice, "", env)
        lab.viewer = lab.new_viewer("wall")
        cookie = lab.cookie()
        wait_until(
            lambda: [b["online"] for b in lab.snapshot(cookie)["boards"]] == [True], DEADLINE, "board1 online"
        )
        yield lab
    finally:
        close_central(central)


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="jsdash-chromium-")
    driver = chromium(lab.central.tls_cert, profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver,
        DEADLINE,
        poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    return wait.until(condition, message=f"waiting {DEADLINE:g}s for {what}")


def by_id(driver: Any, element: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element)


def board_row(driver: Any, name: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, f'#boards tr[data-board="{name}"]').text)


def log_in(driver: Any, lab: Lab, token: str) -> None:
    """A fresh visit (no cookie): the login form, the token typed once, then the dashboard."""
    driver.get(lab.url())
    driver.delete_all_cookies()
    driver.get(lab.url())
    until(driver, lambda d: by_id(d, "login").is_displayed(), "the login form")
    by_id(driver, "token").send_keys(token)
    by_id(driver, "login-button").click()
    until(driver, lambda d: by_id(d, "dashboard").is_displayed(), "the dashboard after logging in")


# -- refusals ----------------------------------------------------------------------------------


def test_without_a_token_the_data_is_refused_and_the_page_shows_only_the_login(lab: Lab, page: Any):
    for path in ("/api/snapshot", "/api/events", "/api/session"):
        assert lab.get(path).status == 401, path
    assert lab.get("/api/snapshot", "__Host-jumpstarter-dashboard=forged-session-id").status == 401

    page.get(lab.url())
    page.delete_all_cookies()
    page.get(lab.url())
    until(page, lambda d: by_id(d, "login").is_displayed(), "the login form")
    assert not by_id(page, "dashboard").is_displayed()
    assert "board1" not in page.page_source.split("<body", 1)[1]

    by_id(page, "token").send_keys("not-a-token")
    by_id(page, "login-button").click()
    until(page, lambda d: "token refused" in by_id(d, "login-error").text, "the refusal")
    assert not by_id(page, "dashboard").is_displayed()
    assert page.get_cookies() == []


def test_logins_with_an_exporter_token_from_another_site_or_oversized_are_refused(lab: Lab):
    exporter_token = yaml.safe_load(
        Path(os.path.join(lab.central.directory, "default-exporter-board1.yaml")).read_text()
    )["token"]
    assert login(lab.port, lab.central.ca, exporter_token).status == 401
    assert login(lab.port, lab.central.ca, lab.viewer, Origin="https://evil.example").status == 403
    form = https(
        lab.port,
        lab.central.ca,
        "POST",
        "/login",
        f"token={lab.viewer}".encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status == 415
    # the head alone claims a body over the bound: refused before any of it is read
    oversized = {"Content-Type": "application/json", "Content-Length": "100000"}
    assert https(lab.port, lab.central.ca, "POST", "/login", None, oversized).status == 413
    assert https(lab.port, lab.central.ca, "GET", "/", None, {"X-Filler": "x" * 20_000}).status == 413

    plain = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=30)  # no plaintext HTTP
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/api/snapshot")
        plain.getresponse().read()
    plain.close()
    assert lab.viewer not in lab.central.log("controllerd")  # tokens are never logged


def test_a_viewer_token_is_refused_by_every_grpc_call(lab: Lab):
    channel = lab.central.channel()
    clients = client_pb2_grpc.ClientServiceStub(channel)
    controller = jumpstarter_pb2_grpc.ControllerServiceStub(channel)
    parent = "namespaces/default"
    calls: list[tuple[str, Callable[..., Any], Any]] = [
        ("ListExporters", clients.ListExporters, client_pb2.ListExportersRequest(parent=parent)),
        ("ListLeases", clients.ListLeases, client_pb2.ListLeasesRequest(parent=parent)),
        (
            "CreateLease",
            clients.CreateLease,
            client_pb2.CreateLeaseRequest(parent=parent, lease=client_pb2.Lease(selector="board=x")),
        ),
        ("Register", controller.Register, jumpstarter_pb2.RegisterRequest(labels={"board": "x"})),
        ("Dial", controller.Dial, jumpstarter_pb2.DialRequest(lease_name="x")),
    ]
    seen = []
    try:
        for kind in ("Client", "Viewer", "Exporter"):
            metadata = Identity(kind, "default", "wall", lab.viewer).metadata()
            for name, method, request in calls:
                error = refused(lambda m=method, r=request, md=metadata: m(r, metadata=md, timeout=10))
                seen.append((kind, name, error.code(), error.details()))
    finally:
        channel.close()
    for kind, name, code, details in seen:
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED), (
            kind,
            name,
            details,
        )
        assert "kind" in details, (kind, name, details)  # refused for being a viewer, not for the request


def test_revoking_a_viewer_ends_its_sessions_at_once(lab: Lab):
    token = lab.new_viewer("kiosk")
    cookie = lab.cookie(token)
    assert lab.get("/api/snapshot", cookie).status == 200

    lab.central.admin("default", "revoke", "viewer", "kiosk")

    assert lab.get("/api/snapshot", cookie).status == 401
    assert login(lab.port, lab.central.ca, token).status == 401


def test_live_pages_are_bounded(lab: Lab):
    cookie = lab.cookie()
    streams, statuses = [], []
    try:
        for _ in range(MAX_SUBSCRIBERS + 1):
            import ssl

            context = ssl.create_default_context(cadata=lab.central.ca.decode())
            stream = http.client.HTTPSConnection("127.0.0.1", lab.port, context=context, timeout=30)
            stream.request("GET", "/api/events", headers={"Cookie": cookie})
            statuses.append(stream.getresponse().status)
            streams.append(stream)
    finally:
        for stream in streams:
            stream.close()
    assert statuses[:MAX_SUBSCRIBERS] == [200] * MAX_SUBSCRIBERS
    assert statuses[MAX_SUBSCRIBERS] == 503


# -- the page ----------------------------------------------------------------------------------


def test_a_lease_created_with_the_cli_appears_on_the_page_without_a_reload(lab: Lab, page: Any):
    log_in(page, lab, lab.viewer)
    until(page, lambda d: "online" in board_row(d, "board1"), "board1 online on the page")
    page.execute_script("window.stillTheSamePage = true")

    created = lab.jmp(
        "lease",
        "create",
        "--client",
        lab.alice,
        "--exporter",
        "board1",
        "--duration",
        "10m",
        "--wait",
        "-o",
        "json",
    )
    assert created.returncode == 0, created.stderr
    held = json.loads(created.stdout)[0]["name"].rsplit("/", 1)[-1]
    queued = lab.jmp(
        "lease", "create", "--client", lab.alice, "-l", "board=x", "--duration", "5m", "-o", "json"
    )
    assert queued.returncode == 0, queued.stderr
    waiting = json.loads(queued.stdout)[0]["name"].rsplit("/", 1)[-1]

    until(page, lambda d: f"alice ({held})" in board_row(d, "board1"), "the holder on the page")
    until(page, lambda d: f"1. alice ({waiting})" in board_row(d, "board1"), "the queued lease at position 1")
    history = by_id(page, "history").text
    assert "granted" in history and held in history
    assert page.execute_script("return window.stillTheSamePage") is True  # updated live, never reloaded

    for name in (held, waiting):
        assert lab.jmp("lease", "release", "--client", lab.alice, name).returncode == 0
    until(page, lambda d: "alice" not in board_row(d, "board1"), "the released board")


def test_a_screenshot_of_the_logged_in_page_is_not_blank(lab: Lab, page: Any):
    from selenium.webdriver.common.by import By

    log_in(page, lab, lab.viewer)
    until(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#boards tbody tr")) >= 1, "a board row")
    until(page, lambda d: by_id(d, "services").text.count("router") >= 1, "the health table")
    screenshot = page.get_screenshot_as_png()
    Path(lab.central.directory, "dashboard.png").write_bytes(
        screenshot
    )  # kept with the logs while the stack runs
    assert ink(screenshot) > 0.02, "the page rendered (almost) blank"
    assert ink(by_id(page, "boards").screenshot_as_png) > 0.02, "the board table rendered blank"


def test_a_board_in_maintenance_shows_its_reason(lab: Lab, page: Any):
    reason = "relay replaced, back <b>Monday</b>"  # shown as text, never as HTML
    log_in(page, lab, lab.viewer)
    until(page, lambda d: "board1" in board_row(d, "board1"), "the board's row")

    lab.central.admin("default", "exporter", "maintenance", "board1", "--reason", reason)

    until(page, lambda d: "maintenance" in board_row(d, "board1"), "the maintenance state, live")
    assert reason in board_row(page, "board1")
    lab.central.admin("default", "exporter", "maintenance", "board1", "--done")
    until(page, lambda d: "maintenance" not in board_row(d, "board1"), "the board back in service, live")


def test_anonymous_access_only_when_configured_and_connections_are_bounded():
    central, port = start_dashboard_central("jsdash-anon-", router=False, anonymous=True, max_connections=3)
    idle: list[socket.socket] = []
    try:
        reply = https(port, central.ca, "GET", "/api/session")
        assert (reply.status, reply.json()["who"]) == (200, "anonymous")
        assert https(port, central.ca, "GET", "/api/snapshot").json()["controller"]["store"] == "ok"

        for _ in range(3):  # connections that never start TLS hold every slot...
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        wait_until(lambda: _refused(port, central.ca), DEADLINE, "the fourth connection to be refused")
        for held in idle:  # ...until they go away
            held.close()
        wait_until(lambda: not _refused(port, central.ca), DEADLINE, "a connection to be served again")
    finally:
        for held in idle:
            held.close()
        close_central(central)


def _refused(port: int, ca: bytes) -> bool:
    try:
        return https(port, ca, "GET", "/api/session").status != 200
    except (OSError, http.client.HTTPException):
        return True
