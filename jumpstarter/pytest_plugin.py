"""pytest plugin: a `board` fixture (the root client) and an expect-style `console` fixture.

    def test_boots(board, console):
        board.power.cycle(wait=1)
        console.expect("login:", timeout=60)

The board comes from `--jumpstarter-host PATH`, `--jumpstarter-board NAME`,
`--jumpstarter-selector SELECTOR` (a board leased through the controller for the
session, with `--jumpstarter-client ALIAS|FILE` and `--jumpstarter-duration 30m`),
or `$JUMPSTARTER_HOST` (set by `jumpstarter shell` / `jumpstarter run -- pytest`).
The console is the board's serial driver (`--jumpstarter-console PATH` picks
another, e.g. `dut.console`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jumpstarter", "drive a lab board")
    group.addoption("--jumpstarter-host", metavar="PATH", help="exporter socket (default: $JUMPSTARTER_HOST)")
    group.addoption(
        "--jumpstarter-board", metavar="NAME", help="a board of this host (/run/jumpstarter/boards)"
    )
    group.addoption(
        "--jumpstarter-selector",
        metavar="SELECTOR",
        help="lease a board matching this label selector through the controller for the session",
    )
    group.addoption(
        "--jumpstarter-client",
        metavar="ALIAS|FILE",
        help="client config for --jumpstarter-selector (default: $JMP_CLIENT_CONFIG, else the current one)",
    )
    group.addoption(
        "--jumpstarter-duration", metavar="DURATION", default="30m", help="lease duration (default 30m)"
    )
    group.addoption(
        "--jumpstarter-console",
        metavar="PATH",
        help="driver path of the console (default: the serial driver)",
    )
    group.addoption(
        "--jumpstarter-snapshots",
        metavar="DIR",
        default="jumpstarter-snapshots",
        help="where a failed test's camera snapshots go (default ./jumpstarter-snapshots; '' = none)",
    )


def _target(config: pytest.Config) -> str:
    import os

    from jumpstarter.cli.target import TargetChoice, TargetOptions, resolve_socket
    from jumpstarter.errors import JumpstarterError

    options = TargetOptions(
        host="--jumpstarter-host PATH",
        board="--jumpstarter-board NAME",
        others="--jumpstarter-board NAME or --jumpstarter-selector SELECTOR",
    )
    host = config.getoption("--jumpstarter-host") or None
    board = config.getoption("--jumpstarter-board") or None
    try:
        if host or board:
            socket = resolve_socket(TargetChoice(host=host, board=board), options)
        elif os.environ.get("JUMPSTARTER_HOST"):
            socket = os.environ["JUMPSTARTER_HOST"]
        else:
            socket = resolve_socket(TargetChoice(), options)
    except JumpstarterError as exc:
        pytest.exit(f"jumpstarter: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    assert socket is not None
    return socket


@pytest.fixture(scope="session")
def board(pytestconfig: pytest.Config) -> Iterator[Any]:
    """The root client of the board under test (`board.power.on()`)."""
    import jumpstarter

    selector = pytestconfig.getoption("--jumpstarter-selector")
    if selector and not (
        pytestconfig.getoption("--jumpstarter-host") or pytestconfig.getoption("--jumpstarter-board")
    ):
        with jumpstarter.lease(**_lease_options(pytestconfig, selector)) as root:
            yield root
        return
    with jumpstarter.connect(_target(pytestconfig)) as root:
        yield root


def _lease_options(config: pytest.Config, selector: str) -> dict[str, Any]:
    """`jumpstarter.lease` arguments; a bad duration or a missing client config ends the run (exit 4)."""
    import sys

    from jumpstarter.cli.durations import parse_duration
    from jumpstarter.client.remote import resolve_config
    from jumpstarter.errors import JumpstarterError

    def on_wait(reason: str, message: str) -> None:
        print(f"jumpstarter: waiting: {message or reason}", file=sys.__stderr__, flush=True)

    try:
        return {
            "selector": selector,
            "duration": parse_duration(config.getoption("--jumpstarter-duration")),
            "client": resolve_config(config.getoption("--jumpstarter-client") or None),
            "on_wait": on_wait,
        }
    except (JumpstarterError, ValueError) as exc:
        pytest.exit(f"jumpstarter: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)


def _find_console(root: Any, path: str | None) -> Any:
    from jumpstarter.client.drivers.serial import SerialClient

    if path:
        client = root
        for part in path.split("."):
            client = client[part]
        return client
    serials = [c for c in root.walk() if isinstance(c, SerialClient)]
    if not serials:
        raise pytest.UsageError(
            "jumpstarter: the board has no serial driver; pass --jumpstarter-console PATH"
        )
    named = [c for c in serials if c.name in ("serial", "console")]
    return (named or serials)[0]


@pytest.fixture
def console(board: Any, pytestconfig: pytest.Config) -> Iterator[Any]:
    """The board's serial console with `expect(pattern, timeout)`, `sendline(text)`, `before`/`after`."""
    client = _find_console(board, pytestconfig.getoption("--jumpstarter-console"))
    with client.console() as con:
        yield con


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used the board gets a snapshot of each of its cameras in its report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    board = getattr(item, "funcargs", {}).get("board")
    directory = item.config.getoption("--jumpstarter-snapshots")
    if report.when != "call" or not report.failed or board is None or not directory:
        return
    import base64
    import os

    from jumpstarter.client.drivers.video import failure_snapshots

    directory = os.path.join(str(item.config.invocation_params.dir), directory)
    for title, text, frame in failure_snapshots(board, directory, item.nodeid):
        report.sections.append((title, text))
        if frame is not None:  # pytest-html shows `extras` images inline
            image = {"name": title, "format_type": "image", "content": base64.b64encode(frame).decode()}
            report.extras = [
                *getattr(report, "extras", []),
                {**image, "mime_type": "image/jpeg", "extension": "jpg"},
            ]
