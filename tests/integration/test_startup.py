"""Start-up failures of the real daemons are one line naming the file, exit 2; state is private.

A corrupt database, a truncated key or a read-only state directory must not end
in a traceback that names no file. The read-only case is a real read-only
filesystem: controllerd runs under `unshare --mount` with its state directory
bind-mounted read-only in that private mount namespace (root ignores file modes,
not a read-only mount), so nothing changes for the rest of the machine.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter import tls

from .central import ROOT, Central, close_central, free_port, start_central, wait_until
from .conftest import EXPORTERD, exporter_config

pytestmark = pytest.mark.timeout(90)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=ROOT
    )


def assert_one_line(result: subprocess.CompletedProcess[str], prog: str, path: str, problem: str) -> None:
    """Exit 2, and stderr is one line: `prog: PATH: …problem…` (no traceback)."""
    assert result.returncode == 2, f"exit {result.returncode}; stderr:\n{result.stderr[-3000:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: {path}: "), lines[0]
    assert problem in lines[0], lines[0]


@pytest.fixture
def stopped() -> Iterator[Central]:
    """A controllerd + routerd that ran once (state, keys and database exist) and were stopped."""
    central = start_central("jss-")
    try:
        central.close()
        yield central
    finally:
        close_central(central)


def test_a_corrupt_database_is_one_line_naming_it_and_exit_2(stopped: Central) -> None:
    database = os.path.join(stopped.state, "controller.db")
    Path(database).write_bytes(b"this is not a database, just garbage " * 200)

    result = run(stopped.controller_argv())

    assert_one_line(result, "jumpstarter-controllerd", database, "file is not a database")


def test_a_truncated_signing_key_is_one_line_naming_it_and_exit_2(stopped: Central) -> None:
    key = Path(stopped.signing_key)
    key.write_bytes(key.read_bytes()[:100])

    result = run(stopped.controller_argv())

    assert_one_line(result, "jumpstarter-controllerd", stopped.signing_key, "truncated or corrupt")
    assert len(key.read_bytes()) == 100, "the damaged key must be left for the admin, not replaced"


def test_a_read_only_state_directory_is_one_line_naming_it_and_exit_2(stopped: Central) -> None:
    state = stopped.state
    # A read-only bind mount of the state directory, visible only to this controllerd.
    script = f'mount --bind "{state}" "{state}" && mount -o remount,ro,bind "{state}" && exec "$@"'
    result = run(["unshare", "--mount", "sh", "-c", script, "sh", *stopped.controller_argv()])

    assert_one_line(
        result, "jumpstarter-controllerd", os.path.join(state, "controller.db"), "Read-only file system"
    )


def test_with_umask_0_the_state_directory_is_0700_and_database_and_keys_0600() -> None:
    central = Central(tempfile.mkdtemp(prefix="jss-", dir="/tmp"), umask=0)
    try:
        central.start_controller()
        database = os.path.join(central.state, "controller.db")
        # -wal and -shm exist while the database is open (WAL mode).
        wait_until(lambda: os.path.exists(database + "-shm"), 20, "controller.db-shm")
        assert os.path.exists(database + "-wal")
        directories = [central.state, os.path.dirname(central.signing_key)]
        assert {d: oct(mode(d)) for d in directories} == {d: oct(0o700) for d in directories}
        files = [
            database,
            database + "-wal",
            database + "-shm",
            central.signing_key,
            os.path.join(central.state, "controllerd", "tls.key"),
            os.path.join(central.state, "controllerd", "ca.key"),  # the lab CA's key
            central.router_key,
        ]
        assert {f: oct(mode(f)) for f in files} == {f: oct(0o600) for f in files}
        assert mode(central.tls_cert) == 0o644  # the certificate is public: clients need it
    finally:
        close_central(central)


# -- routerd ---------------------------------------------------------------------------------------


def test_routerd_with_a_truncated_tls_key_is_one_line_naming_it_and_exit_2(stopped: Central) -> None:
    key = os.path.join(stopped.state, "controllerd", "tls.key")
    Path(key).write_bytes(Path(key).read_bytes()[:60])

    result = run(stopped.router_argv())

    assert_one_line(result, "jumpstarter-routerd", key, "not an unencrypted PEM private key")


def test_routerd_with_its_listen_address_taken_is_one_line_and_exit_2(stopped: Central) -> None:
    stopped.start_controller()  # holds its port: routerd is told to listen there
    argv = stopped.router_argv(listen=stopped.endpoint)

    result = run(argv)

    # grpc's C core prints its own "Failed to add port" line first; ours is the last, and the only one.
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    config = os.path.join(stopped.directory, "routerd.yaml")
    assert last.startswith(f"jumpstarter-routerd: {config}: listen: cannot listen on {stopped.endpoint}"), (
        last
    )


def test_routerd_with_umask_0_creates_its_key_and_certificate_private(tmp_path: Path) -> None:
    directory = tmp_path / "fresh"
    central = Central(str(tmp_path))
    tls = directory / "tls"
    argv = central.router_argv(
        listen=f"127.0.0.1:{free_port()}",
        tls={"cert": str(tls / "tls.crt"), "key": str(tls / "tls.key")},
        router_key_file=str(directory / "keys" / "router.key"),
    )
    process = subprocess.Popen(
        [*argv, "--create-key"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, umask=0, cwd=ROOT
    )
    try:
        wait_until(lambda: (tls / "tls.crt").exists() or process.poll() is not None, 30, "the certificate")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
    finally:
        process.terminate()
        process.wait(10)
    assert {p.name: oct(mode(str(p))) for p in (directory, tls, directory / "keys")} == {
        "fresh": oct(0o700),
        "tls": oct(0o700),
        "keys": oct(0o700),
    }
    assert mode(str(tls / "tls.key")) == 0o600
    assert mode(str(directory / "keys" / "router.key")) == 0o600


# -- exporterd -------------------------------------------------------------------------------------

INVENTORY = """\
controller: {{endpoint: "127.0.0.1:1", namespace: lab, token_dir: "{tokens}"}}
socket_dir: "{sockets}"
boards:
  - name: board1
    export:
      power: {{type: power.mock}}
"""


def test_exporterd_with_an_unreadable_token_file_is_one_line_naming_it_and_exit_2(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    (tokens / "board1.token").mkdir(parents=True)  # a directory where the token file should be
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY.format(tokens=tokens, sockets=tmp_path / "sockets"))

    result = run([*EXPORTERD, "--inventory", str(inventory), "--board", "board1"])

    assert_one_line(result, "jumpstarter-exporterd", str(tokens / "board1.token"), "Is a directory")


@pytest.mark.parametrize(
    ("broken", "problem"),
    [("tls-key", "not an unencrypted PEM private key"), ("passphrase-file", "Is a directory")],
)
def test_exporterd_direct_mode_with_a_bad_key_or_passphrase_file_is_one_line_and_exit_2(
    tmp_path: Path, broken: str, problem: str
) -> None:
    config = tmp_path / "board.yaml"
    config.write_text(exporter_config("power: {type: power.mock}"))
    files = {
        "tls-cert": tmp_path / "tls.crt",
        "tls-key": tmp_path / "tls.key",
        "passphrase-file": tmp_path / "pass",
    }
    cert, key = tls.generate_self_signed(["localhost"])
    files["tls-cert"].write_bytes(cert)
    files["tls-key"].write_bytes(key[: len(key) // 2] if broken == "tls-key" else key)
    if broken == "passphrase-file":
        files["passphrase-file"].mkdir()
    else:
        files["passphrase-file"].write_text("open sesame\n")
    options = [arg for name, path in files.items() for arg in (f"--{name}", str(path))]
    argv = [*EXPORTERD, "--config", str(config), "--socket", str(tmp_path / "b.sock")]

    result = run([*argv, "--listen", f"127.0.0.1:{free_port()}", *options])

    assert_one_line(result, "jumpstarter-exporterd", str(files[broken]), problem)
