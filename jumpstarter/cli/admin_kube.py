"""`jumpstarter admin --kubeconfig FILE [--context C] [-n NS] …`: the cluster instead of the admin socket.

What upstream's `jmp admin` does with the official kubernetes client (reference/upstream-controller.md
§5.5): `create` makes the Client or Exporter resource, waits for controllerd's credentials reconciler
to publish `status.credential`, then reads the Secret's `token`, `status.endpoint` and the CA from
ConfigMap `jumpstarter-service-ca-cert`, and prints the same config as the socket path.
`--service-account` makes a ServiceAccount instead and mints its token with TokenRequest (audience:
the controller's endpoint from `status.endpoint`). `get` and `delete` act on the resources; every other
admin command needs the admin socket on the controller (`kubectl exec`).

The names are upstream's (the CLI never imports controllerd, which writes them: one contract, two ends).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
from collections.abc import Callable
from typing import Any

from jumpstarter.backoff import Backoff, Deadline
from jumpstarter.cli.builder import arg
from jumpstarter.cli.output import note, print_data, record_table
from jumpstarter.errors import ConfigError, JumpstarterError

GROUP, VERSION = "jumpstarter.dev", "v1alpha1"
KINDS = {"client": ("Client", "clients"), "exporter": ("Exporter", "exporters")}
CA_CONFIGMAP, CA_KEY = "jumpstarter-service-ca-cert", "ca.crt"
HEALTH_CLIENT = "jumpstarter-health"  # controllerd's own client: it never publishes a credential for it
MIN_SA_SECONDS = 600  # TokenRequest refuses shorter lifetimes
COLUMNS = {
    "clients": ["namespace", "name", "credential", "labels"],
    "exporters": ["namespace", "name", "enabled", "status", "credential", "labels"],
    "leases": ["namespace", "name", "client", "exporter", "ended"],
}
SOCKET_ONLY = (
    "this command needs the controller's admin socket, not --kubeconfig: run it on the controller,"
    " e.g. kubectl exec -n {ns} deploy/jumpstarter-controllerd -- jumpstarter admin {command} …"
)


class DefaultNamespace(str):
    """`-n`'s default ("default"): a value of its own type, so --kubeconfig can tell it was not typed
    and use the kubeconfig context's namespace instead, as kubectl does."""


CLUSTER_ARGS = (
    arg(
        "--kubeconfig",
        metavar="FILE",
        help="talk to this Kubernetes cluster instead of the admin socket (create, get, delete only)",
    ),
    arg("--context", metavar="NAME", help="the kubeconfig context (default: its current one)"),
)
CREATE_ARGS = (
    arg(
        "--service-account",
        action="store_true",
        help="--kubeconfig: a ServiceAccount NAME and its TokenRequest token, not a controller token",
    ),
    arg("--duration", metavar="DURATION", help="--service-account: token lifetime (default 8760h)"),
    arg(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="--kubeconfig: how long to wait for controllerd's credential (default %(default)s)",
    ),
)


def wanted(a: argparse.Namespace) -> bool:
    """Whether this call goes to the cluster (--kubeconfig) rather than the admin socket."""
    if a.context and not a.kubeconfig:
        raise ConfigError("--context needs --kubeconfig FILE")
    return bool(a.kubeconfig)


class Cluster:
    """The API calls this CLI makes, in one namespace; API errors become one-line JumpstarterErrors."""

    def __init__(self, kubeconfig: str, context: str | None, namespace: str) -> None:
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config

        if not os.path.isfile(kubeconfig):
            raise ConfigError(f"--kubeconfig: no kubeconfig file at {kubeconfig}")
        try:
            api = k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
        except (k8s_config.ConfigException, OSError, ValueError) as exc:
            raise ConfigError(f"--kubeconfig {kubeconfig}: cannot load it: {exc}") from None
        self.k8s = k8s
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        if isinstance(namespace, DefaultNamespace):  # no -n: the context's namespace, as kubectl
            namespace = _context_namespace(k8s_config, kubeconfig, context) or namespace
        self.namespace = str(namespace)

    def call(self, what: str, call: Callable[[], Any], missing: Any = ...) -> Any:
        """`call()`; a 404 answers `missing` when given; any other failure is a clear error."""
        try:
            return call()
        except self.k8s.ApiException as exc:
            if exc.status == 404 and missing is not ...:
                return missing
            if exc.status == 409:
                raise JumpstarterError(f"{what}: already exists in namespace {self.namespace}") from None
            if exc.status == 404:
                raise JumpstarterError(f"{what}: not found in namespace {self.namespace}") from None
            raise JumpstarterError(f"{what}: the API server said {exc.status} {exc.reason}") from None
        except Exception as exc:  # urllib3's connection errors: no traceback, one line
            if isinstance(exc, (OSError, JumpstarterError)) or type(exc).__module__.startswith("urllib3"):
                raise JumpstarterError(f"{what}: cannot reach the cluster: {exc}") from None
            raise

    def get(self, plural: str, name: str, missing: Any = ...) -> Any:
        return self.call(
            f"{plural}/{name}",
            lambda: self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name),
            missing,
        )

    def delete(self, plural: str, name: str) -> None:
        self.call(
            f"delete {plural}/{name}",
            lambda: self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name),
        )


def _context_namespace(k8s_config: Any, kubeconfig: str, context: str | None) -> str | None:
    contexts, current = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return namespace if isinstance(namespace, str) and namespace else None


def _cluster(a: argparse.Namespace) -> Cluster:
    return Cluster(a.kubeconfig, a.context, a.namespace)


def _wait(what: str, seconds: float, ready: Callable[[], Any], namespace: str) -> Any:
    """Poll `ready()` (about every second, as upstream) until it answers something true."""
    backoff = Backoff(start=0.2, cap=1.0, deadline=Deadline(seconds))
    while True:
        value = ready()
        if value:
            return value
        if not backoff.sleep():
            raise JumpstarterError(
                f"no {what} after {seconds:g}s: is controllerd running in namespace {namespace}?"
                " (it publishes credentials; nothing was left behind)"
            )


def run_create(a: argparse.Namespace, labels: dict[str, str], emit: Callable[..., None]) -> int:
    if a.kind not in KINDS:
        raise ConfigError(f"with --kubeconfig, create makes a client or an exporter, not a {a.kind}")
    if a.kind == "client" and a.name == HEALTH_CLIENT:
        raise ConfigError(f"client name {a.name!r} is reserved for the controller's health checks")
    if a.duration is not None and not a.service_account:
        raise ConfigError("--duration is for --service-account tokens")
    seconds = _sa_seconds(a.duration) if a.service_account else 0
    kind, plural = KINDS[a.kind]
    cluster = _cluster(a)
    ns, name = cluster.namespace, a.name
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {},
    }
    username = f"system:serviceaccount:{ns}:{name}"
    if a.service_account:
        body["spec"]["username"] = username
        if cluster.get(plural, name, None) is not None:  # before the ServiceAccount: nothing to undo
            raise JumpstarterError(f"{plural}/{name}: already exists in namespace {ns}")
        account = cluster.k8s.V1ServiceAccount(metadata=cluster.k8s.V1ObjectMeta(name=name, namespace=ns))
        cluster.call(
            f"serviceaccounts/{name}", lambda: cluster.core.create_namespaced_service_account(ns, account)
        )
    try:
        created = cluster.call(
            f"{plural}/{name}",
            lambda: cluster.custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body),
        )
    except JumpstarterError:
        if a.service_account:
            _undo_account(cluster, name)
        raise
    try:
        result = (
            _service_account_token(cluster, a, plural, seconds)
            if a.service_account
            else _credential(cluster, a, plural)
        )
    except BaseException:  # a timeout or Ctrl-C: take back what this call made (stores nothing)
        with contextlib.suppress(JumpstarterError):
            cluster.call(
                f"delete {plural}/{name}",
                lambda: cluster.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, plural, name,
                    body=cluster.k8s.V1DeleteOptions(
                        preconditions=cluster.k8s.V1Preconditions(uid=created["metadata"]["uid"])
                    ),
                ),
            )  # fmt: skip
        if a.service_account:
            _undo_account(cluster, name)
        raise
    if a.service_account:
        note(f"{a.kind} {ns}/{name} authenticates as {username} (TokenRequest; the cluster checks it)")
    emit(a.kind, result, a.output)
    return 0


def _undo_account(cluster: Cluster, name: str) -> None:
    with contextlib.suppress(JumpstarterError):
        cluster.call(
            f"delete serviceaccounts/{name}",
            lambda: cluster.core.delete_namespaced_service_account(name, cluster.namespace),
        )


def _status(cluster: Cluster, plural: str, name: str) -> dict[str, Any]:
    obj = cluster.get(plural, name, None)
    if obj is None:
        raise JumpstarterError(f"{plural}/{name} was deleted while waiting for its credential")
    return obj.get("status") or {}


def _ca(cluster: Cluster) -> str:
    """The CA the controller published (empty when there is none, as upstream)."""
    found = cluster.call(
        f"configmaps/{CA_CONFIGMAP}",
        lambda: cluster.core.read_namespaced_config_map(CA_CONFIGMAP, cluster.namespace),
        None,
    )
    return str(((found.data or {}) if found is not None else {}).get(CA_KEY) or "")


def _credential(cluster: Cluster, a: argparse.Namespace, plural: str) -> dict[str, Any]:
    def published() -> dict[str, Any] | None:
        status = _status(cluster, plural, a.name)
        secret_name = (status.get("credential") or {}).get("name")
        if not secret_name or not status.get("endpoint"):
            return None
        secret = cluster.call(
            f"secrets/{secret_name}",
            lambda: cluster.core.read_namespaced_secret(secret_name, cluster.namespace),
            None,
        )
        data = (secret.data or {}) if secret is not None else {}
        if not data.get("token"):
            return None
        return {"endpoint": status["endpoint"], "token": base64.b64decode(data["token"]).decode()}

    found = _wait(f"credential for {plural}/{a.name}", a.wait, published, cluster.namespace)
    return {"namespace": cluster.namespace, "name": a.name, "ca": _ca(cluster), **found}


def _service_account_token(
    cluster: Cluster, a: argparse.Namespace, plural: str, seconds: int
) -> dict[str, Any]:
    endpoint = _wait(
        f"endpoint in {plural}/{a.name} status",
        a.wait,
        lambda: _status(cluster, plural, a.name).get("endpoint"),
        cluster.namespace,
    )
    k8s = cluster.k8s
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[endpoint], expiration_seconds=seconds)
    )
    answer = cluster.call(
        f"serviceaccounts/{a.name}/token",
        lambda: cluster.core.create_namespaced_service_account_token(a.name, cluster.namespace, request),
    )
    token = answer.status.token
    return {
        "namespace": cluster.namespace,
        "name": a.name,
        "endpoint": endpoint,
        "token": token,
        "ca": _ca(cluster),
    }


def _sa_seconds(text: str | None) -> int:
    from jumpstarter.cli.remote import duration_seconds

    seconds = int(duration_seconds(text or "8760h"))
    if seconds < MIN_SA_SECONDS:
        raise ConfigError(
            f"--duration: at least 10m for a ServiceAccount token (TokenRequest's minimum), not {text}"
        )
    return seconds


def run_get(a: argparse.Namespace) -> int:
    if a.kind not in COLUMNS:
        raise ConfigError(f"with --kubeconfig, get lists {', '.join(COLUMNS)} (not {a.kind})")
    cluster = _cluster(a)
    listed = cluster.call(
        a.kind,
        lambda: cluster.custom.list_namespaced_custom_object(GROUP, VERSION, cluster.namespace, a.kind),
    )
    rows = [_row(a.kind, o) for o in listed.get("items") or []]
    if not a.all and a.kind == "leases":
        rows = [r for r in rows if not r["ended"]]
    if not print_data(rows, a.output):
        record_table(rows, COLUMNS[a.kind])
    return 0


def _row(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    row: dict[str, Any] = {"namespace": meta.get("namespace"), "name": meta["name"]}
    if kind == "leases":
        exporter = (status.get("exporterRef") or spec.get("exporterRef") or {}).get("name")
        return {**row, "client": (spec.get("clientRef") or {}).get("name"), "exporter": exporter,
                "ended": bool(status.get("ended"))}  # fmt: skip
    row["labels"] = dict(meta.get("labels") or {})
    row["credential"] = (status.get("credential") or {}).get("name")
    if kind == "exporters":
        row["enabled"] = spec.get("enabled") is not False
        row["status"] = status.get("exporterStatus") or "Unspecified"
    return row


def run_delete(a: argparse.Namespace) -> int:
    kind, plural = KINDS[a.kind]
    cluster = _cluster(a)
    cluster.delete(plural, a.name)
    result = {"deleted": f"{cluster.namespace}/{a.name}"}
    if not print_data(result, a.output):
        print(f"deleted {a.kind} {cluster.namespace}/{a.name} (its credential Secret goes with it)")
    return 0


def socket_only(
    command: str, handler: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """A handler that refuses --kubeconfig with a clear pointer to the admin socket."""

    def run(a: argparse.Namespace) -> int:
        if getattr(a, "kubeconfig", None):
            raise ConfigError(SOCKET_ONLY.format(ns=a.namespace, command=command))
        return handler(a)

    return run
