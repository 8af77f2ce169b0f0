"""Two controllerd replicas serving gRPC on one (in-test) Kubernetes cluster, each on its own
loopback port as two pods behind one Service: exporters and clients may reach either replica.

The leader serves; the other forwards to it (controllerd/replica.py). Real processes throughout:
the API server of tests/harness/kube_api.py, two controllerds, routerd, exporterd and the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from jumpstarter import routertoken, tls
from jumpstarter.backoff import Deadline
from jumpstarter.client.remote import ControllerClient, RemoteError
from jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter.config.client import load_client_config
from tests.harness.kube_api import FakeCluster, KubeApiServer

from .conftest import stop, unused_tcp_port
from .test_upstream_interop import explain, scrubbed_env, upstream, upstream_jmp_run

PY = sys.executable
CLI = [PY, "-m", "jumpstarter.cli.main"]
ROOT = Path(__file__).resolve().parents[2]
BIN = os.path.dirname(PY)
NS = "lab"
ELECTION = (("coordination.k8s.io", "v1", "leases"), NS, "jumpstarter-controller")


def poll(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = Deadline(timeout)
    while True:
        result = condition()
        if result:
            return result
        assert not deadline.expired(), f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.1)


@dataclass
class Replicas:
    directory: str
    api: KubeApiServer
    endpoint: str  # the Service's endpoint: tokens name it, whichever replica a peer reaches
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> str:
        path = os.path.join(self.directory, f"{name}.log")
        return Path(path).read_text(errors="replace") if os.path.exists(path) else ""

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(os.path.join(self.directory, f"{name}.log"), "ab") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )
        self.processes[name] = process
        return process

    def address(self, replica: str) -> str:
        return f"127.0.0.1:{self.ports[replica]}"

    def admin_socket(self, replica: str) -> str:
        return os.path.join(self.directory, f"admin-{replica}.sock")

    def start_replica(self, replica: str) -> None:
        config = {
            "listen": self.address(replica),
            "endpoint": self.endpoint,
            "state_dir": os.path.join(self.directory, f"state-{replica}"),
            "store": f"kubernetes://{NS}?kubeconfig={self.api.kubeconfig}",
            "tls": {"cert": self.cert, "key": self.key},
            "signing_key": os.path.join(self.directory, "signing-key.pem"),
            "router_key_file": self.router_key,
            "routers": [self.router_endpoint],
            "admin_socket": self.admin_socket(replica),
            "metrics": None,
        }
        path = os.path.join(self.directory, f"controllerd-{replica}.yaml")
        Path(path).write_text(json.dumps(config))
        # the pod's name and IP, as the Deployment passes them through the downward API
        env = dict(os.environ, POD_NAME=f"replica-{replica}", POD_IP="127.0.0.1")
        argv = [PY, "-m", "controllerd.main", "--config", path, "--log-format", "json"]
        process = self.spawn(f"controllerd-{replica}", argv, env)
        poll(lambda: os.path.exists(self.admin_socket(replica)) or process.poll() is not None, 30, replica)
        assert process.poll() is None, self.log(f"controllerd-{replica}")

    @property
    def cert(self) -> str:
        return os.path.join(self.directory, "tls.crt")

    @property
    def key(self) -> str:
        return os.path.join(self.directory, "tls.key")

    @property
    def router_key(self) -> str:
        return os.path.join(self.directory, "router.key")

    @property
    def router_endpoint(self) -> str:
        return self.address("router")

    def holder(self) -> str:
        with self.api.cluster.lock:
            lease = self.api.cluster.objects.get(ELECTION)
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def admin(self, replica: str, *args: str) -> str:
        result = subprocess.run(
            [*CLI, "admin", "--admin-socket", self.admin_socket(replica), "-n", NS, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def create(self, kind: str, name: str, replica: str, *labels: str) -> dict[str, Any]:
        """`admin create` (on replica A); the config it writes, pointed at `replica`'s port."""
        path = os.path.join(self.directory, f"{name}.yaml")
        self.admin("a", "create", kind, name, *labels, "-o", path)
        document = yaml.safe_load(Path(path).read_text())
        document["endpoint"] = self.address(replica)
        return dict(document)

    def client_config(self, name: str, replica: str) -> str:
        path = os.path.join(self.directory, f"{name}-{replica}.yaml")
        document = yaml.safe_load(Path(os.path.join(self.directory, f"{name}.yaml")).read_text())
        document["endpoint"] = self.address(replica)
        Path(path).write_text(yaml.safe_dump(document))
        return path

    def start_exporter(self, name: str, replica: str, label: str, flag: str) -> None:
        document = self.create("exporter", name, replica, f"-lboard={label}")
        document["export"] = {
            "power": {"type": "power.command", "config": {"on": f"touch {flag}", "off": f"rm -f {flag}"}}
        }
        path = os.path.join(self.directory, f"{name}-exporterd.yaml")
        Path(path).write_text(yaml.safe_dump(document))
        socket = os.path.join(self.directory, f"{name}.sock")
        argv = [PY, "-m", "exporterd.main", "--config", path, "--socket", socket, "--log-format", "json"]
        self.spawn(name, argv)


@pytest.fixture
def replicas() -> Iterator[Replicas]:
    directory = tempfile.mkdtemp(prefix="jskr-", dir="/tmp")
    ports = {"a": unused_tcp_port(), "b": unused_tcp_port(), "router": unused_tcp_port()}
    with KubeApiServer(FakeCluster()) as api:
        r = Replicas(directory, api, f"127.0.0.1:{ports['a']}", ports)
        tls.load_or_create(r.cert, r.key, ["127.0.0.1", "localhost"])  # the Service's certificate, shared
        routertoken.generate_key(r.router_key)
        router_yaml = os.path.join(directory, "routerd.yaml")
        Path(router_yaml).write_text(
            json.dumps(
                {
                    "listen": r.router_endpoint,
                    "tls": {"cert": r.cert, "key": r.key},
                    "router_key_file": r.router_key,
                    "lone_peer_timeout": 30,
                    "metrics": None,
                }
            )
        )
        try:
            r.spawn("routerd", [PY, "-m", "routerd.main", "--config", router_yaml, "--log-format", "json"])
            r.start_replica("a")
            poll(lambda: r.holder() == "replica-a", 60, "replica a to lead")
            r.start_replica("b")
            yield r
        finally:
            for process in r.processes.values():
                if process.poll() is None:
                    process.terminate()
            for process in r.processes.values():
                stop(process)
            shutil.rmtree(directory, ignore_errors=True)


def cli_env(tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["JMP_CLIENT_CONFIG_HOME"] = os.path.join(tmp, "config")
    env["JUMPSTARTER_BOARDS_DIR"] = os.path.join(tmp, "no-boards")
    return env


def jmp(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def available(config: str, name: str) -> bool:
    """The exporter is online and AVAILABLE and no lease holds it, as the replica `config` names says."""
    client = ControllerClient(load_client_config(config))
    try:
        exporters = {e.name.rsplit("/", 1)[-1]: e for e in client.list_exporters()}
        busy = any(le.exporter.endswith(f"/{name}") for le in client.list_leases())
    except (RemoteError, grpc.RpcError):  # no leader yet (a takeover): the caller polls again
        return False
    finally:
        client.close()
    exporter = exporters.get(name)
    return exporter is not None and exporter.online and exporter.status == 2 and not busy


def status(config: str, name: str) -> int:
    client = ControllerClient(load_client_config(config))
    try:
        return int(client.get_exporter(name).status)
    finally:
        client.close()


def raw_list_exporters(r: Replicas, client: str, replica: str, *extra: tuple[str, str]) -> list[Any]:
    """ListExporters with the client's PROTOCOL.md §3 metadata plus `extra`, on one replica."""
    document = yaml.safe_load(Path(os.path.join(r.directory, f"{client}.yaml")).read_text())
    metadata = (
        ("authorization", f"Bearer {document['token']}"),
        ("jumpstarter-kind", "Client"),
        ("jumpstarter-namespace", NS),
        ("jumpstarter-name", client),
        *extra,
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(r.cert).read_bytes())
    with grpc.secure_channel(r.address(replica), credentials) as channel:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        request = client_pb2.ListExportersRequest(parent=f"namespaces/{NS}")
        return list(stub.ListExporters(request, metadata=metadata, timeout=30).exporters)


def test_exporters_and_clients_on_either_replica_meet_and_survive_the_leaders_death(replicas, tmp_path):
    r = replicas
    env = cli_env(str(tmp_path))
    flag_b, flag_a = tmp_path / "on-b.powered", tmp_path / "on-a.powered"
    r.start_exporter("board-on-b", "b", "x", str(flag_b))  # connected to the replica that does not lead
    r.start_exporter("board-on-a", "a", "y", str(flag_a))  # connected to the leader
    r.create("client", "alice", "a")
    alice_a, alice_b = r.client_config("alice", "a"), r.client_config("alice", "b")
    poll(lambda: available(alice_a, "board-on-b"), 60, "board-on-b online, as the leader sees it")
    poll(lambda: available(alice_b, "board-on-a"), 60, "board-on-a online, asked through replica b")

    # the exporter on b, the client on the leader: granted, dialled through routerd, driven
    on = jmp(env, "shell", "--client", alice_a, "-l", "board=x", "--", "jumpstarter", "power", "on")
    assert on.returncode == 0, on.stderr + r.log("controllerd-a")[-3000:]
    assert flag_b.exists(), "power on did not reach the exporter connected to the other replica"
    # the exporter on the leader, the client on b
    on = jmp(env, "shell", "--client", alice_b, "-l", "board=y", "--", "jumpstarter", "power", "on")
    assert on.returncode == 0, on.stderr
    assert flag_a.exists()
    # both on b, which does not lead
    off = jmp(env, "run", "--client", alice_b, "-l", "board=x", "--", "jumpstarter", "power", "off")
    assert off.returncode == 0, off.stderr
    assert not flag_b.exists()
    assert r.holder() == "replica-a"
    # a call claiming to come from another replica is never forwarded again (no forwarding loops)
    with pytest.raises(grpc.RpcError) as refused:
        raw_list_exporters(r, "alice", "b", ("x-jumpstarter-forwarded-by", "replica-a"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no longer leads" in (refused.value.details() or "")
    assert raw_list_exporters(
        r, "alice", "a", ("x-jumpstarter-forwarded-by", "replica-b")
    )  # the leader serves it

    os.kill(r.processes["controllerd-a"].pid, signal.SIGKILL)
    killed = time.monotonic()
    poll(lambda: r.holder() == "replica-b", 90, "replica b to take over")
    took_over = time.monotonic() - killed
    poll(lambda: available(alice_b, "board-on-b"), 90, "board-on-b back online on the new leader")
    print(
        f"takeover {took_over:.1f}s, exporter available again {time.monotonic() - killed:.1f}s after SIGKILL"
    )
    on = jmp(env, "shell", "--client", alice_b, "-l", "board=x", "--", "jumpstarter", "power", "on")
    assert on.returncode == 0, on.stderr + r.log("controllerd-b")[-3000:]
    assert flag_b.exists(), "no new lease after the takeover"


def upstream_power(
    up: Any, tmp_path: Path, client_config: str, action: str
) -> subprocess.CompletedProcess[str]:
    """Upstream's `jmp shell -l board=upstream -- j power ACTION` with `client_config`."""
    return subprocess.run(
        [
            up.jmp,
            "shell",
            "--client-config",
            client_config,
            "-l",
            "board=upstream",
            "--",
            up.j,
            "power",
            action,
        ],
        env=scrubbed_env(tmp_path),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_upstream_exporter_and_upstream_client_on_different_replicas(replicas, tmp_path):
    """Upstream 0.9 at both ends: its exporter on the replica that does not lead, its `jmp shell`
    on the leader, then on the other replica too; then the leader dies and both carry on on b."""
    r = replicas
    up = upstream()
    document = r.create("exporter", "upboard", "b", "-lboard=upstream")
    document["export"] = {"power": {"type": "jumpstarter_driver_power.driver.MockPower"}}
    config = os.path.join(r.directory, "upboard-upstream.yaml")
    Path(config).write_text(yaml.safe_dump(document))
    r.create("client", "alice", "a")
    alice_a, alice_b = r.client_config("alice", "a"), r.client_config("alice", "b")
    log_path = tmp_path / "upstream-exporter.log"
    exporter = upstream_jmp_run(up, config, tmp_path, log_path)
    try:
        poll(lambda: available(alice_a, "upboard"), 60, "the upstream exporter online on the leader")
        for client, said in ((alice_a, 1), (alice_b, 2)):
            result = upstream_power(up, tmp_path, client, "on")
            assert result.returncode == 0, explain(result) + log_path.read_text(errors="replace")[-3000:]
            poll(
                lambda said=said: log_path.read_text(errors="replace").count("power on") >= said,
                30,
                "the upstream exporter's log",
            )
            poll(lambda: available(alice_a, "upboard"), 60, "the upstream exporter free again")

        # the leader dies: upstream's exporter (a few quick retries, then it gives up) rides the
        # takeover out on replica b, whose calls wait for the new leader instead of failing at once
        os.kill(r.processes["controllerd-a"].pid, signal.SIGKILL)
        poll(lambda: r.holder() == "replica-b", 90, "replica b to take over")
        poll(lambda: available(alice_b, "upboard"), 90, "the upstream exporter online on the new leader")
        assert exporter.poll() is None, log_path.read_text(errors="replace")[-3000:]
        result = upstream_power(up, tmp_path, alice_b, "off")
        assert result.returncode == 0, explain(result) + log_path.read_text(errors="replace")[-3000:]
        poll(lambda: "power off" in log_path.read_text(errors="replace"), 30, "the upstream exporter's log")
    finally:
        stop(exporter)


def test_a_leader_overtaken_while_frozen_ends_its_streams_and_its_exporter_reaches_the_new_one(
    replicas, tmp_path
):
    """A lease is active, its exporter listening on the leader; SIGSTOP the leader until the other
    replica takes over, then SIGCONT it: it must end the streams it served (the new leader holds
    the Listen queues now), so the exporter listens again, through it, on the new leader, and the
    client dials its lease there."""
    r = replicas
    env = cli_env(str(tmp_path))
    flag = tmp_path / "on-a.powered"
    r.start_exporter("board-on-a", "a", "x", str(flag))  # connected to the leader, directly
    r.create("client", "alice", "b")
    alice_b = r.client_config("alice", "b")
    poll(lambda: available(alice_b, "board-on-a"), 60, "board-on-a online")
    created = jmp(
        env, "lease", "create", "--client", alice_b, "--exporter", "board-on-a", "--duration", "10m", "--wait",
        "-o", "json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    lease = json.loads(created.stdout)[0]["name"].rsplit("/", 1)[-1]
    poll(lambda: status(alice_b, "board-on-a") == 4, 30, "the exporter listening, LEASE_READY")

    leader = r.processes["controllerd-a"]
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        poll(lambda: r.holder() == "replica-b", 90, "replica b to take over from the frozen leader")
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    poll(lambda: "stopped leading" in r.log("controllerd-a"), 60, "replica a to notice it no longer leads")
    on = jmp(env, "shell", "--client", alice_b, "--lease", lease, "--", "jumpstarter", "power", "on")
    assert on.returncode == 0, on.stderr + r.log("controllerd-b")[-3000:]
    assert flag.exists(), "the lease's exporter was not reached through the new leader"
    assert r.holder() == "replica-b"


def test_a_revocation_on_either_replica_is_enforced_by_both(replicas):
    """Each replica keeps the revoked tokens in memory: one revoked through the other pod's admin
    socket (kubectl exec picks any pod) must still be refused by the leader, which serves every
    forwarded call, and by the other replica, which answers reads itself."""
    r = replicas
    r.create("client", "mallory", "a")
    r.create("client", "trent", "a")
    assert raw_list_exporters(r, "mallory", "a") == []  # accepted by both, before
    assert raw_list_exporters(r, "trent", "b") == []

    def refused(client: str, replica: str) -> bool:
        try:
            raw_list_exporters(r, client, replica)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
            return True
        return False

    r.admin("b", "revoke", "client", "mallory")  # on the replica that does not lead
    poll(lambda: refused("mallory", "a"), 60, "the leader to refuse a token revoked on replica b")
    assert refused("mallory", "b")

    r.admin("a", "revoke", "client", "trent")  # on the leader; b answers ListLeases itself
    poll(lambda: refused("trent", "b"), 60, "replica b to refuse a token revoked on the leader")

    def reads_refused() -> bool:
        document = yaml.safe_load(Path(os.path.join(r.directory, "trent.yaml")).read_text())
        metadata = (
            ("authorization", f"Bearer {document['token']}"),
            ("jumpstarter-kind", "Client"),
            ("jumpstarter-namespace", NS),
            ("jumpstarter-name", "trent"),
        )
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(r.cert).read_bytes())
        with grpc.secure_channel(r.address("b"), credentials) as channel:
            stub = client_pb2_grpc.ClientServiceStub(channel)
            try:
                stub.ListLeases(
                    client_pb2.ListLeasesRequest(parent=f"namespaces/{NS}"), metadata=metadata, timeout=30
                )
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    poll(reads_refused, 60, "replica b's own reads to refuse a token revoked on the leader")
