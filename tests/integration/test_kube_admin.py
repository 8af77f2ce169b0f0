"""Credentials for resources made with kubectl, and `jumpstarter admin --kubeconfig`, through real
processes: a real controllerd (Kubernetes store) and routerd on the in-test API server
(tests/harness/kube_api.py), real exporterds, and the real CLI.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from jumpstarter.config.client import exporter_document
from tests.harness.kube_api import FakeCluster, KubeApiServer

from .central import CLI, ROOT, Central, close_central, start_central, wait_until

NS = "lab"
BIN = os.path.dirname(sys.executable)
DEADLINE = 60.0  # generous: the machine is shared
CRS = ("jumpstarter.dev", "v1alpha1")


@pytest.fixture(scope="module")
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(FakeCluster(history=1_000_000)) as server:
        yield server


@pytest.fixture(scope="module")
def central(api: KubeApiServer) -> Iterator[Central]:
    central = start_central("jskadm-", store=f"kubernetes://{NS}?kubeconfig={api.kubeconfig}")
    try:
        yield central
    finally:
        close_central(central)


def obj(api: KubeApiServer, plural: str, name: str, group: tuple[str, str] = CRS) -> dict[str, Any] | None:
    with api.cluster.lock:
        return api.cluster.objects.get(((*group, plural), NS, name))


def core(api: KubeApiServer, plural: str, name: str) -> dict[str, Any] | None:
    return obj(api, plural, name, ("", "v1"))


def post(api: KubeApiServer, kind: str, plural: str, name: str, **labels: str) -> dict[str, Any]:
    """What `kubectl apply` does for a new resource: a POST to the API server."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    client = k8s_config.new_client_from_config(config_file=api.kubeconfig)
    body = {
        "apiVersion": "jumpstarter.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "labels": labels},
    }
    created: dict[str, Any] = k8s.CustomObjectsApi(client).create_namespaced_custom_object(
        *CRS, NS, plural, body
    )
    return created


def secret_token(api: KubeApiServer, name: str) -> str:
    secret = core(api, "secrets", name)
    assert secret is not None, f"no Secret {name}"
    return base64.b64decode(secret["data"]["token"]).decode()


def wait_credential(api: KubeApiServer, plural: str, name: str) -> str:
    """The token of the resource's Secret, once its status names it."""
    suffix = "-client" if plural == "clients" else "-exporter"

    def published() -> str | None:
        found = obj(api, plural, name) or {}
        if ((found.get("status") or {}).get("credential") or {}).get("name") != name + suffix:
            return None
        return secret_token(api, name + suffix) if core(api, "secrets", name + suffix) else None

    return str(wait_until(published, DEADLINE, f"the credential of {plural}/{name}", interval=0.1))


def live_tokens(api: KubeApiServer, kind: str, name: str) -> list[dict[str, Any]]:
    with api.cluster.lock:
        tokens = [o["spec"] for (gvr, _, _), o in api.cluster.objects.items() if gvr[2] == "controllertokens"]
    return [t for t in tokens if t.get("kind") == kind and t.get("name") == name and not t.get("revoked")]


def admin_kube(
    api: KubeApiServer, *args: str, kubeconfig: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "admin", "--kubeconfig", kubeconfig or api.kubeconfig, "-n", NS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=cli_env(),
    )


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_", "KUBECONFIG"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["JUMPSTARTER_ADMIN_SOCKET"] = "/nonexistent/admin.sock"  # --kubeconfig must never need it
    return env


def spawn_board(central: Central, name: str, token: str, flag: str) -> None:
    config = os.path.join(central.directory, f"{name}.yaml")
    ca = base64.b64encode(central.ca).decode()
    Path(config).write_text(yaml.safe_dump(exporter_document(NS, name, central.endpoint, token, ca)))
    power = {"power": {"type": "power.command", "config": {"on": f"touch {flag}", "off": f"rm -f {flag}"}}}
    central.spawn_exporterd(name, config, power, os.path.join(central.directory, f"{name}.sock"))


def registered(api: KubeApiServer, name: str) -> bool:
    conditions = ((obj(api, "exporters", name) or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Registered" and c.get("status") == "True" for c in conditions)


# -- a resource made with kubectl gets a credential -------------------------------------------------


def test_an_exporter_posted_to_the_api_gets_a_secret_and_its_exporterd_registers(api, central):
    created = post(api, "Exporter", "exporters", "kubectl-board", board="k")
    token = wait_credential(api, "exporters", "kubectl-board")
    secret = core(api, "secrets", "kubectl-board-exporter")
    assert secret is not None and secret["type"] == "Opaque"
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Exporter",
        "kubectl-board",
        created["metadata"]["uid"],
    )
    assert obj(api, "exporters", "kubectl-board")["status"]["endpoint"] == central.endpoint  # type: ignore[index]
    assert len(live_tokens(api, "Exporter", "kubectl-board")) == 1  # recorded, so revocable
    ca = wait_until(
        lambda: core(api, "configmaps", "jumpstarter-service-ca-cert"), DEADLINE, "the CA ConfigMap"
    )
    assert ca["data"]["ca.crt"].encode() == central.ca
    spawn_board(central, "kubectl-board", token, os.path.join(central.directory, "k.powered"))
    wait_until(lambda: registered(api, "kubectl-board"), DEADLINE, "the exporter to register", interval=0.1)
    assert token not in central.log("controllerd")  # never logged


def test_admin_create_over_the_socket_and_the_reconciler_agree_on_one_token(api, central):
    identity = central.create("client", NS, "socket-alice")
    assert wait_credential(api, "clients", "socket-alice") == identity.token
    assert len(live_tokens(api, "Client", "socket-alice")) == 1
    rotated = yaml.safe_load(central.admin(NS, "rotate", "client", "socket-alice"))
    assert rotated["token"] != identity.token
    wait_until(
        lambda: secret_token(api, "socket-alice-client") == rotated["token"], DEADLINE, "the rotated Secret"
    )
    assert [t["jti"] for t in live_tokens(api, "Client", "socket-alice")] == [
        jwt.decode(rotated["token"], options={"verify_signature": False})["jti"]
    ]


def test_deleting_the_secret_rotates_the_credential(api, central):
    post(api, "Client", "clients", "rotated-bob")
    old = wait_credential(api, "clients", "rotated-bob")
    with api.cluster.lock:
        api.cluster.delete((("", "v1", "secrets"), NS, "rotated-bob-client"), {})
    new = wait_until(
        lambda: core(api, "secrets", "rotated-bob-client") and secret_token(api, "rotated-bob-client"),
        DEADLINE,
        "a new Secret",
        interval=0.2,
    )
    assert new != old
    old_jti = jwt.decode(old, options={"verify_signature": False})["jti"]
    assert old_jti not in [t["jti"] for t in live_tokens(api, "Client", "rotated-bob")]


def test_an_expiring_credential_is_renewed_and_the_old_token_left_to_run_out():
    """A token close to its expiry (the last tenth of its lifetime) is replaced in the Secret, as
    upstream rewrites a token that no longer validates; the old one is not revoked (it runs out)."""
    with KubeApiServer(FakeCluster(history=1_000_000)) as short:
        # 17 s tokens: renewed after ~15.5 s, at the next full pass (every 15 s)
        central = start_central(
            "jskren-",
            router=False,
            store=f"kubernetes://{NS}?kubeconfig={short.kubeconfig}",
            token_ttl_days=0.0002,
        )
        try:
            post(short, "Client", "clients", "short-lived")
            first = wait_credential(short, "clients", "short-lived")
            renewed = wait_until(
                lambda: (token := secret_token(short, "short-lived-client")) != first and token,
                90,
                "the credential to be renewed",
                interval=0.5,
            )
            claims = [jwt.decode(t, options={"verify_signature": False}) for t in (first, renewed)]
            assert claims[1]["exp"] > claims[0]["exp"]
            live = [t["jti"] for t in live_tokens(short, "Client", "short-lived")]
            assert claims[0]["jti"] in live and claims[1]["jti"] in live  # the old one was not revoked
            with short.cluster.lock:
                events = [
                    o["spec"] for (gvr, _, _), o in short.cluster.objects.items() if gvr[2] == "auditevents"
                ]
            assert any(e.get("action") == "renewed" and e.get("name") == "short-lived" for e in events), (
                events
            )
        finally:
            close_central(central)


def test_the_health_checks_client_made_with_kubectl_gets_no_credential(api, central):
    post(api, "Client", "clients", "jumpstarter-health")  # the controller's own identity
    post(api, "Client", "clients", "after-health")
    wait_credential(api, "clients", "after-health")  # events come in order: the first one was seen
    assert core(api, "secrets", "jumpstarter-health-client") is None
    assert live_tokens(api, "Client", "jumpstarter-health") == []


# -- jumpstarter admin --kubeconfig ---------------------------------------------------------------


def test_admin_kubeconfig_create_client_config_leases_the_board_and_powers_it_on(api, central, tmp_path):
    flag = os.path.join(central.directory, "cli.powered")
    post(api, "Exporter", "exporters", "cli-board", board="cli")
    spawn_board(central, "cli-board", wait_credential(api, "exporters", "cli-board"), flag)
    wait_until(lambda: registered(api, "cli-board"), DEADLINE, "the exporter to register", interval=0.1)

    created = admin_kube(api, "create", "client", "kube-carol", "-l", "team=qa")
    assert created.returncode == 0, created.stderr
    config = yaml.safe_load(created.stdout)
    socket_made = yaml.safe_load(central.admin(NS, "create", "client", "socket-dave"))
    assert sorted(config) == sorted(socket_made)  # the same config as the socket path
    assert config["kind"] == "ClientConfig" and config["metadata"] == {"namespace": NS, "name": "kube-carol"}
    assert config["endpoint"] == central.endpoint
    assert base64.b64decode(config["tls"]["ca"]) == central.ca
    assert config["token"] == secret_token(api, "kube-carol-client")
    assert obj(api, "clients", "kube-carol")["metadata"]["labels"] == {"team": "qa"}  # type: ignore[index]

    path = tmp_path / "carol.yaml"
    path.write_text(created.stdout)
    env = {
        **cli_env(),
        "JMP_CLIENT_CONFIG_HOME": str(tmp_path / "home"),
        "JUMPSTARTER_BOARDS_DIR": str(tmp_path / "nb"),
    }
    shell = subprocess.run(
        [*CLI, "shell", "--client", str(path), "-l", "board=cli", "--", "jumpstarter", "power", "on"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert shell.returncode == 0, shell.stderr
    assert os.path.exists(flag), "power on did not reach the board through routerd"

    listed = admin_kube(api, "get", "clients", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert "kube-carol" in [row["name"] for row in yaml.safe_load(listed.stdout)]
    leases = admin_kube(api, "get", "leases", "--all")
    assert leases.returncode == 0 and "kube-carol" in leases.stdout, leases.stderr


def test_admin_kubeconfig_delete_removes_the_resource_and_its_secret(api, central):
    made = admin_kube(api, "create", "exporter", "gone-board")
    assert made.returncode == 0, made.stderr
    assert yaml.safe_load(made.stdout)["kind"] == "ExporterConfig"
    deleted = admin_kube(api, "--context", "fake", "delete", "exporter", "gone-board")
    assert deleted.returncode == 0, deleted.stderr
    assert obj(api, "exporters", "gone-board") is None
    assert core(api, "secrets", "gone-board-exporter") is None


def test_admin_kubeconfig_service_account_mints_a_token_request_for_the_controller(api, central):
    made = admin_kube(api, "create", "client", "sa-erin", "--service-account", "--duration", "2h")
    assert made.returncode == 0, made.stderr
    config = yaml.safe_load(made.stdout)
    claims = jwt.decode(config["token"], options={"verify_signature": False})
    assert claims["sub"] == f"system:serviceaccount:{NS}:sa-erin"
    assert claims["aud"] == [central.endpoint]
    assert 7000 < claims["exp"] - claims["iat"] <= 7200
    assert config["endpoint"] == central.endpoint and base64.b64decode(config["tls"]["ca"]) == central.ca
    assert obj(api, "clients", "sa-erin")["spec"]["username"] == f"system:serviceaccount:{NS}:sa-erin"  # type: ignore[index]
    assert core(api, "serviceaccounts", "sa-erin") is not None
    review = api.tokens.review(
        api.cluster, {"spec": {"token": config["token"], "audiences": [central.endpoint]}}
    )
    assert review["status"]["authenticated"] is True


# -- refusals: clear, and nothing stored ---------------------------------------------------------------


def snapshot(api: KubeApiServer) -> set[Any]:
    with api.cluster.lock:
        return set(api.cluster.objects)


def test_a_bad_name_is_refused_before_anything_is_stored(api, central):
    before = snapshot(api)
    refused = admin_kube(api, "create", "client", "Bad_Name")
    assert refused.returncode != 0
    assert "client name" in refused.stderr and "Traceback" not in refused.stderr
    assert snapshot(api) - before == set()


def test_a_missing_kubeconfig_is_refused_clearly(api, tmp_path):
    refused = admin_kube(api, "create", "client", "nobody", kubeconfig=str(tmp_path / "missing"))
    assert refused.returncode != 0
    assert "no kubeconfig file at" in refused.stderr and "Traceback" not in refused.stderr
    refused = admin_kube(api, "--context", "nowhere", "create", "client", "nobody")
    assert refused.returncode != 0
    assert "nowhere" in refused.stderr and "Traceback" not in refused.stderr


def test_no_controller_times_out_with_a_hint_and_leaves_nothing(tmp_path):
    with KubeApiServer() as lonely:  # no controllerd watches this cluster
        before = snapshot(lonely)
        refused = admin_kube(lonely, "create", "client", "waiting", "--wait", "2")
        assert refused.returncode != 0
        assert f"is controllerd running in namespace {NS}?" in refused.stderr, refused.stderr
        assert snapshot(lonely) == before  # the Client it made was taken back
        refused = admin_kube(lonely, "create", "exporter", "waiting", "--service-account", "--wait", "2")
        assert refused.returncode != 0 and "is controllerd running" in refused.stderr
        assert snapshot(lonely) == before  # and the ServiceAccount too


def test_other_admin_commands_with_kubeconfig_point_to_the_admin_socket(api):
    refused = admin_kube(api, "revoke", "client", "anyone")
    assert refused.returncode != 0
    assert "admin socket" in refused.stderr and "kubectl exec" in refused.stderr
    helped = subprocess.run([*CLI, "admin", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "--kubeconfig" in helped.stdout and "kubectl exec" in helped.stdout


def test_without_n_the_kubeconfig_contexts_namespace_is_used(api, tmp_path):
    import json

    from kubernetes import client, config

    custom = client.CustomObjectsApi(config.new_client_from_config(api.kubeconfig))
    body = {"apiVersion": "jumpstarter.dev/v1alpha1", "kind": "Exporter", "metadata": {"name": "ctx-board"}}
    custom.create_namespaced_custom_object("jumpstarter.dev", "v1alpha1", NS, "exporters", body)
    document = json.loads(Path(api.kubeconfig).read_text())
    document["contexts"][0]["context"]["namespace"] = NS
    in_lab = tmp_path / "kubeconfig-lab"
    in_lab.write_text(json.dumps(document))

    def names(kubeconfig: str) -> list[str]:
        listed = subprocess.run(
            [*CLI, "admin", "--kubeconfig", kubeconfig, "get", "exporters", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=cli_env(),
        )
        assert listed.returncode == 0, listed.stderr
        return [row["name"] for row in yaml.safe_load(listed.stdout)]

    assert "ctx-board" in names(str(in_lab))  # the context names the namespace: no -n needed
    assert "ctx-board" not in names(api.kubeconfig)  # a context without one: "default", as kubectl
