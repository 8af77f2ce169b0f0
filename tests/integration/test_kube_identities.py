"""ServiceAccount identities (issue 11 §3): real controllerd on the Kubernetes store (the in-test
API server, tests/harness/kube_api.py), real routerd, real exporterd and the real CLI.

Exporters and clients hold cluster tokens minted by TokenRequest with the controller's endpoint
as audience; controllerd checks them through TokenReview and maps the username to the object
named in the metadata by its `spec.username`. Every refusal is checked to come from that check
(its status code and words, or the review count), so each test fails on a controller without it.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from jumpstarter.backoff import Deadline
from jumpstarter.client.v1 import client_pb2
from jumpstarter.config.client import ClientConfig, exporter_document, write_private
from tests.harness.kube_api import KubeApiServer

from .central import (
    CLI,
    PY,
    ROOT,
    Central,
    Identity,
    StubExporter,
    close_central,
    refused,
    start_central,
    wait_until,
)

NS = "lab"
CACHE_SECONDS = 2.0  # kubernetes_identity_cache_seconds here: a deleted ServiceAccount is refused fast
CRD = ("jumpstarter.dev", "v1alpha1")


@dataclass
class Cluster:
    api: KubeApiServer
    central: Central
    core: k8s.CoreV1Api
    custom: k8s.CustomObjectsApi

    def account(self, name: str, namespace: str = NS) -> str:
        """A ServiceAccount; its username as TokenReview names it."""
        self.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        return f"system:serviceaccount:{namespace}:{name}"

    def token(self, name: str, namespace: str = NS, audience: str | None = None) -> str:
        spec = {"audiences": [audience or self.central.endpoint], "expirationSeconds": 3600}
        answer = self.core.create_namespaced_service_account_token(name, namespace, {"spec": spec})
        return str(answer.status.token)

    def resource(self, kind: str, name: str, username: str, **labels: str) -> None:
        """An Exporter or Client as `kubectl apply` creates it, with `spec.username`."""
        body = {
            "apiVersion": "/".join(CRD),
            "kind": kind,
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"username": username},
        }
        self.custom.create_namespaced_custom_object(*CRD, NS, f"{kind.lower()}s", body)
        wait_until(lambda: self.seen(kind, name), 30, f"controllerd to see {kind} {name} (its watch)")

    def seen(self, kind: str, name: str) -> bool:
        from jumpstarter.cli.admin import call

        rows = call(self.central.admin_socket, "get", kind=f"{kind.lower()}s", namespace=NS, all=False)
        return any(row["name"] == name for row in rows)

    def reviews(self) -> int:
        return self.api.tokens.reviews

    def ca(self) -> str:
        return base64.b64encode(self.central.ca).decode()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with KubeApiServer() as api:
        central = start_central(
            "jska-",
            store=f"kubernetes://{NS}?kubeconfig={api.kubeconfig}",
            kubernetes_identity_cache_seconds=CACHE_SECONDS,
        )
        connection = k8s_config.new_client_from_config(api.kubeconfig)
        try:
            yield Cluster(api, central, k8s.CoreV1Api(connection), k8s.CustomObjectsApi(connection))
        finally:
            close_central(central)


def list_exporters(central: Central, identity: Identity) -> Any:
    peer = central.peer(identity)
    try:
        return peer.clients.ListExporters(
            client_pb2.ListExportersRequest(parent=f"namespaces/{identity.namespace}"),
            metadata=peer.md,
            timeout=20,
        )
    finally:
        peer.close()


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}
    env["PATH"] = f"{os.path.dirname(PY)}{os.pathsep}{env.get('PATH', '')}"
    env["JMP_CLIENT_CONFIG_HOME"] = str(home / "config")
    env["JUMPSTARTER_BOARDS_DIR"] = str(home / "no-boards")
    return env


def test_a_service_account_exporter_registers_and_a_service_account_client_powers_it_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    central = cluster.central
    cluster.resource("Exporter", "sa-board", cluster.account("sa-board"), board="sa")
    cluster.resource("Client", "sa-alice", cluster.account("sa-alice"))
    flag = tmp_path / "powered"
    exporter_config = str(tmp_path / "sa-board.yaml")
    document = exporter_document(NS, "sa-board", central.endpoint, cluster.token("sa-board"), cluster.ca())
    write_private(exporter_config, document)
    central.spawn_exporterd(
        "sa-board",
        exporter_config,
        {"power": {"type": "power.command", "config": {"on": f"touch {flag}", "off": f"rm -f {flag}"}}},
        str(tmp_path / "board.sock"),
    )
    client_config = str(tmp_path / "sa-alice.yaml")
    alice = ClientConfig(NS, "sa-alice", central.endpoint, cluster.token("sa-alice"), cluster.ca())
    write_private(client_config, alice.to_document())
    identity = Identity("Client", NS, "sa-alice", alice.token)

    def online() -> bool:
        exporters = list_exporters(central, identity).exporters
        return any(e.name.endswith("/sa-board") and e.online and e.status == 2 for e in exporters)

    wait_until(online, 60, f"the ServiceAccount exporter online:\n{central.log('sa-board')[-2000:]}")
    result = subprocess.run(
        [*CLI, "shell", "--client", client_config, "-l", "board=sa", "--", "jumpstarter", "power", "on"],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert flag.exists(), "power on did not reach the ServiceAccount exporter through routerd"
    log = central.log("controllerd")
    for token in (document["token"], alice.token):  # never logged
        assert token not in log and token.split(".")[2] not in log


def test_a_token_for_another_audience_is_refused_by_the_review(cluster: Cluster) -> None:
    cluster.resource("Client", "sa-aud", cluster.account("sa-aud"))
    token = cluster.token("sa-aud", audience="other-controller.example:443")
    before = cluster.reviews()
    refused(
        lambda: list_exporters(cluster.central, Identity("Client", NS, "sa-aud", token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "refused by the cluster",
    )
    assert cluster.reviews() == before + 1


def test_a_username_that_is_not_the_objects_is_denied(cluster: Cluster) -> None:
    cluster.resource("Client", "sa-victim", cluster.account("sa-victim"))
    cluster.account("sa-mallory")
    mallory = cluster.token("sa-mallory")
    refused(  # a valid cluster identity naming someone else's object
        lambda: list_exporters(cluster.central, Identity("Client", NS, "sa-victim", mallory)),
        grpc.StatusCode.PERMISSION_DENIED,
        "does not belong",
    )
    cluster.resource("Client", "sa-nouser", "")
    refused(
        lambda: list_exporters(cluster.central, Identity("Client", NS, "sa-nouser", mallory)),
        grpc.StatusCode.PERMISSION_DENIED,
        "does not belong",
    )


def test_a_service_account_of_another_namespace_is_denied(cluster: Cluster) -> None:
    cluster.resource("Client", "sa-twin", cluster.account("sa-twin"))
    cluster.account("sa-twin", namespace="other")  # same name, another namespace: another username
    twin = cluster.token("sa-twin", namespace="other")
    refused(
        lambda: list_exporters(cluster.central, Identity("Client", NS, "sa-twin", twin)),
        grpc.StatusCode.PERMISSION_DENIED,
        "does not belong",
    )
    refused(  # naming an object in the namespace its ServiceAccount lives in: not served here
        lambda: list_exporters(cluster.central, Identity("Client", "other", "sa-twin", twin)),
        grpc.StatusCode.PERMISSION_DENIED,
        "does not exist",
    )


def test_a_deleted_service_account_is_refused_and_its_exporter_stream_ends(cluster: Cluster) -> None:
    central = cluster.central
    cluster.resource("Exporter", "sa-gone", cluster.account("sa-gone"), board="gone")
    cluster.resource("Client", "sa-gone-client", cluster.account("sa-gone-client"))
    identity = Identity("Exporter", NS, "sa-gone", cluster.token("sa-gone"))
    client = Identity("Client", NS, "sa-gone-client", cluster.token("sa-gone-client"))
    assert list_exporters(central, client).exporters is not None
    stub = StubExporter(central, identity).start()  # registered, Status stream open
    try:
        cluster.core.delete_namespaced_service_account("sa-gone", NS)
        cluster.core.delete_namespaced_service_account("sa-gone-client", NS)
        deadline = Deadline(60)  # generous: the cache answers for CACHE_SECONDS at most
        while stub.status_error is None:
            assert not deadline.expired(), "the Status stream of a deleted ServiceAccount stayed open"
            with stub.changed:
                stub.changed.wait(0.2)
        assert stub.status_error.code() == grpc.StatusCode.UNAUTHENTICATED
        refused(lambda: stub.register(), grpc.StatusCode.UNAUTHENTICATED, "refused by the cluster")
        wait_until(
            lambda: _refused(lambda: list_exporters(central, client)),
            60,
            "the deleted client's token to be refused",
        )
    finally:
        stub.close()


def _refused(call: Any) -> bool:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
        return True
    return False


def test_a_random_token_is_refused_and_reviewed_once(cluster: Cluster) -> None:
    forged = jwt.encode(  # shaped like a ServiceAccount token, signed by nobody the cluster knows
        {"iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:lab:x",
         "aud": [cluster.central.endpoint], "exp": int(time.time()) + 3600},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )  # fmt: skip
    cluster.resource("Client", "sa-random", "system:serviceaccount:lab:x")
    identity = Identity("Client", NS, "sa-random", forged)
    before = cluster.reviews()
    with ThreadPoolExecutor(8) as pool:  # at once: one review answers them all (shared, then cached)
        errors = list(
            pool.map(lambda _: refused(lambda: list_exporters(cluster.central, identity)), range(20))
        )
    assert {e.code() for e in errors} == {grpc.StatusCode.UNAUTHENTICATED}
    assert all("refused by the cluster" in (e.details() or "") for e in errors)
    assert cluster.reviews() == before + 1


def test_controller_tokens_keep_working_beside_service_account_tokens(cluster: Cluster) -> None:
    ours = cluster.central.create("client", NS, "es256-client")
    before = cluster.reviews()
    assert list_exporters(cluster.central, ours).exporters is not None
    assert cluster.reviews() == before  # our own tokens never go to the cluster
    tampered = ours.token[:-4] + ("AAAA" if not ours.token.endswith("AAAA") else "BBBB")
    refused(
        lambda: list_exporters(cluster.central, Identity("Client", NS, "es256-client", tampered)),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid token",
    )
    assert cluster.reviews() == before


def test_service_account_tokens_are_refused_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "controllerd.yaml"
    path.write_text(f"store: sqlite://{tmp_path}/c.db\nkubernetes_identities: true\n")
    result = subprocess.run(
        [PY, "-m", "controllerd.main", "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert f"{path}:2: kubernetes_identities: ServiceAccount tokens" in result.stderr, result.stderr
    assert "need the Kubernetes store" in result.stderr
