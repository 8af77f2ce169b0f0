"""Shared parts for the integration tests: real exporterd processes, the CLI, local servers.

Everything runs for real: exporterd subprocesses on unix sockets, the CLI as a
subprocess, TCP and HTTP servers on loopback, the fake board on a pty.
Sockets live in short /tmp directories (unix socket paths are limited to ~107 bytes).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jumpstarter.demo.lab import DemoLab, socket_answers, wait_for

PY = sys.executable
CLI = [PY, "-m", "jumpstarter.cli.main"]
EXPORTERD = [PY, "-m", "exporterd.main"]


def exporter_config(export_yaml: str, name: str = "board") -> str:
    """A complete ExporterConfig document around an indented-or-not `export:` body."""
    body = textwrap.indent(textwrap.dedent(export_yaml).strip("\n"), "  ")
    return (
        "apiVersion: jumpstarter.dev/v1alpha1\n"
        "kind: ExporterConfig\n"
        f"metadata: {{namespace: test, name: {name}}}\n"
        "export:\n"
        f"{body}\n"
    )


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Signal a process we started and reap it (SIGKILL if it does not go)."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def read_until(stream, needle: str, timeout: float) -> str:  # type: ignore[no-untyped-def]
    """Read a subprocess pipe until `needle` appears; returns everything read (TimeoutError otherwise)."""
    fd = stream.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"{needle!r} not seen within {timeout:g}s; got {seen.decode(errors='replace')!r}"
            )
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"pipe closed before {needle!r}; got {seen.decode(errors='replace')!r}")
            seen += chunk
    return seen.decode(errors="replace")


class PipeCollector:
    """Collects everything a subprocess writes to one pipe, in a background thread."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        while chunk := os.read(stream.fileno(), 65536):
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


@pytest.fixture
def workdir() -> Iterator[str]:
    """A short private directory under /tmp (socket paths must stay short)."""
    path = tempfile.mkdtemp(prefix="jsit-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cli_env(workdir: str) -> dict[str, str]:
    """The environment for CLI subprocesses: no inherited target, an empty boards dir."""
    env = dict(os.environ)
    for key in ("JUMPSTARTER_HOST", "JUMPSTARTER_LOG_LEVEL"):
        env.pop(key, None)
    boards = os.path.join(workdir, "no-boards")
    os.makedirs(boards, exist_ok=True)
    env["JUMPSTARTER_BOARDS_DIR"] = boards
    return env


@pytest.fixture
def cli(cli_env: dict[str, str], workdir: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `jumpstarter ARGS...` to completion; returns the CompletedProcess (text)."""

    def run(
        *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            env={**cli_env, **(env or {})},
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=workdir,
        )

    return run


@dataclass
class Exporterd:
    """A running `jumpstarter-exporterd` subprocess."""

    process: subprocess.Popen[bytes]
    socket: str
    config: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop(self.process, sig)


@dataclass
class ExporterdFactory:
    workdir: str
    started: list[Exporterd] = field(default_factory=list)

    def spawn(
        self,
        config_text: str,
        *,
        name: str = "board",
        socket_path: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> Exporterd:
        """Start exporterd without waiting for it."""
        config = os.path.join(self.workdir, f"{name}.yaml")
        with open(config, "w") as handle:
            handle.write(config_text)
        path = socket_path or os.path.join(self.workdir, "boards", f"{name}.sock")
        log_path = os.path.join(self.workdir, f"{name}.log")
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [*EXPORTERD, "--config", config, "--socket", path, "--log-format", "json", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        exporter = Exporterd(process, path, config, log_path)
        self.started.append(exporter)
        return exporter

    def start(self, config_text: str, **kwargs) -> Exporterd:  # type: ignore[no-untyped-def]
        """Start exporterd and wait until its socket answers GetReport."""
        return self.wait_ready(self.spawn(config_text, **kwargs))

    def wait_ready(self, exporter: Exporterd) -> Exporterd:
        try:
            wait_for(lambda: socket_answers(exporter.socket), 15, "exporterd", exporter.process)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}; exporterd output:\n{exporter.log()[-3000:]}") from None
        return exporter


@pytest.fixture
def exporterd(workdir: str) -> Iterator[ExporterdFactory]:
    """`exporterd.start(config_text, name=...)` runs a real exporterd; all are stopped afterwards."""
    factory = ExporterdFactory(workdir)
    try:
        yield factory
    finally:
        for exporter in factory.started:  # signal all first: they shut down in parallel
            if exporter.process.poll() is None:
                exporter.process.terminate()
        for exporter in factory.started:
            stop(exporter.process)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Append any other Popen you start here; they are terminated after the test."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for process in started:
            stop(process)


# -- local servers -----------------------------------------------------------


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A TCP echo server on loopback; yields (host, port)."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class HttpSwitch:
    """A loopback HTTP power switch that records requests and answers `status`."""

    port: int
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    status: int = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def http_switch() -> Iterator[HttpSwitch]:
    switch = HttpSwitch(port=0)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            switch.requests.append((self.command, self.path, self.headers.get("Authorization")))
            body = b'{"ok": true}' if switch.status < 400 else b'{"error": "relay stuck"}'
            self.send_response(switch.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    switch.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield switch
    finally:
        server.shutdown()
        server.server_close()


def unused_tcp_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the demo lab --------------------------------------------------------------


@pytest.fixture
def demo_lab(workdir: str) -> Iterator[DemoLab]:
    """A fake board on a pty + its HTTP switch, served by a real exporterd (one per test)."""
    with DemoLab(directory=workdir, boot_delay=0.01) as lab:
        yield lab


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[DemoLab]:
    """One demo lab for a whole module; tests power-cycle the board themselves."""
    directory = tempfile.mkdtemp(prefix="jsit-lab-", dir="/tmp")
    try:
        with DemoLab(directory=directory, boot_delay=0.01) as lab:
            yield lab
    finally:
        shutil.rmtree(directory, ignore_errors=True)
