"""Real controllerd + routerd on loopback with TLS, and raw-gRPC peers that talk to them.

Used by tests/integration/test_controller.py and tests/bench/bench_controller.py.

- `Central`: one controllerd (`python -m controllerd.main --config …`) and one routerd
  (`python -m routerd.main --config …`) that uses the controller's generated TLS pair
  and router key; the lab CA controllerd creates on first start signs that pair.
  With `own_certs=True` routerd gets its own certificate paths instead and, like a fresh
  install, generates its own pair on first start (signed by the same lab CA next to it).
- Identities come from `jumpstarter admin … create client|exporter NAME -o FILE`
  (`Central.create`), or from the same admin call in-process when a test needs dozens.
- `Peer`: PROTOCOL.md §3 metadata around raw `ClientService`/`ControllerService` stubs.
- `StubExporter`: Register/ReportStatus/Status/Listen as an exporter would, optionally
  answering `leased=true` with Listen + LEASE_READY and `leased=false` with AVAILABLE.
- `Tunnel`: the client end of a router stream, so a test can run gRPC to a real
  exporterd's session through routerd after a Dial.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import yaml
from google.protobuf import duration_pb2, field_mask_pb2

from jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc, router_pb2, router_pb2_grpc

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
CLI = [PY, "-m", "jumpstarter.cli.main"]
S = common_pb2
DATA, GOAWAY = router_pb2.FRAME_TYPE_DATA, router_pb2.FRAME_TYPE_GOAWAY


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def counter(metrics: str, sample: str) -> float:
    """The value of one sample line of a Prometheus text page (0 if absent)."""
    for line in metrics.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def refused(
    call: Callable[[], Any], code: grpc.StatusCode | None = None, text: str | None = None
) -> grpc.RpcError:
    """The RpcError `call` raises; AssertionError if it returns, or if the code or the details
    (`text`, case-insensitive) differ."""
    try:
        result = call()
    except grpc.RpcError as error:
        if code is not None:
            assert error.code() == code, f"{error.code()}: {error.details()}"
        if text is not None:
            assert text.lower() in (error.details() or "").lower(), error.details()
        return error
    raise AssertionError(f"the call was not refused: it returned {result!r}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def condition(lease: Any, type_: str) -> Any:
    """The condition `type_` of a Lease/GetLeaseResponse message, or None."""
    for c in lease.conditions:
        if c.type == type_:
            return c
    return None


def is_true(lease: Any, type_: str) -> bool:
    c = condition(lease, type_)
    return c is not None and c.status == "True"


# -- identities ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    kind: str  # Client | Exporter
    namespace: str
    name: str
    token: str
    config: str = ""  # the upstream-format config file the admin CLI wrote

    def metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (
            ("authorization", f"Bearer {self.token if token is None else token}"),
            ("jumpstarter-kind", self.kind),
            ("jumpstarter-namespace", self.namespace),
            ("jumpstarter-name", self.name),
        )

    @property
    def resource(self) -> str:
        return f"namespaces/{self.namespace}/{self.kind.lower()}s/{self.name}"


# -- the daemons -----------------------------------------------------------------------------


@dataclass
class Central:
    """controllerd + routerd in a short /tmp directory; `settings` override controllerd.yaml keys."""

    directory: str
    settings: dict[str, Any] = field(default_factory=dict)
    cport: int = field(default_factory=free_port)
    rport: int = field(default_factory=free_port)
    mport: int = field(default_factory=free_port)
    controller: subprocess.Popen[bytes] | None = None
    router: subprocess.Popen[bytes] | None = None
    router_settings: dict[str, Any] = field(default_factory=dict)
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)
    umask: int = -1  # the daemons' umask (-1: inherit ours)
    own_certs: bool = False  # routerd generates its own certificate (a fresh install), not the controller's
    _ca: bytes = b""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.cport}"

    @property
    def router_endpoint(self) -> str:
        return f"127.0.0.1:{self.rport}"

    @property
    def admin_socket(self) -> str:
        return os.path.join(self.directory, "admin.sock")

    @property
    def state(self) -> str:
        return os.path.join(self.directory, "state")

    @property
    def tls_cert(self) -> str:
        return os.path.join(self.state, "controllerd", "tls.crt")

    @property
    def lab_ca(self) -> str:
        """The lab CA controllerd (and routerd) create next to their certificates on first start."""
        return os.path.join(self.state, "controllerd", "ca.crt")

    @property
    def router_cert(self) -> str:
        return os.path.join(self.state, "controllerd", "router.crt" if self.own_certs else "tls.crt")

    @property
    def signing_key(self) -> str:
        return os.path.join(self.state, "controllerd", "signing-key.pem")

    @property
    def router_key(self) -> str:
        return os.path.join(self.directory, "router.key")

    @property
    def ca(self) -> bytes:
        if not self._ca:
            self._ca = Path(self.lab_ca).read_bytes()
        return self._ca

    def log(self, name: str) -> str:
        path = os.path.join(self.directory, f"{name}.log")
        return Path(path).read_text(errors="replace") if os.path.exists(path) else ""

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(os.path.join(self.directory, f"{name}.log"), "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                umask=self.umask,
            )

    def spawn_exporterd(
        self, name: str, config: str, export: dict[str, Any], socket: str, *extra: str
    ) -> subprocess.Popen[bytes]:
        """A real exporterd serving `config` (an admin-written ExporterConfig) with `export` as its
        driver tree on `socket`; closing this Central stops it. Its log is `name`.log."""
        document = yaml.safe_load(Path(config).read_text())
        document["export"] = export
        Path(config).write_text(yaml.safe_dump(document))
        argv = [PY, "-m", "exporterd.main", "--config", config, "--socket", socket, "--log-format", "json"]
        process = self._spawn(name, [*argv, *extra])
        self.extra.append(process)
        return process

    def _wait_listening(self, name: str, process: subprocess.Popen[bytes], port: int) -> None:
        try:
            wait_until(lambda: _listening(port) or process.poll() is not None, 20, f"{name} to listen")
        finally:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")

    def start_controller(self) -> None:
        self.controller = self._spawn("controllerd", self.controller_argv())
        self._wait_listening("controllerd", self.controller, self.cport)
        wait_until(lambda: os.path.exists(self.admin_socket), 10, "the admin socket")

    def controller_argv(self) -> list[str]:
        """Write controllerd.yaml; the command line that runs controllerd with it."""
        config = {
            "listen": self.endpoint,
            "endpoint": self.endpoint,
            "state_dir": self.state,
            "router_key_file": self.router_key,
            "routers": [self.router_endpoint],
            "admin_socket": self.admin_socket,
            "metrics": f"127.0.0.1:{self.mport}",
            **self.settings,
        }
        path = os.path.join(self.directory, "controllerd.yaml")
        Path(path).write_text(json.dumps(config))  # JSON is YAML
        return [PY, "-m", "controllerd.main", "--config", path, "--log-format", "json"]

    def stop_controller(self, sig: int = signal.SIGTERM) -> int:
        assert self.controller is not None
        return stop_process(self.controller, sig)

    def start_router(self) -> None:
        self.router = self._spawn("routerd", self.router_argv())
        self._wait_listening("routerd", self.router, self.rport)

    def router_argv(self, **settings: Any) -> list[str]:
        """Write routerd.yaml (`settings` override its keys); the command line that runs routerd with it."""
        config = {
            "listen": self.router_endpoint,
            "tls": {"cert": self.router_cert, "key": self.router_cert[: -len(".crt")] + ".key"},
            "router_key_file": self.router_key,
            "lone_peer_timeout": 30,
            "metrics": None,
            **self.router_settings,
            **settings,
        }
        path = os.path.join(self.directory, "routerd.yaml")
        Path(path).write_text(json.dumps(config))
        return [PY, "-m", "routerd.main", "--config", path, "--log-format", "json"]

    def stop_router(self, sig: int = signal.SIGTERM) -> int:
        assert self.router is not None
        return stop_process(self.router, sig)

    def close(self) -> None:
        processes = [p for p in (*self.extra, self.router, self.controller) if p is not None]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            stop_process(process)

    def rss_kib(self) -> int:
        assert self.controller is not None
        for line in Path(f"/proc/{self.controller.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric(self, sample: str) -> float:
        """The value of one sample line, e.g. `jumpstarter_leases_total{event="granted"}` (0 if absent)."""
        return counter(self.metrics(), sample)

    def router_metric(self, sample: str) -> float:
        """One sample of routerd's metrics page; needs `router_settings={"metrics": "HOST:PORT"}`."""
        address = self.router_settings["metrics"]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            return counter(response.read().decode(), sample)

    # -- administration ------------------------------------------------------------------

    def admin(self, namespace: str, *args: str) -> str:
        """`jumpstarter admin --admin-socket … -n NAMESPACE ARGS…`; asserts success, returns stdout."""
        result = subprocess.run(
            [*CLI, "admin", "--admin-socket", self.admin_socket, "-n", namespace, *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert result.returncode == 0, f"admin {' '.join(args)}: {result.stderr}"
        return result.stdout

    def create(self, kind: str, namespace: str, name: str, **labels: str) -> Identity:
        """`jumpstarter admin create client|exporter NAME -l k=v… -o FILE`, read back as an Identity."""
        path = os.path.join(self.directory, f"{namespace}-{kind}-{name}.yaml")
        self.admin(namespace, "create", kind, name, *[f"-l{k}={v}" for k, v in labels.items()], "-o", path)
        document = yaml.safe_load(Path(path).read_text())
        assert document["endpoint"] == self.endpoint
        assert base64.b64decode(document["tls"]["ca"]) == self.ca
        meta = document["metadata"]
        return Identity(kind.capitalize(), meta["namespace"], meta["name"], document["token"], path)

    def create_many(self, kind: str, namespace: str, names: list[str], **labels: str) -> list[Identity]:
        """The admin socket's create op in-process (the call the CLI makes), for dozens of identities."""
        from jumpstarter.cli.admin import call

        out = []
        for name in names:
            result = call(self.admin_socket, f"create_{kind}", namespace=namespace, name=name, labels=labels)
            out.append(Identity(kind.capitalize(), namespace, name, result["token"]))
        return out

    def channel(self) -> grpc.Channel:
        """A raw channel to the controller with our clients' reconnect backoff (capped at a few
        seconds): after a controller restart, gRPC's default backoff (up to 120 s) would keep
        failing calls with the old "connection refused" long after the controller is back."""
        from jumpstarter.channels import CHANNEL_OPTIONS

        return grpc.secure_channel(
            self.endpoint, grpc.ssl_channel_credentials(root_certificates=self.ca), options=CHANNEL_OPTIONS
        )

    def peer(self, identity: Identity) -> Peer:
        return Peer(self, identity)


def start_central(
    prefix: str = "jsc-",
    router: bool = True,
    router_settings: dict[str, Any] | None = None,
    own_certs: bool = False,
    **settings: Any,
) -> Central:
    """A started Central in a fresh /tmp directory (call `close_central` when done)."""
    central = Central(tempfile.mkdtemp(prefix=prefix, dir="/tmp"), settings)
    central.router_settings = dict(router_settings or {})
    central.own_certs = own_certs
    try:
        central.start_controller()
        if router:
            central.start_router()
    except BaseException:
        close_central(central)
        raise
    return central


def close_central(central: Central) -> None:
    central.close()
    shutil.rmtree(central.directory, ignore_errors=True)


# -- peers -------------------------------------------------------------------------------------


class Peer:
    """Raw stubs with one identity's metadata (PROTOCOL.md §3)."""

    def __init__(self, central: Central, identity: Identity) -> None:
        self.central = central
        self.identity = identity
        self.channel = central.channel()
        self.clients = client_pb2_grpc.ClientServiceStub(self.channel)
        self.controller = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel)
        self.md = identity.metadata()
        self.parent = f"namespaces/{identity.namespace}"

    def close(self) -> None:
        self.channel.close()

    def lease_name(self, name: str) -> str:
        return f"{self.parent}/leases/{name}"

    def create_lease(
        self,
        selector: str = "",
        duration: float | None = 60.0,
        *,
        exporter_name: str = "",
        lease_id: str = "",
        tags: dict[str, str] | None = None,
    ) -> client_pb2.Lease:
        lease = client_pb2.Lease(selector=selector, tags=tags or {})
        if exporter_name:
            lease.exporter_name = exporter_name
        if duration is not None:
            lease.duration.CopyFrom(seconds(duration))
        return self.clients.CreateLease(
            client_pb2.CreateLeaseRequest(parent=self.parent, lease_id=lease_id, lease=lease),
            metadata=self.md,
            timeout=10,
        )

    def get_lease(self, name: str) -> client_pb2.Lease:
        if not name.startswith("namespaces/"):
            name = self.lease_name(name)
        return self.clients.GetLease(client_pb2.GetLeaseRequest(name=name), metadata=self.md, timeout=10)

    def wait_lease(self, name: str, predicate: Callable[[Any], bool], what: str, timeout: float = 10) -> Any:
        box: list[Any] = []

        def check() -> bool:
            box[:] = [self.get_lease(name)]
            return predicate(box[0])

        try:
            wait_until(check, timeout, f"lease {name.rsplit('/', 1)[-1]}: {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {box[0] if box else None}") from None
        return box[0]

    def wait_ready(self, name: str, timeout: float = 10) -> Any:
        return self.wait_lease(name, lambda le: is_true(le, "Ready"), "Ready=True", timeout)

    def delete_lease(self, name: str) -> None:
        if not name.startswith("namespaces/"):
            name = self.lease_name(name)
        self.clients.DeleteLease(client_pb2.DeleteLeaseRequest(name=name), metadata=self.md, timeout=10)

    def update_lease(self, lease: client_pb2.Lease, paths: list[str]) -> client_pb2.Lease:
        return self.clients.UpdateLease(
            client_pb2.UpdateLeaseRequest(lease=lease, update_mask=field_mask_pb2.FieldMask(paths=paths)),
            metadata=self.md,
            timeout=10,
        )

    def list_leases(self, only_active: bool = True) -> list[client_pb2.Lease]:
        out: list[client_pb2.Lease] = []
        token = ""
        while True:
            page = self.clients.ListLeases(
                client_pb2.ListLeasesRequest(
                    parent=self.parent, only_active=only_active, page_size=1000, page_token=token
                ),
                metadata=self.md,
                timeout=10,
            )
            out.extend(page.leases)
            token = page.next_page_token
            if not token:
                return out

    def get_exporter(self, name: str) -> client_pb2.Exporter:
        return self.clients.GetExporter(
            client_pb2.GetExporterRequest(name=f"{self.parent}/exporters/{name}"),
            metadata=self.md,
            timeout=10,
        )

    def dial(self, name: str, timeout: float = 10) -> jumpstarter_pb2.DialResponse:
        name = name.rsplit("/", 1)[-1]
        return self.controller.Dial(
            jumpstarter_pb2.DialRequest(lease_name=name), metadata=self.md, timeout=timeout
        )


def stream_of(router_token: str) -> str:
    """The stream id a router token joins: the client's and the exporter's tokens of one Dial share it."""
    claims = jwt.decode(router_token, options={"verify_signature": False})
    return str(claims["sub"])


def seconds(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(value * 1e9))
    return out


def short(name: str) -> str:
    """`namespaces/ns/leases/X` -> `X`."""
    return name.rsplit("/", 1)[-1]


# -- a stub exporter -----------------------------------------------------------------------------


class Listener:
    """One Listen stream: its ListenResponses in a queue, and how it ended."""

    def __init__(self, stub: Any, lease: str, metadata: Any) -> None:
        self.lease = lease
        self.responses: queue.Queue[jumpstarter_pb2.ListenResponse] = queue.Queue()
        self.ended = threading.Event()
        self.code: grpc.StatusCode | None = None
        self.call = stub.Listen(jumpstarter_pb2.ListenRequest(lease_name=lease), metadata=metadata)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.code = exc.code()
        finally:
            self.ended.set()

    def next(self, timeout: float = 5) -> jumpstarter_pb2.ListenResponse:
        try:
            return self.responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no ListenResponse on lease {self.lease} within {timeout:g}s") from None

    def drain(self) -> list[jumpstarter_pb2.ListenResponse]:
        out = []
        while not self.responses.empty():
            out.append(self.responses.get_nowait())
        return out

    def cancel(self) -> None:
        self.call.cancel()


class StubExporter:
    """An exporter made of raw ControllerService calls.

    `auto=True` behaves like exporterd: on `leased=true` for a new lease it opens Listen and
    reports LEASE_READY; on `leased=false` it reports AVAILABLE.
    """

    def __init__(self, central: Central, identity: Identity, *, auto: bool = True) -> None:
        self.identity = identity
        self.auto = auto
        self.channel = central.channel()
        self.stub = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel)
        self.md = identity.metadata()
        self.statuses: list[jumpstarter_pb2.StatusResponse] = []
        self.changed = threading.Condition()
        self.listeners: dict[str, Listener] = {}
        self.status_call: Any = None
        self.status_thread: threading.Thread | None = None
        self.status_error: grpc.RpcError | None = None

    @property
    def name(self) -> str:
        return self.identity.name

    def register(self) -> None:
        self.stub.Register(
            jumpstarter_pb2.RegisterRequest(labels={"jumpstarter.dev/name": self.name}),
            metadata=self.md,
            timeout=10,
        )
        self.report(S.EXPORTER_STATUS_AVAILABLE)

    def report(self, status: int, release: bool = False) -> None:
        request = jumpstarter_pb2.ReportStatusRequest(status=status, message="stub")  # type: ignore[arg-type]
        if release:
            request.release_lease = True
        self.stub.ReportStatus(request, metadata=self.md, timeout=10)

    def start(self) -> StubExporter:
        """Register, report AVAILABLE, open the Status stream; returns when the first message arrived."""
        self.register()
        self.open_status()
        self.wait_status(lambda s: True, "the first StatusResponse")
        return self

    def open_status(self) -> None:
        self.status_call = self.stub.Status(jumpstarter_pb2.StatusRequest(), metadata=self.md)
        self.status_thread = threading.Thread(target=self._status_loop, args=(self.status_call,), daemon=True)
        self.status_thread.start()

    def _status_loop(self, call: Any) -> None:
        try:
            for status in call:
                if self.auto:
                    self._react(status)
                with self.changed:
                    self.statuses.append(status)
                    self.changed.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.status_error = exc
        with self.changed:
            self.changed.notify_all()

    def _react(self, status: jumpstarter_pb2.StatusResponse) -> None:
        try:
            if status.leased and status.lease_name not in self.listeners:
                self.listen(status.lease_name)
                self.report(S.EXPORTER_STATUS_LEASE_READY)
            elif not status.leased:
                self.report(S.EXPORTER_STATUS_AVAILABLE)
        except grpc.RpcError:
            pass  # the controller went away; the test sees it elsewhere

    def wait_status(
        self, predicate: Callable[[jumpstarter_pb2.StatusResponse], bool], what: str, timeout: float = 10
    ) -> jumpstarter_pb2.StatusResponse:
        """Wait until the *latest* StatusResponse satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (self.statuses and predicate(self.statuses[-1])):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"exporter {self.name}: timed out waiting for {what}; statuses: {self.statuses}"
                    )
                self.changed.wait(remaining)
            return self.statuses[-1]

    def listener(self, lease: str, timeout: float = 5) -> Listener:
        """The Listen stream the stub opened for `lease` on `leased=true` (auto mode)."""
        wait_until(
            lambda: short(lease) in self.listeners, timeout, f"{self.name} to Listen on {short(lease)}"
        )
        return self.listeners[short(lease)]

    def listen(self, lease: str) -> Listener:
        listener = Listener(self.stub, short(lease), self.md)
        self.listeners[short(lease)] = listener
        return listener

    def close_status(self) -> None:
        if self.status_call is not None:
            self.status_call.cancel()
        if self.status_thread is not None:
            self.status_thread.join(5)

    def close(self) -> None:
        self.auto = False
        self.close_status()  # first: the status thread opens Listens (auto mode) until it has ended
        for listener in list(self.listeners.values()):
            listener.cancel()
        self.channel.close()


# -- the client end of a router stream ------------------------------------------------------------


class Tunnel:
    """A unix socket whose one connection is spliced onto routerd with a Dial's token.

    `grpc.insecure_channel(tunnel.target)` then reaches the exporter's session server.
    """

    def __init__(self, central: Central, dial: jumpstarter_pb2.DialResponse, path: str) -> None:
        self.path = path
        self.endpoint = dial.router_endpoint
        self.token = dial.router_token
        self.ca = central.ca
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.channel: grpc.Channel | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"unix:{self.path}"

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.channel = grpc.secure_channel(
            self.endpoint, grpc.ssl_channel_credentials(root_certificates=self.ca)
        )
        stub = router_pb2_grpc.RouterServiceStub(self.channel)

        def upstream() -> Iterator[router_pb2.StreamRequest]:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    yield router_pb2.StreamRequest(frame_type=GOAWAY)
                    return
                yield router_pb2.StreamRequest(payload=data)

        try:
            for frame in stub.Stream(upstream(), metadata=(("authorization", f"Bearer {self.token}"),)):
                if frame.frame_type == DATA and frame.payload:
                    conn.sendall(frame.payload)
                elif frame.frame_type == GOAWAY:
                    break
        except (grpc.RpcError, OSError) as exc:
            self.error = exc
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        if self.channel is not None:
            self.channel.close()
        self.thread.join(5)
        if os.path.exists(self.path):
            os.unlink(self.path)


def get_report(
    central: Central, dial: jumpstarter_pb2.DialResponse, path: str
) -> jumpstarter_pb2.GetReportResponse:
    """Drive the exporter's session through routerd: one GetReport over a fresh tunnel."""
    from google.protobuf import empty_pb2

    tunnel = Tunnel(central, dial, path)
    try:
        with grpc.insecure_channel(tunnel.target) as channel:
            stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
            return stub.GetReport(empty_pb2.Empty(), timeout=10)
    finally:
        tunnel.close()


class Scope:
    """One namespace of a Central: its clients and stub exporters, closed (newest first) by `close`."""

    def __init__(self, central: Central, namespace: str) -> None:
        self.central, self.ns = central, namespace
        self.closers: list[Callable[[], Any]] = []

    def client(self, name: str, **labels: str) -> Peer:
        peer = self.central.peer(self.central.create("client", self.ns, name, **labels))
        self.closers.append(peer.close)
        return peer

    def exporter(self, name: str, **labels: str) -> StubExporter:
        stub = StubExporter(self.central, self.central.create("exporter", self.ns, name, **labels))
        self.closers.append(stub.close)
        return stub.start()

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
