"""Remote use through our controllerd + routerd with TLS on loopback: leases, tunnels, CLI, interop.

One stack per module: controllerd and routerd share one self-signed certificate
(so a client config's single CA verifies both) and one router key; clients and
exporters come from `jumpstarter admin create …` (upstream-format configs), and a
real exporterd registers the board `board=x`. Every test releases what it leases.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import jumpstarter
from jumpstarter import routertoken, tls
from jumpstarter.client.remote import ControllerClient, RemoteError, lease_state
from jumpstarter.config.client import load_client_config

from .conftest import PipeCollector, read_until, stop, unused_tcp_port
from .test_upstream_interop import explain, scrubbed_env, upstream, upstream_jmp_run

PY = sys.executable
CLI = [PY, "-m", "jumpstarter.cli.main"]
ROOT = Path(__file__).resolve().parents[2]
BIN = os.path.dirname(PY)


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Stack:
    directory: str
    endpoint: str
    ca_file: str
    admin_socket: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)

    def log(self, name: str) -> str:
        with open(self.logs[name], errors="replace") as handle:
            return handle.read()

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs[name] = os.path.join(self.directory, f"{name}.log")
        with open(self.logs[name], "ab") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )
        self.processes.append(process)
        return process

    def admin(self, *args: str) -> str:
        result = subprocess.run(
            [*CLI, "admin", "--admin-socket", self.admin_socket, "-n", "lab", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def create_client(self, name: str) -> str:
        path = os.path.join(self.directory, f"{name}.yaml")
        self.admin("create", "client", name, "-o", path)
        return path

    def create_exporter(self, name: str, labels: dict[str, str], export: dict[str, Any]) -> str:
        path = os.path.join(self.directory, f"{name}.yaml")
        self.admin("create", "exporter", name, *[f"-l{k}={v}" for k, v in labels.items()], "-o", path)
        with open(path) as handle:
            document = yaml.safe_load(handle)
        document["export"] = export
        with open(path, "w") as handle:
            yaml.safe_dump(document, handle)
        return path

    def wait_available(self, client: ControllerClient, name: str, timeout: float = 20) -> None:
        """The exporter is online, free (AVAILABLE) and holds no active lease."""

        def available() -> bool:
            exporters = {e.name.rsplit("/", 1)[-1]: e for e in client.list_exporters()}
            exporter = exporters.get(name)
            busy = any(le.exporter.endswith(f"/{name}") for le in client.list_leases())
            return exporter is not None and exporter.online and exporter.status == 2 and not busy

        wait_until(available, timeout, f"exporter {name} online and available")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    directory = tempfile.mkdtemp(prefix="jsrm-", dir="/tmp")
    cport, rport = unused_tcp_port(), unused_tcp_port()
    cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    tls.load_or_create(cert, key, ["127.0.0.1", "localhost"])  # one pair for both daemons: one CA
    router_key = os.path.join(directory, "router.key")
    routertoken.generate_key(router_key)
    s = Stack(directory, f"127.0.0.1:{cport}", cert, os.path.join(directory, "admin.sock"))
    controller_yaml = os.path.join(directory, "controllerd.yaml")
    with open(controller_yaml, "w") as handle:
        json.dump(
            {
                "listen": s.endpoint,
                "endpoint": s.endpoint,
                "state_dir": os.path.join(directory, "state"),
                "tls": {"cert": cert, "key": key},
                "router_key_file": router_key,
                "routers": [f"127.0.0.1:{rport}"],
                "admin_socket": s.admin_socket,
                "metrics": None,
            },
            handle,
        )
    router_yaml = os.path.join(directory, "routerd.yaml")
    with open(router_yaml, "w") as handle:
        json.dump(
            {
                "listen": f"127.0.0.1:{rport}",
                "tls": {"cert": cert, "key": key},
                "router_key_file": router_key,
                "lone_peer_timeout": 30,
                "metrics": None,
            },
            handle,
        )
    try:
        controller = s.spawn(
            "controllerd", [PY, "-m", "controllerd.main", "--config", controller_yaml, "--log-format", "json"]
        )
        router = s.spawn(
            "routerd", [PY, "-m", "routerd.main", "--config", router_yaml, "--log-format", "json"]
        )
        for name, process, port in (("controllerd", controller, cport), ("routerd", router, rport)):
            wait_until(
                lambda process=process, port=port: _listening(port) or _died(process),
                20,
                f"{name} to listen",
            )
            assert process.poll() is None, s.log(name)
        wait_until(lambda: os.path.exists(s.admin_socket), 10, "the admin socket")
        yield s
    finally:
        for process in s.processes:
            if process.poll() is None:
                process.terminate()
        for process in s.processes:
            stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _died(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


@dataclass
class Lab:
    stack: Stack
    alice: str  # client config files
    bob: str
    flag: str  # exists while board1 is powered
    alice_client: ControllerClient

    def client(self, config: str) -> ControllerClient:
        return ControllerClient(load_client_config(config))


@pytest.fixture(scope="module")
def lab(stack: Stack) -> Iterator[Lab]:
    flag = os.path.join(stack.directory, "board1.powered")
    repo = os.path.join(stack.directory, "repo")
    subprocess.run(["git", "init", "-q", repo], check=True)
    methods = {"greet": 'echo "hello $1 from $(hostname)"', "status": f"git -C {repo} status --short"}
    export = {
        "power": {"type": "power.command", "config": {"on": f"touch {flag}", "off": f"rm -f {flag}"}},
        "echo": {"type": "network.echo"},
        "tools": {"type": "shell", "config": {"methods": methods}},
    }
    config = stack.create_exporter("board1", {"board": "x"}, export)
    stack.spawn(
        "board1",
        [
            PY,
            "-m",
            "exporterd.main",
            "--config",
            config,
            "--socket",
            os.path.join(stack.directory, "b1.sock"),
            "--log-format",
            "json",
        ],
    )
    alice = stack.create_client("alice")
    bob = stack.create_client("bob")
    client = ControllerClient(load_client_config(alice))
    stack.wait_available(client, "board1")
    try:
        yield Lab(stack, alice, bob, flag, client)
    finally:
        client.close()


@pytest.fixture
def lab_env(lab: Lab, tmp_path: Path) -> dict[str, str]:
    """Environment for CLI processes: our `jumpstarter` on PATH, a private config home, no target."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["JMP_CLIENT_CONFIG_HOME"] = str(tmp_path / "config")
    env["JUMPSTARTER_BOARDS_DIR"] = str(tmp_path / "no-boards")
    return env


def jmp(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


# -- the whole flow ---------------------------------------------------------------------------


def test_lease_dials_through_the_router_drives_the_board_and_releases(lab: Lab):
    with jumpstarter.lease(selector="board=x", duration="5m", client=lab.alice) as board:
        active = lab.alice_client.list_leases()
        assert [le.exporter.rsplit("/", 1)[-1] for le in active] == ["board1"]
        assert lease_state(active[0])[0] == "ready"

        board.power.on()
        assert os.path.exists(lab.flag), "power on did not run the exporter's power.command"
        with board.echo.open() as stream:
            stream.send(b"round trip through the router")
            received = b""
            while len(received) < len(b"round trip through the router"):
                chunk = stream.receive()
                assert chunk, "echo stream ended early"
                received += chunk
        assert received == b"round trip through the router"
        result = board.tools.run("greet", "alice")
        assert (result.stdout.strip(), result.returncode) == (f"hello alice from {socket.gethostname()}", 0)
        board.power.off()
        assert not os.path.exists(lab.flag)

    ended = lab.alice_client.list_leases(only_active=False)
    assert ended and all(lease_state(le)[0] == "ended" for le in ended)
    assert lab.alice_client.list_leases() == []
    lab.stack.wait_available(lab.alice_client, "board1")


def test_remote_client_cannot_run_a_command_on_the_lab_host_through_git_config(lab: Lab):
    owned = os.path.join(lab.stack.directory, "owned")
    attack = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "core.fsmonitor",
        "GIT_CONFIG_VALUE_0": f"id > {owned}",
    }
    with jumpstarter.lease(selector="board=x", duration="5m", client=lab.alice) as board:
        with pytest.raises(ValueError, match="GIT_CONFIG_"):
            board.tools.run("status", env=attack)
        assert board.tools.run("status").returncode == 0
    assert not os.path.exists(owned), "a remote client's GIT_CONFIG_* ran a command on the lab host"
    lab.stack.wait_available(lab.alice_client, "board1")


def test_shell_with_a_selector_runs_jumpstarter_commands_on_the_leased_board(lab: Lab, lab_env):
    result = jmp(lab_env, "shell", "--client", lab.alice, "-l", "board=x", "--", "jumpstarter", "power", "on")

    assert result.returncode == 0, result.stderr
    assert os.path.exists(lab.flag), "the exporter did not switch the power on"
    assert lab.alice_client.list_leases() == [], "the lease was not released on exit"
    off = jmp(lab_env, "run", "--client", lab.alice, "-l", "board=x", "--", "jumpstarter", "power", "off")
    assert off.returncode == 0, off.stderr
    assert not os.path.exists(lab.flag)
    lab.stack.wait_available(lab.alice_client, "board1")


def test_run_exits_with_the_commands_exit_code_and_releases(lab: Lab, lab_env):
    result = jmp(lab_env, "run", "--client", lab.alice, "-l", "board=x", "--", "sh", "-c", "exit 7")

    assert result.returncode == 7, result.stderr
    assert lab.alice_client.list_leases() == []
    lab.stack.wait_available(lab.alice_client, "board1")


def test_second_client_waits_in_the_queue_and_gets_the_board_after_release(lab: Lab, lab_env, tmp_path):
    held = jmp(
        lab_env,
        "lease",
        "create",
        "--client",
        lab.alice,
        "-l",
        "board=x",
        "--duration",
        "5m",
        "--wait",
        "-o",
        "name",
    )
    assert held.returncode == 0, held.stderr
    lease_name = held.stdout.strip()
    order = tmp_path / "order"
    waiters = []
    for who, config in (("bob", lab.bob), ("carol", lab.alice)):
        waiter = subprocess.Popen(
            [
                *CLI,
                "run",
                "--client",
                config,
                "-l",
                "board=x",
                "--",
                "sh",
                "-c",
                f"jumpstarter power on && echo {who} >> {order}",
            ],
            env=lab_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        waiters.append(waiter)
        position = len(waiters)
        seen = read_until(waiter.stderr, f"queue position {position}", 20)
        assert "waiting: all 1 matching online exporters are leased; queue position" in seen
    try:
        assert not order.exists(), "a queued client ran before the lease was released"
        released = jmp(lab_env, "lease", "release", "--client", lab.alice, lease_name)
        assert (released.returncode, released.stdout.strip()) == (0, f"released {lease_name}"), (
            released.stderr
        )
        for waiter in waiters:
            rest = PipeCollector(waiter.stderr)
            assert waiter.wait(timeout=60) == 0, rest.text
        assert order.read_text().split() == ["bob", "carol"]
    finally:
        for waiter in waiters:
            stop(waiter, signal.SIGINT)
    lab.stack.wait_available(lab.alice_client, "board1")


def exit_code_or_stacks(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The exit code; a process still running after `timeout` is aborted and its threads' stacks
    (PYTHONFAULTHANDLER) become the failure message."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        _, err = process.communicate(timeout=30)
        raise AssertionError(
            f"still running after {timeout:g} s; its stacks:\n{err.decode(errors='replace')}"
        ) from None


def test_ctrl_c_while_queued_withdraws_the_lease_request(lab: Lab, lab_env):
    holder = lab.alice_client.acquire("board=x", duration=300)
    try:
        waiter = subprocess.Popen(
            [*CLI, "run", "--client", lab.bob, "-l", "board=x", "--", "true"],
            env={**lab_env, "PYTHONFAULTHANDLER": "1"},  # SIGABRT on a hang prints every thread's stack
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            read_until(waiter.stderr, "queue position 1", 20)
            with lab.client(lab.bob) as bob:
                assert len(bob.list_leases()) == 2  # alice's active one and bob's pending one
                os.killpg(waiter.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
                # the withdrawal is stored before exit; a hang shows the CLI's stacks, not a bare timeout
                assert exit_code_or_stacks(waiter, 60) == 130
                assert [le.client.rsplit("/", 1)[-1] for le in bob.list_leases()] == ["alice"]
        finally:
            stop(waiter)
    finally:
        lab.alice_client.release(holder.name)
    lab.stack.wait_available(lab.alice_client, "board1")


@pytest.mark.parametrize("to_a_thread", [False, True], ids=["to-the-process", "to-a-grpc-thread"])
def test_sigterm_during_the_command_ends_it_and_releases_the_lease(lab: Lab, lab_env, tmp_path, to_a_thread):
    started = tmp_path / "started"
    runner = subprocess.Popen(
        [
            *CLI,
            "run",
            "--client",
            lab.alice,
            "-l",
            "board=x",
            "--",
            "sh",
            "-c",
            f"touch {started}; exec sleep 30",
        ],
        env=lab_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(started.exists, 20, "the command to start on the leased board")
        assert len(lab.alice_client.list_leases()) == 1
        if to_a_thread:  # the kernel may hand a process's signal to any of its threads
            from .test_cli import tgkill

            others = [int(t) for t in os.listdir(f"/proc/{runner.pid}/task") if int(t) != runner.pid]
            tgkill(runner.pid, others[0], signal.SIGTERM)
        else:
            runner.terminate()  # only the CLI: it passes SIGTERM on to the command, then releases
        assert runner.wait(timeout=20) == 128 + signal.SIGTERM
        assert lab.alice_client.list_leases() == []
    finally:
        stop(runner)
    lab.stack.wait_available(lab.alice_client, "board1")


def test_a_lease_that_ends_under_run_hangs_up_the_command_and_says_why(lab: Lab, lab_env, tmp_path):
    """The session's monitor sees the lease expire: the CLI says so and sends the command SIGHUP."""
    started = tmp_path / "started"
    script = f"trap 'exit 9' HUP; touch {started}; while :; do sleep 0.1; done"
    runner = subprocess.Popen(
        [*CLI, "run", "--client", lab.alice, "-l", "board=x", "--duration", "3s", "--", "sh", "-c", script],
        env=lab_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(started.exists, 30, "the command to start on the leased board")
        _, err = runner.communicate(timeout=90)  # expiry + one monitor interval (10 s) on a loaded machine
        assert runner.returncode == 9, err
        assert "jumpstarter: lease " in err and " ended (" in err, err
        assert lab.alice_client.list_leases() == []
    finally:
        stop(runner)
    lab.stack.wait_available(lab.alice_client, "board1")


def test_a_client_cannot_dial_or_use_another_clients_lease(lab: Lab, lab_env):
    lease = lab.alice_client.acquire("board=x", duration=300)
    name = lease.name.rsplit("/", 1)[-1]
    try:
        with lab.client(lab.bob) as bob, pytest.raises(RemoteError) as caught:
            bob.dial(name)
        assert caught.value.code.name == "PERMISSION_DENIED"
        assert "permission denied" in str(caught.value)

        result = jmp(lab_env, "shell", "--client", lab.bob, "--lease", name, "--", "true")
        assert result.returncode == 1
        assert result.stderr.strip() == f"jumpstarter: error: lease {name} belongs to alice, not to you"
    finally:
        assert lab.alice_client.release(name)
    lab.stack.wait_available(lab.alice_client, "board1")


def test_login_with_only_the_token_saves_a_current_config_that_works(lab: Lab, lab_env, tmp_path):
    token = load_client_config(lab.bob).token
    untrusted = jmp(lab_env, "login", "--token", token)
    assert untrusted.returncode == 1
    assert "is not trusted" in untrusted.stderr and "--ca FILE or --insecure" in untrusted.stderr

    # a controller certificate the system trusts: here, gRPC's default roots point at our CA
    env = {**lab_env, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": lab.stack.ca_file}
    login = jmp(env, "login", "--token", token)
    assert login.returncode == 0, login.stderr
    path = tmp_path / "config" / "clients" / "default.yaml"
    assert f"logged in to {lab.stack.endpoint} as lab/bob" in login.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    saved = load_client_config(str(path))
    assert (saved.endpoint, saved.namespace, saved.name, saved.token) == (
        lab.stack.endpoint,
        "lab",
        "bob",
        token,
    )

    listed = jmp(env, "get", "exporters", "-l", "board=x", "-o", "name")
    assert (listed.returncode, listed.stdout.split()) == (0, ["board1"]), listed.stderr


def test_lease_create_list_extend_transfer_release(lab: Lab, lab_env):
    created = jmp(
        lab_env,
        "lease",
        "create",
        "--client",
        lab.alice,
        "--exporter",
        "board1",
        "--duration",
        "10m",
        "--wait",
        "--tag",
        "ci=yes",
        "-o",
        "json",
    )
    assert created.returncode == 0, created.stderr
    (lease,) = json.loads(created.stdout)
    name = lease["name"].rsplit("/", 1)[-1]
    assert (lease["exporter_name"], lease["tags"], lease["duration"]) == ("board1", {"ci": "yes"}, "600s")

    listed = jmp(lab_env, "lease", "list", "--client", lab.alice, "-o", "name")
    assert listed.stdout.split() == [name]
    assert jmp(lab_env, "lease", "list", "--client", lab.bob, "-o", "name").stdout.split() == []

    extended = jmp(lab_env, "lease", "extend", "--client", lab.alice, name, "--duration", "5m")
    assert extended.returncode == 0, extended.stderr
    assert lab.alice_client.get_lease(name).duration.seconds == 900

    moved = jmp(lab_env, "lease", "transfer", "--client", lab.alice, name, "bob")
    assert moved.returncode == 0, moved.stderr
    assert jmp(lab_env, "lease", "list", "--client", lab.bob, "-o", "name").stdout.split() == [name]
    refused = jmp(lab_env, "lease", "release", "--client", lab.alice, name)
    assert refused.returncode == 1 and "not your lease" in refused.stderr

    released = jmp(lab_env, "lease", "release", "--client", lab.bob, name)
    assert released.returncode == 0, released.stderr
    again = jmp(lab_env, "lease", "release", "--client", lab.bob, name)
    assert (again.returncode, again.stderr.strip()) == (0, f"{name} had already ended")
    lab.stack.wait_available(lab.alice_client, "board1")


def test_unsatisfiable_selector_fails_at_once_with_the_reason(lab: Lab, lab_env):
    result = jmp(lab_env, "run", "--client", lab.alice, "-l", "board=nosuch", "--", "true")

    assert result.returncode == 1
    assert (
        "cannot be acquired: ExporterNotFound: no exporter matches selector 'board=nosuch'" in result.stderr
    )


def test_pytest_plugin_leases_a_board_with_a_selector(lab: Lab, lab_env, tmp_path):
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(f"""
        import os

        def test_power(board):
            board.power.on()
            assert os.path.exists({lab.flag!r})
            board.power.off()
    """)
    )
    result = subprocess.run(
        [
            PY,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            str(tmp_path / "test_inner.py"),
            "--jumpstarter-selector",
            "board=x",
            "--jumpstarter-client",
            lab.alice,
            "--jumpstarter-duration",
            "5m",
        ],
        env=lab_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert lab.alice_client.list_leases() == []
    lab.stack.wait_available(lab.alice_client, "board1")


# -- upstream interop ----------------------------------------------------------------------------


def test_upstream_jmp_shell_leases_our_board_through_our_controller_and_router(lab: Lab, tmp_path):
    up = upstream()
    env = scrubbed_env(tmp_path)
    result = subprocess.run(
        [up.jmp, "shell", "--client-config", lab.alice, "-l", "board=x", "--", up.j, "power", "on"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, explain(result)
    assert os.path.exists(lab.flag), "upstream `j power on` did not reach our exporter"
    lab.stack.wait_available(lab.alice_client, "board1")
    with jumpstarter.lease(selector="board=x", client=lab.alice) as board:
        board.power.off()


def test_our_shell_leases_an_upstream_exporter_registered_with_our_controller(lab: Lab, lab_env, tmp_path):
    up = upstream()
    config = lab.stack.create_exporter(
        "upboard", {"board": "upstream"}, {"power": {"type": "jumpstarter_driver_power.driver.MockPower"}}
    )
    log_path = tmp_path / "upstream-exporter.log"
    exporter = upstream_jmp_run(up, config, tmp_path, log_path)
    try:
        lab.stack.wait_available(lab.alice_client, "upboard", timeout=30)
        result = jmp(
            lab_env,
            "shell",
            "--client",
            lab.alice,
            "-l",
            "board=upstream",
            "--",
            "jumpstarter",
            "power",
            "on",
        )
        assert result.returncode == 0, result.stderr + log_path.read_text(errors="replace")[-3000:]
        wait_until(
            lambda: "power on" in log_path.read_text(errors="replace"), 10, "the upstream exporter's log"
        )
        assert lab.alice_client.list_leases() == []
    finally:
        stop(exporter)


def test_upstream_exporter_and_upstream_jmp_shell_work_through_our_controller_and_router(lab: Lab, tmp_path):
    """The issue's acceptance: both ends upstream 0.9, only controller and router are ours."""
    up = upstream()
    config = lab.stack.create_exporter(
        "upboth", {"board": "upboth"}, {"power": {"type": "jumpstarter_driver_power.driver.MockPower"}}
    )
    log_path = tmp_path / "upstream-exporter.log"
    exporter = upstream_jmp_run(up, config, tmp_path, log_path)
    try:
        lab.stack.wait_available(lab.alice_client, "upboth", timeout=30)
        result = subprocess.run(
            [up.jmp, "shell", "--client-config", lab.alice, "-l", "board=upboth", "--", up.j, "power", "on"],
            env=scrubbed_env(tmp_path),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, explain(result) + log_path.read_text(errors="replace")[-3000:]
        wait_until(
            lambda: "power on" in log_path.read_text(errors="replace"), 10, "the upstream exporter's log"
        )
    finally:
        stop(exporter)
