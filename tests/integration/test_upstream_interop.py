"""Interop with upstream Jumpstarter 0.9.0 (PyPI), in both directions, with real processes.

Upstream lives in its own virtualenv (its import name `jumpstarter` clashes with
ours): `scripts/upstream-venv` creates it, `JUMPSTARTER_UPSTREAM_VENV` points at it
(default `<repo>/.venv-upstream`). Without it these tests fail, they never skip.

- upstream -> ours: upstream `j` and the upstream client library drive our exporterd.
- ours -> upstream: `jmp shell --exporter-config FILE -- CMD` serves an upstream
  ExporterConfig in-process and runs our CLI / client library as CMD.

Upstream processes run with a scrubbed environment (no PYTHONPATH, cwd = tmp_path)
so that they can never import our `jumpstarter` package by accident.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_VERSION = "0.9.0"
UPSTREAM_DISTS = (
    "jumpstarter",
    "jumpstarter_cli",
    "jumpstarter_driver_power",
    "jumpstarter_driver_network",
    "jumpstarter_driver_shell",
    "jumpstarter_driver_pyserial",
    "jumpstarter_driver_composite",
    "jumpstarter_driver_opendal",
)
HEADER = (
    "apiVersion: jumpstarter.dev/v1alpha1\n"
    "kind: ExporterConfig\n"
    "metadata:\n  namespace: default\n  name: {name}\n"
    'endpoint: ""\n'
    'token: ""\n'
    "export:\n"
)


def exporter_config(name: str, export: str) -> str:
    return HEADER.format(name=name) + textwrap.indent(textwrap.dedent(export).strip("\n"), "  ") + "\n"


# -- the upstream virtualenv -------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    venv: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def j(self) -> str:
        return str(self.venv / "bin" / "j")

    @property
    def jmp(self) -> str:
        return str(self.venv / "bin" / "jmp")


def upstream() -> Upstream:
    """The upstream venv, checked: fails the calling test (never skips) when it is not usable."""
    venv = Path(os.environ.get("JUMPSTARTER_UPSTREAM_VENV") or REPO / ".venv-upstream")
    hint = (
        f"upstream Jumpstarter {UPSTREAM_VERSION} venv not usable at {venv}: "
        f"run `scripts/upstream-venv {venv}` (or set JUMPSTARTER_UPSTREAM_VENV)"
    )
    for script in ("python", "j", "jmp"):
        if not os.access(venv / "bin" / script, os.X_OK):
            pytest.fail(f"{hint} [missing bin/{script}]", pytrace=False)
    site = glob.glob(str(venv / "lib" / "python3*" / "site-packages"))
    for dist in UPSTREAM_DISTS:
        if not any(os.path.isdir(os.path.join(s, f"{dist}-{UPSTREAM_VERSION}.dist-info")) for s in site):
            pytest.fail(f"{hint} [{dist} {UPSTREAM_VERSION} not installed]", pytrace=False)
    return Upstream(venv)


def scrubbed_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Our environment minus anything that could point a process at the wrong code or target."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JMP_", "JUMPSTARTER_", "PYTHON", "VIRTUAL_ENV", "_JMP_"))
    }
    env.update(COLUMNS="250", TERM="dumb", NO_COLOR="1", HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def run(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"command {result.args!r} exited {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}"
        f"\n--- stderr ---\n{result.stderr[-3000:]}"
    )


def our_cli() -> list[str]:
    """Our `jumpstarter` console script, from the interpreter running these tests."""
    script = Path(sys.executable).parent / "jumpstarter"
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "jumpstarter.cli.main"]


# -- our exporterd ----------------------------------------------------------------


def get_report(socket_path: str, timeout: float = 1.0) -> Any:
    import grpc
    from google.protobuf import empty_pb2

    from jumpstarter.v1 import jumpstarter_pb2_grpc

    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        return jumpstarter_pb2_grpc.ExporterServiceStub(channel).GetReport(empty_pb2.Empty(), timeout=timeout)


@dataclass
class OurExporter:
    socket: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_for_record(self, timeout: float = 5, **fields: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if all(record.get(k) == v for k, v in fields.items()):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no exporterd log record with {fields}; log:\n{self.log()[-3000:]}")
            time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def our_exporterd(tmp_path: Path) -> Iterator[Callable[[str], OurExporter]]:
    """`start(config_text)` runs our exporterd on a unix socket and waits until GetReport answers."""
    started: list[subprocess.Popen[bytes]] = []
    # unix socket paths are limited to ~107 bytes: tmp_path can be too long for one
    socket_dir = tempfile.mkdtemp(prefix="jsup-", dir="/tmp")

    def start(config_text: str) -> OurExporter:
        index = len(started)
        config = tmp_path / f"exporter{index}.yaml"
        config.write_text(config_text)
        log_path = tmp_path / f"exporterd{index}.log"
        socket_path = os.path.join(socket_dir, f"b{index}.sock")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "exporterd.main",
                    "--config",
                    str(config),
                    "--socket",
                    socket_path,
                    "--log-format",
                    "json",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        started.append(process)
        exporter = OurExporter(socket_path, process, log_path)
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise AssertionError(f"exporterd exited with {process.returncode}:\n{exporter.log()[-3000:]}")
            if os.path.exists(socket_path):
                try:
                    get_report(socket_path)
                    return exporter
                except Exception:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"exporterd did not answer GetReport within 15 s:\n{exporter.log()[-3000:]}"
                )
            time.sleep(0.02)

    try:
        yield start
    finally:
        for process in started:
            _stop(process)
        shutil.rmtree(socket_dir, ignore_errors=True)


def j(up: Upstream, exporter: OurExporter, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Upstream `j ARGS` against our exporter (JMP_DRIVERS_ALLOW=UNSAFE: upstream needs it to load any client)."""
    env = scrubbed_env(tmp_path, JUMPSTARTER_HOST=exporter.socket, JMP_DRIVERS_ALLOW="UNSAFE")
    result = run([up.j, *args], env, tmp_path)
    if upstream_died_finalizing(result):  # its own grpc threads at interpreter exit: run it once more
        result = run([up.j, *args], env, tmp_path)
    return result


def upstream_died_finalizing(result: subprocess.CompletedProcess[str]) -> bool:
    """Upstream's client aborted while Python was shutting down (seen about once in 3,000 runs under
    load: "PyGILState_Release … Python runtime state: finalizing", SIGABRT or SIGSEGV). That is a
    crash inside upstream's process after its work, not an answer from our side; any other failure
    is returned as it is."""
    return result.returncode in (-6, -11) and "Python runtime state: finalizing" in result.stderr


# -- upstream -> ours ----------------------------------------------------------------


def test_upstream_j_power_on_off_switches_our_exporter(our_exporterd, tmp_path):
    up = upstream()
    marker = tmp_path / "board-powered"
    exporter = our_exporterd(
        exporter_config(
            "interop-power",
            f"""
        power:
          type: jumpstarter_driver_power.driver.MockPower
        relay:
          type: power.command
          config:
            on: "touch '{marker}'"
            off: "rm -f '{marker}'"
    """,
        )
    )

    result = j(up, exporter, tmp_path, "relay", "on")
    assert result.returncode == 0, explain(result)
    assert marker.exists(), "upstream `j relay on` did not run our power.command `on`"

    result = j(up, exporter, tmp_path, "relay", "off")
    assert result.returncode == 0, explain(result)
    assert not marker.exists(), "upstream `j relay off` did not run our power.command `off`"

    result = j(up, exporter, tmp_path, "power", "on")
    assert result.returncode == 0, explain(result)
    exporter.wait_for_record(event="power on", logger="driver.MockPower")

    # upstream validates readings strictly (pydantic PowerReading): floats must come back as floats
    result = j(up, exporter, tmp_path, "power", "read", "--count", "1")
    assert result.returncode == 0, explain(result)
    assert "voltage=5.0 V  current=2.0 A" in result.stdout, explain(result)

    result = j(up, exporter, tmp_path, "power", "off")
    assert result.returncode == 0, explain(result)
    exporter.wait_for_record(event="power off", logger="driver.MockPower")


SHELL_EXPORT = """
    sh:
      type: jumpstarter_driver_shell.driver.Shell
      config:
        methods:
          greet:
            command: 'echo "hello $1 from $WHO"; echo "note on stderr" >&2'
            env_from_client: [WHO]  # ours: the client may set WHO (upstream ignores the key)
          fail: 'echo "failing now"; echo "boom" >&2; exit 3'
"""


def test_upstream_j_shell_method_output_and_exit_code_come_through(our_exporterd, tmp_path):
    up = upstream()
    exporter = our_exporterd(exporter_config("interop-shell", SHELL_EXPORT))

    result = j(up, exporter, tmp_path, "sh", "greet", "-e", "WHO=upstream", "world")
    assert result.returncode == 0, explain(result)
    assert "hello world from upstream" in result.stdout, explain(result)
    assert "note on stderr" in result.stderr, explain(result)

    result = j(up, exporter, tmp_path, "sh", "fail")
    assert "failing now" in result.stdout, explain(result)
    assert "boom" in result.stderr, explain(result)
    ours = result.returncode

    # Upstream 0.9 `j` drops a method's non-zero exit code: the code travels as a protobuf
    # double, the client gets 3.0 and only exits with `int` results. Same code against
    # upstream's own exporter: ours must behave exactly like it (the code itself is checked
    # through the client library in the next test).
    config = tmp_path / "upstream-shell.yaml"
    config.write_text(exporter_config("upstream-shell", SHELL_EXPORT))
    probe = run(
        [
            up.jmp,
            "shell",
            "--exporter-config",
            str(config),
            "--",
            "bash",
            "-c",
            f"'{up.j}' sh fail; echo \"j-exit=$?\"",
        ],
        scrubbed_env(tmp_path),
        tmp_path,
    )
    assert "failing now" in probe.stdout, explain(probe)
    theirs = int(probe.stdout.rsplit("j-exit=", 1)[1].split()[0])
    assert ours == theirs, f"`j sh fail` exits {ours} against our exporter, {theirs} against upstream's"


UPSTREAM_CLIENT_SCRIPT = r"""
import json
from jumpstarter.utils.env import env  # upstream: a client for $JUMPSTARTER_HOST

out = {}
with env() as client:
    out["clients"] = {name: type(child).__name__ for name, child in client.children.items()}
    echo = client.children["echo"]
    with echo.stream() as stream:
        out["echo"] = []
        for payload in (b"hello from upstream", bytes(range(256)) * 1024):
            stream.send(payload)
            received = b""
            while len(received) < len(payload):
                received += stream.receive()
            out["echo"].append([len(payload), received == payload])
    out["shell_code"] = client.children["sh"].fail()
    out["readings"] = [reading.model_dump() for reading in client.children["power"].read()]
print("RESULT " + json.dumps(out))
"""


def test_upstream_client_library_round_trips_bytes_through_our_echo_stream(our_exporterd, tmp_path):
    up = upstream()
    exporter = our_exporterd(
        exporter_config(
            "interop-lib",
            textwrap.dedent("""
        echo:
          type: jumpstarter_driver_network.driver.EchoNetwork
        power:
          type: power.mock
    """)
            + textwrap.dedent(SHELL_EXPORT),
        )
    )
    script = tmp_path / "upstream_client.py"
    script.write_text(UPSTREAM_CLIENT_SCRIPT)

    env = scrubbed_env(tmp_path, JUMPSTARTER_HOST=exporter.socket, JMP_DRIVERS_ALLOW="UNSAFE")
    result = run([up.python, str(script)], env, tmp_path)

    assert result.returncode == 0, explain(result)
    assert "RESULT " in result.stdout, explain(result)
    out = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert out["clients"] == {"echo": "NetworkClient", "power": "PowerClient", "sh": "ShellClient"}
    assert out["echo"] == [[19, True], [256 * 1024, True]]
    assert out["shell_code"] == 3, "the shell method's exit code did not reach the upstream client"
    assert out["readings"] == [{"voltage": 5.0, "current": 0.0}]


def test_upstream_j_flashes_and_dumps_through_our_storage_driver(our_exporterd, tmp_path):
    up = upstream()
    disk = tmp_path / "disk.img"
    exporter = our_exporterd(
        exporter_config(
            "interop-storage",
            f"""
        storage:
          type: storage.file
          config:
            path: "{disk}"
    """,
        )
    )
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(1 << 20) + b"end of image")

    # plain upload: upstream opens a resource stream, then calls flash(handle, None)
    result = j(up, exporter, tmp_path, "storage", "flash", str(image))
    assert result.returncode == 0, explain(result)
    assert disk.read_bytes() == image.read_bytes()

    # compressed upload: the exporter decompresses (it echoes the encoding as accepted)
    packed = tmp_path / "image2.raw.gz"
    second = os.urandom(300_000) * 2
    packed.write_bytes(gzip.compress(second))
    result = j(up, exporter, tmp_path, "storage", "flash", "--compression", "gzip", str(packed))
    assert result.returncode == 0, explain(result)
    assert disk.read_bytes() == second

    # download: dump(handle, None) sends the target back through the resource stream
    dumped = tmp_path / "dumped.img"
    result = j(up, exporter, tmp_path, "storage", "dump", str(dumped))
    assert result.returncode == 0, explain(result)
    assert dumped.read_bytes() == second


# -- ours -> upstream ------------------------------------------------------------------

UPSTREAM_EXPORT = """
    power:
      type: jumpstarter_driver_power.driver.MockPower
    echo:
      type: jumpstarter_driver_network.driver.EchoNetwork
    sh:
      type: jumpstarter_driver_shell.driver.Shell
      config:
        methods:
          mark: 'echo "marked by $0" > "$1"; echo "wrote $1"'
          fail: 'echo "failing now"; exit 3'
          greet:
            command: 'echo "hello $1"'
            description: Say hello to someone
"""

# Runs inside `jmp shell` (JUMPSTARTER_HOST = upstream's socket) with OUR interpreter:
# our CLI as subprocesses (upstream's local shell exits 0 whatever CMD does, so every
# result is reported here), then our client library on upstream's echo stream.
OUR_PROBE = r"""
import json, os, subprocess, sys
cli = json.loads(sys.argv[1])
out = {"host": os.environ.get("JUMPSTARTER_HOST")}
for name, args in json.loads(sys.argv[2]).items():
    r = subprocess.run(cli + args, capture_output=True, text=True, timeout=30)
    out[name] = {"code": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
import jumpstarter
with jumpstarter.connect(os.environ["JUMPSTARTER_HOST"]) as board, board.echo.open() as stream:
    payload = os.urandom(100_000)
    stream.send(payload)
    received = b""
    while len(received) < len(payload):
        chunk = stream.receive()
        if not chunk:
            break
        received += chunk
    out["echo"] = received == payload
print("RESULT " + json.dumps(out), flush=True)
"""


def test_our_cli_and_client_drive_an_upstream_exporter_in_jmp_shell(tmp_path):
    up = upstream()
    config = tmp_path / "upstream.yaml"
    config.write_text(exporter_config("upstream-board", UPSTREAM_EXPORT))
    marker = tmp_path / "marked"
    probe = tmp_path / "probe.py"
    probe.write_text(OUR_PROBE)
    commands = {
        "power_on": ["power", "on"],
        "power_off": ["power", "off"],
        "describe": ["describe"],
        "mark": ["sh", "mark", str(marker)],
        "greet": ["sh", "greet", "ours"],
        "fail": ["sh", "fail"],
    }

    result = run(
        [
            up.jmp,
            "shell",
            "--exporter-config",
            str(config),
            "--",
            sys.executable,
            str(probe),
            json.dumps(our_cli()),
            json.dumps(commands),
        ],
        scrubbed_env(tmp_path),
        tmp_path,
        timeout=90,
    )

    assert result.returncode == 0, explain(result)
    assert "RESULT " in result.stdout, explain(result)
    out = json.loads(result.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert out["host"], "jmp shell did not set JUMPSTARTER_HOST"

    for name in ("power_on", "power_off", "describe", "mark", "greet"):
        assert out[name]["code"] == 0, f"our `jumpstarter {' '.join(commands[name])}`: {out[name]}"
    # upstream's exporter logs in the jmp process (rich omits a logger name repeated on the next line)
    logs = [
        line.split("INFO", 1)[1].strip()
        for line in (result.stdout + result.stderr).splitlines()
        if "INFO" in line
    ]
    assert "[driver.MockPower] power on" in logs, explain(result)
    assert logs[logs.index("[driver.MockPower] power on") + 1] in (
        "power off",
        "[driver.MockPower] power off",
    ), explain(result)

    describe = out["describe"]["stdout"]
    for line in (
        "power: PowerClient [jumpstarter_driver_power.client.PowerClient]",
        "echo: NetworkClient [jumpstarter_driver_network.client.NetworkClient]",
        "sh: ShellClient [jumpstarter_driver_shell.client.ShellClient]",
        "greet: Say hello to someone",
    ):
        assert line in describe, f"{line!r} not in our describe output:\n{describe}"

    assert marker.read_text() == "marked by mark\n"
    assert f"wrote {marker}" in out["mark"]["stdout"]
    assert "hello ours" in out["greet"]["stdout"]
    assert out["fail"]["code"] == 3 and "failing now" in out["fail"]["stdout"], out["fail"]
    assert out["echo"] is True, "our client's echo round trip through upstream's EchoNetwork failed"


def test_our_exporterd_serves_the_same_upstream_config(our_exporterd, tmp_path):
    """The ExporterConfig upstream serves above, unchanged, in our exporterd (incl. upstream's
    `methods: {name: {command, description}}` form of the shell driver)."""
    up = upstream()
    exporter = our_exporterd(exporter_config("upstream-board", UPSTREAM_EXPORT))

    result = j(up, exporter, tmp_path, "sh", "greet", "both")
    assert result.returncode == 0, explain(result)
    assert "hello both" in result.stdout, explain(result)

    result = j(up, exporter, tmp_path, "sh", "--help")
    assert "Say hello to someone" in result.stdout, explain(result)


# -- an upstream exporter behind our controller ----------------------------------------------


def _upstream_shell(
    up: Upstream, client_config: str, selector: str, command: str, tmp_path: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """Upstream `jmp shell` leasing through our controller, running `sh -c COMMAND` with upstream `j`."""
    env = scrubbed_env(tmp_path, PATH=f"{up.venv / 'bin'}:{os.environ.get('PATH', '')}")
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [up.jmp, "shell", "--client-config", client_config, "-l", selector, "--", "sh", "-c", command],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _upstream_exporter(
    up: Upstream, central: Any, name: str, tmp_path: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """Upstream `jmp run` for a new exporter NAME (label board=NAME) of our controller, with a MockPower."""
    import yaml

    identity = central.create("exporter", "default", name, board=name)
    document = yaml.safe_load(Path(identity.config).read_text())
    document["export"] = {"power": {"type": "jumpstarter_driver_power.driver.MockPower"}}
    Path(identity.config).write_text(yaml.safe_dump(document))
    return upstream_jmp_run(up, identity.config, tmp_path, log_path)


def upstream_jmp_run(up: Upstream, config: str, tmp_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Upstream's exporter, `jmp run --exporter-config CONFIG`, its output into `log_path`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [up.jmp, "run", "--exporter-config", config],
            env=scrubbed_env(tmp_path),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _process_tree(pid: int) -> list[int]:
    """PID and all its descendants (upstream `jmp run` serves from a child process)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in glob.glob(f"/proc/{current}/task/*/children"):
            with open(task) as handle:
                todo.extend(int(child) for child in handle.read().split())
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(300)
def test_two_clients_queued_on_an_upstream_exporter_are_served_in_order(tmp_path):
    """Back-to-back leases: the exporter must hear `leased=false` before the next lease, or it never
    starts it (upstream 0.9 waits for the end of one lease before it takes the next)."""
    from .central import close_central, is_true, start_central, wait_until

    up = upstream()
    central = start_central(prefix="jsup-q-")
    processes: list[subprocess.Popen[bytes]] = []
    release = tmp_path / "release.fifo"
    os.mkfifo(release)
    hold = os.open(release, os.O_RDWR)  # keeps the fifo's buffer alive until the first client reads it
    try:
        exporter_log = tmp_path / "upstream-exporter.log"
        processes.append(_upstream_exporter(up, central, "upq", tmp_path, exporter_log))
        alice = central.create("client", "default", "alice")
        bob = central.create("client", "default", "bob")
        bob_peer = central.peer(bob)
        wait_until(
            lambda: (e := bob_peer.get_exporter("upq")).online and e.status == 2,
            60,
            "the upstream exporter online and available",
        )

        started, served = tmp_path / "alice-started", tmp_path / "bob-served"
        first = _upstream_shell(
            up,
            alice.config,
            "board=upq",
            f"j power on && touch '{started}' && read line < '{release}'",
            tmp_path,
            tmp_path / "alice.log",
        )
        processes.append(first)
        wait_until(lambda: started.exists() or first.poll() is not None, 90, "alice's shell on the board")
        assert started.exists(), (tmp_path / "alice.log").read_text(errors="replace")[-3000:]

        second = _upstream_shell(
            up, bob.config, "board=upq", f"j power off && touch '{served}'", tmp_path, tmp_path / "bob.log"
        )
        processes.append(second)

        def bob_queued() -> bool:
            leases = [le for le in bob_peer.list_leases() if le.client == bob.resource]
            return bool(leases) and not is_true(leases[0], "Ready")

        wait_until(lambda: bob_queued() or second.poll() is not None, 60, "bob's lease queued behind alice's")
        assert second.poll() is None, (tmp_path / "bob.log").read_text(errors="replace")[-3000:]
        os.write(hold, b"done\n")  # alice's shell ends: EndSession, release, and bob's lease is granted
        assert first.wait(timeout=60) == 0, (tmp_path / "alice.log").read_text(errors="replace")[-3000:]

        try:
            code = second.wait(timeout=120)  # bounded: a stalled exporter never serves bob
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0 and served.exists(), (
            f"bob's shell: exit {code}\n{(tmp_path / 'bob.log').read_text(errors='replace')[-3000:]}"
            f"\n--- upstream exporter ---\n{exporter_log.read_text(errors='replace')[-3000:]}"
        )
        log_text = exporter_log.read_text(errors="replace")
        assert log_text.index("power on") < log_text.rindex("power off"), log_text[-3000:]
        # served on the lease it queued: with a stalled exporter, upstream's jmp shell gives up on
        # that lease after ~20 s ("Exporter upq is unreachable, releasing lease and retrying")
        mine = [le for le in bob_peer.list_leases(only_active=False) if le.client == bob.resource]
        assert len(mine) == 1, (tmp_path / "bob.log").read_text(errors="replace")[-3000:]
        bob_peer.close()
    finally:
        for process in reversed(processes):
            _stop(process)
        os.close(hold)
        close_central(central)


@pytest.mark.timeout(240)
def test_a_frozen_upstream_exporter_goes_offline_and_its_lease_resumes_after_sigcont(tmp_path):
    """Upstream exporters send no heartbeat of their own: gRPC keepalive is what tells a frozen one."""
    from .central import close_central, condition, is_true, start_central, wait_until

    up = upstream()
    offline_after = 3.0
    central = start_central(prefix="jsup-f-", offline_after=offline_after)
    processes: list[subprocess.Popen[bytes]] = []
    frozen: list[int] = []
    try:
        exporter_log = tmp_path / "upstream-exporter.log"
        processes.append(_upstream_exporter(up, central, "upfz", tmp_path, exporter_log))
        alice = central.peer(central.create("client", "default", "alice"))
        wait_until(
            lambda: (e := alice.get_exporter("upfz")).online and e.status == 2,
            60,
            "the upstream exporter online and available",
        )
        lease = alice.create_lease(exporter_name="upfz", duration=300)
        wait_until(lambda: alice.get_exporter("upfz").status == 4, 60, "the upstream exporter LEASE_READY")

        frozen = _process_tree(processes[0].pid)
        _signal_all(frozen, signal.SIGSTOP)
        paused = alice.wait_lease(
            lease.name, lambda le: is_true(le, "Paused"), "Paused=True", offline_after + 20
        )
        assert condition(paused, "Paused").reason == "ExporterOffline"
        assert not alice.get_exporter("upfz").online
        _signal_all(frozen, signal.SIGCONT)
        frozen = []

        alice.wait_lease(lease.name, lambda le: condition(le, "Paused") is None, "resumed", 60)
        wait_until(lambda: alice.get_exporter("upfz").online, 30, "the upstream exporter back online")
        alice.delete_lease(lease.name)
        alice.close()
    finally:
        _signal_all(frozen, signal.SIGCONT)
        for process in processes:
            _stop(process)
        close_central(central)
