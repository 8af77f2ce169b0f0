"""deploy/kubernetes validated offline: rendered by `kubectl kustomize`, every object checked against the
typed models of the `kubernetes` client, the CRD schemas against upstream-shaped resources, RBAC least
privilege, pod hardening, and the configs loaded by the daemons' own config loaders.

The `kubernetes` client's models (v37+) are pydantic models generated from the API server's OpenAPI
document with `extra="forbid"` and strict types: an unknown or misspelt field, a wrong type, or a
missing required field fails `model_validate`. What they cannot see: enum values, cross-field rules
and defaults applied by the API server (those are checked by hand below where they matter).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes.client as models
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ValidationError

from controllerd.auth import load_or_create_key
from controllerd.config import load_controller_config
from jumpstarter import tls
from routerd.config import load_router_config
from tests.k8s_schema import cel_rules, errors, structural_problems

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy/kubernetes"
LAYOUTS = ["base", "overlays/example"]
SAMPLES = ROOT / "tests/k8s_samples/upstream.yaml"
# The fields upstream's CRDs carry (issue 11 §1): ours must have each, with the same JSON casing.
UPSTREAM_FIELDS = {
    "Exporter": [
        "spec.username", "spec.enabled", "status.conditions", "status.credential.name",
        "status.devices[].uuid", "status.devices[].parent_uuid", "status.devices[].labels",
        "status.leaseRef.name", "status.lastSeen", "status.endpoint", "status.exporterStatus",
        "status.statusMessage",
    ],
    "Client": ["spec.username", "status.conditions", "status.credential.name", "status.endpoint"],
    "Lease": [
        "spec.clientRef.name", "spec.duration", "spec.selector.matchLabels", "spec.selector.matchExpressions",
        "spec.exporterRef.name", "spec.tags", "spec.allowDisabled", "spec.release", "spec.beginTime",
        "spec.endTime", "spec.context", "status.beginTime", "status.endTime", "status.exporterRef.name",
        "status.ended", "status.priority", "status.conditions",
    ],
    "ExporterAccessPolicy": [
        "spec.exporterSelector.matchLabels", "spec.policies[].description", "spec.policies[].priority",
        "spec.policies[].from[].clientSelector.matchLabels", "spec.policies[].maximumDuration",
    ],
}  # fmt: skip
# (apiGroup, resource) -> verbs: everything controllerd's ServiceAccount may do, and nothing more.
GRANTS = {
    ("jumpstarter.dev", "exporters"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("jumpstarter.dev", "clients"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("jumpstarter.dev", "exporteraccesspolicies"): {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
    },
    ("jumpstarter.dev", "leases"): {"get", "list", "watch", "create", "update", "patch"},
    ("jumpstarter.dev", "exporters/status"): {"get", "update", "patch"},
    ("jumpstarter.dev", "clients/status"): {"get", "update", "patch"},
    ("jumpstarter.dev", "leases/status"): {"get", "update", "patch"},
    ("lab.jumpstarter.dev", "controllertokens"): {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
    },
    ("lab.jumpstarter.dev", "auditevents"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("lab.jumpstarter.dev", "controllersequences"): {"get", "list", "watch", "create", "update"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    ("", "serviceaccounts/token"): {"create"},
    ("", "secrets"): {"get", "list", "create", "update"},  # credential Secrets (controllerd/credentials.py)
    ("", "configmaps"): {"get", "create", "update"},  # the published CA
    ("authentication.k8s.io", "tokenreviews"): {"create"},
}


def render(layout: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the kustomizations (apt-get install kubernetes-client)"
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / layout)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=LAYOUTS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


@pytest.fixture(scope="module")
def crds() -> dict[str, dict[str, Any]]:
    """Upstream's four kinds (group jumpstarter.dev) by kind."""
    return {
        doc["spec"]["names"]["kind"]: doc
        for doc in render("base")
        if doc["kind"] == "CustomResourceDefinition" and doc["spec"]["group"] == "jumpstarter.dev"
    }


def typed_model(doc: dict[str, Any]) -> type[BaseModel]:
    """kubernetes.client's model for this apiVersion and kind (e.g. apps/v1 Deployment -> V1Deployment)."""
    version = doc["apiVersion"].rpartition("/")[2]
    model: type[BaseModel] = getattr(models, version[0].upper() + version[1:] + doc["kind"])
    return model


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def resolve(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    """The schema node at `spec.devices[].uuid`-style path; KeyError when a step is missing."""
    node = schema
    for step in dotted.split("."):
        name, _, rest = step.partition("[]")
        node = node["properties"][name]
        for _ in range(step.count("[]")):
            node = node["items"]
        assert not rest.replace("[]", ""), dotted
    return node


def pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def test_every_object_validates_against_the_clients_openapi_models(rendered: list[dict[str, Any]]) -> None:
    kinds = {doc["kind"] for doc in rendered}
    assert {"CustomResourceDefinition", "Deployment", "StatefulSet", "Service", "Role", "ConfigMap"} <= kinds
    for doc in rendered:
        typed_model(doc).model_validate(doc)  # raises on an unknown field, a wrong type, a missing field


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"),
        lambda d: d["spec"].update(replicas="2"),
        lambda d: d["spec"].pop("selector"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="8082"),
    ],
    ids=["misspelt-field", "string-replicas", "missing-selector", "string-port"],
)
def test_the_model_check_rejects_a_broken_deployment(mutate: Any) -> None:
    deployment = copy.deepcopy(one(render("base"), "Deployment", "jumpstarter-controllerd"))
    mutate(deployment)
    with pytest.raises(ValidationError):
        models.V1Deployment.model_validate(deployment)


def test_the_crds_are_upstreams_group_names_and_scope(crds: dict[str, dict[str, Any]]) -> None:
    plurals = {"Exporter": "exporters", "Client": "clients", "Lease": "leases"}
    plurals["ExporterAccessPolicy"] = "exporteraccesspolicies"
    assert set(crds) == set(plurals)
    for kind, crd in crds.items():
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{plurals[kind]}.jumpstarter.dev"
        assert (spec["group"], spec["scope"], spec["names"]["plural"]) == (
            "jumpstarter.dev",
            "Namespaced",
            plurals[kind],
        )
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
        assert structural_problems(schema_of(crd)) == []


def test_every_upstream_field_is_in_our_schemas_with_upstreams_casing(
    crds: dict[str, dict[str, Any]],
) -> None:
    for kind, fields in UPSTREAM_FIELDS.items():
        for dotted in fields:
            assert resolve(schema_of(crds[kind]), dotted)["type"], f"{kind} {dotted}"
    exporter_status = resolve(schema_of(crds["Exporter"]), "status.exporterStatus")["enum"]
    assert {"Unspecified", "Offline", "Available", "LeaseReady", "AfterLeaseHookFailed"} <= set(
        exporter_status
    )
    assert resolve(schema_of(crds["Exporter"]), "spec.enabled")["default"] is True


def test_our_own_kinds_are_in_our_own_group() -> None:
    ours = [
        d
        for d in render("base")
        if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] != "jumpstarter.dev"
    ]
    assert {d["spec"]["names"]["kind"] for d in ours} == {
        "ControllerToken",
        "AuditEvent",
        "ControllerSequence",
    }
    for crd in ours:
        assert crd["spec"]["group"] == "lab.jumpstarter.dev" and crd["spec"]["scope"] == "Namespaced"
        assert structural_problems(schema_of(crd)) == []
        for column in crd["spec"]["versions"][0].get("additionalPrinterColumns", [])[:-1]:
            assert resolve(schema_of(crd), column["jsonPath"].lstrip("."))["type"] == column["type"]
    audit = next(schema_of(d) for d in ours if d["spec"]["names"]["kind"] == "AuditEvent")
    event = {"spec": {"id": 7, "kind": "lease", "name": "l1", "action": "granted", "actor": "scheduler"}}
    assert errors(audit, event) == []  # the store's record fields are kept (preserve-unknown-fields)
    assert errors(audit, {"spec": {"action": 3}}) == [".spec.action: expected string, got int"]


def test_printer_columns_point_at_fields_of_their_type(crds: dict[str, dict[str, Any]]) -> None:
    expected = {
        "Exporter": ["Enabled", "Status", "Message", "Age"],
        "Lease": ["Ended", "Client", "Exporter", "Age"],
        "Client": ["Endpoint", "Age"],
    }
    for kind, names in expected.items():
        columns = crds[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
        assert [c["name"] for c in columns] == names
        for column in columns:
            path = column["jsonPath"].lstrip(".")
            if path != "metadata.creationTimestamp":
                assert resolve(schema_of(crds[kind]), path)["type"] == column["type"], column


def test_upstream_shaped_samples_are_accepted(crds: dict[str, dict[str, Any]]) -> None:
    samples = [doc for doc in yaml.safe_load_all(SAMPLES.read_text()) if doc]
    assert {doc["kind"] for doc in samples} == set(crds)
    for doc in samples:
        assert doc["apiVersion"] == "jumpstarter.dev/v1alpha1"
        models.V1ObjectMeta.model_validate(doc["metadata"])  # the API server checks metadata itself
        body = {key: value for key, value in doc.items() if key != "metadata"}
        assert errors(schema_of(crds[doc["kind"]]), body) == [], doc["metadata"]["name"]
    ended = [d for d in samples if d["kind"] == "Lease" and d["status"]["ended"]]
    assert all(d["metadata"]["labels"]["jumpstarter.dev/lease-ended"] == "true" for d in ended)


WRONG = [
    (
        "Exporter",
        lambda d: d["status"]["devices"][1].update(parentUuid="x"),
        ".status.devices[1].parentUuid: unknown",
    ),
    (
        "Exporter",
        lambda d: d["status"].update(exporterStatus="AVAILABLE"),
        ".status.exporterStatus: 'AVAILABLE'",
    ),
    ("Exporter", lambda d: d["spec"].update(enabled="yes"), ".spec.enabled: expected boolean"),
    ("Exporter", lambda d: d["status"]["conditions"][0].update(status="Yes"), "conditions[0].status: 'Yes'"),
    ("Exporter", lambda d: d["status"]["conditions"][0].pop("reason"), "conditions[0].reason: required"),
    ("Exporter", lambda d: d["status"].update(lastSeen="yesterday"), ".status.lastSeen: 'yesterday' is not"),
    ("Lease", lambda d: d["spec"].pop("clientRef"), ".spec.clientRef: required"),
    ("Lease", lambda d: d["spec"].update(duration=3600), ".spec.duration: expected string"),
    ("Lease", lambda d: d["spec"].update(tags={f"t{i}": "v" for i in range(11)}), ".spec.tags: more than 10"),
    ("Lease", lambda d: d["status"].pop("ended"), ".status.ended: required"),
    ("Lease", lambda d: d["spec"].update(exporter_ref={"name": "x"}), ".spec.exporter_ref: unknown"),
    (
        "ExporterAccessPolicy",
        lambda d: d["spec"]["policies"][0].update(priority="high"),
        "priority: expected integer",
    ),
    ("Client", lambda d: d["spec"].update(username=["a"]), ".spec.username: expected string"),
]


@pytest.mark.parametrize(("kind", "mutate", "problem"), WRONG, ids=[w[2] for w in WRONG])
def test_wrong_resources_are_rejected(
    crds: dict[str, dict[str, Any]], kind: str, mutate: Any, problem: str
) -> None:
    sample = next(d for d in yaml.safe_load_all(SAMPLES.read_text()) if d["kind"] == kind)
    body = {key: value for key, value in sample.items() if key != "metadata"}
    assert errors(schema_of(crds[kind]), body) == []
    mutate(body)
    found = errors(schema_of(crds[kind]), body)
    assert any(problem in line for line in found), found


def test_our_extras_live_only_under_lab(crds: dict[str, dict[str, Any]]) -> None:
    exporter = next(d for d in yaml.safe_load_all(SAMPLES.read_text()) if d["kind"] == "Exporter")
    body = {key: value for key, value in exporter.items() if key != "metadata"}
    body["status"]["lab"] = {"health": "maintenance", "healthReason": "fan broken", "addedLater": {"x": 1}}
    assert errors(schema_of(crds["Exporter"]), body) == []  # kept, not pruned: the store may add fields
    body["status"]["lab"]["health"] = "sick"
    assert errors(schema_of(crds["Exporter"]), body) == [".status.lab.health: 'sick' is not one of " + str(
        ["healthy", "unhealthy", "maintenance", "unknown"]
    )]  # fmt: skip
    for crd in crds.values():
        for part in ("spec", "status"):
            for name, node in schema_of(crd)["properties"][part].get("properties", {}).items():
                assert not node.get("x-kubernetes-preserve-unknown-fields") or name == "lab", (crd, name)


def test_lease_cel_rules_are_declared(crds: dict[str, dict[str, Any]]) -> None:
    rules = cel_rules(schema_of(crds["Lease"]))
    assert any("exporterRef" in r and "selector" in r for r in rules)  # a selector or an exporter name
    assert any("oldSelf.tags" in r for r in rules) and any("oldSelf.context" in r for r in rules)


def test_rbac_is_least_privilege_without_wildcards(rendered: list[dict[str, Any]]) -> None:
    granted: dict[tuple[str, str], set[str]] = {}
    for role in (d for d in rendered if d["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field] and all("*" not in item for item in rule[field]), rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == GRANTS
    cluster_roles = [d for d in rendered if d["kind"] == "ClusterRole"]
    assert [r["rules"] for r in cluster_roles] == [
        [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    ]
    for binding in (d for d in rendered if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        subjects = [(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]]
        assert subjects == [("ServiceAccount", "jumpstarter-controllerd", "jumpstarter")]


def test_tokenreview_is_granted_only_by_its_cluster_role_to_controllerd(
    rendered: list[dict[str, Any]],
) -> None:
    """TokenReview (controllerd/kube_identity.py) is cluster-scoped: one ClusterRole, bound only to
    controllerd's ServiceAccount, and every binding names a role that is rendered with it."""
    roles = {(d["kind"], d["metadata"]["name"]) for d in rendered if d["kind"] in ("Role", "ClusterRole")}
    bindings = [d for d in rendered if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    for binding in bindings:
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles, binding["roleRef"]
    cluster_bindings = [b for b in bindings if b["kind"] == "ClusterRoleBinding"]
    cluster_roles = [d for d in rendered if d["kind"] == "ClusterRole"]
    assert [b["roleRef"]["name"] for b in cluster_bindings] == [r["metadata"]["name"] for r in cluster_roles]


def test_pods_are_hardened_with_resources_and_probes(rendered: list[dict[str, Any]]) -> None:
    specs = pods(rendered)
    assert len(specs) == 2
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert set(container["resources"]) == {"requests", "limits"}
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)
    routerd = one(rendered, "StatefulSet", "jumpstarter-routerd")["spec"]["template"]["spec"]
    assert routerd["automountServiceAccountToken"] is False  # routerd never calls the API server
    controllerd = one(rendered, "Deployment", "jumpstarter-controllerd")
    assert controllerd["spec"]["replicas"] == 2  # the leader serves, the other forwards (controllerd/replica.py)
    assert controllerd["spec"]["template"]["spec"]["serviceAccountName"] == "jumpstarter-controllerd"


def config_files(docs: list[dict[str, Any]], tmp_path: Path) -> tuple[Path, Path]:
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    paths = []
    for name in ("controllerd.yaml", "routerd.yaml"):
        paths.append(tmp_path / name)
        paths[-1].write_text(config_map["data"][name])
    return paths[0], paths[1]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_configs_load_and_each_router_has_its_own_endpoint(layout: str, tmp_path: Path) -> None:
    docs = render(layout)
    controllerd_file, routerd_file = config_files(docs, tmp_path)
    settings = yaml.safe_load(controllerd_file.read_text())
    # The store URL is the Kubernetes store's (issue 11 §2); every other key goes through the real loader.
    assert settings.pop("store") == "kubernetes://jumpstarter"
    controllerd_file.write_text(yaml.safe_dump(settings))
    controller = load_controller_config(str(controllerd_file))
    router = load_router_config(str(routerd_file))
    host, _, port = controller.endpoint.rpartition(":")
    controller_service = one(docs, "Service", "jumpstarter-controllerd")
    assert controller_service["spec"]["ports"][0]["nodePort"] == int(port)
    assert router.advertise_host == host
    replicas = one(docs, "StatefulSet", "jumpstarter-routerd")["spec"]["replicas"]
    per_pod = {
        d["spec"]["selector"]["statefulset.kubernetes.io/pod-name"]: d["spec"]["ports"][0]["nodePort"]
        for d in docs
        if d["kind"] == "Service" and "statefulset.kubernetes.io/pod-name" in d["spec"].get("selector", {})
    }
    assert sorted(per_pod) == sorted(f"jumpstarter-routerd-{i}" for i in range(replicas))
    assert sorted(controller.routers) == sorted(f"{host}:{p}" for p in per_pod.values())
    assert len(set(per_pod.values()) | {int(port)}) == replicas + 1  # no two Services share a port


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_file_the_configs_name_is_mounted(layout: str, tmp_path: Path) -> None:
    docs = render(layout)
    controllerd_file, routerd_file = config_files(docs, tmp_path)
    settings = yaml.safe_load(controllerd_file.read_text())
    settings.pop("store")
    controllerd_file.write_text(yaml.safe_dump(settings))
    controller = load_controller_config(str(controllerd_file))
    router = load_router_config(str(routerd_file))
    wanted = {
        ("Deployment", "jumpstarter-controllerd"): [
            controller.tls_cert, controller.tls_key, controller.tls_ca, controller.signing_key,
            controller.router_key_file, controller.admin_socket,
        ],
        ("StatefulSet", "jumpstarter-routerd"): [router.tls_cert, router.tls_key, router.lab_ca[0], router.router_key_file],
    }  # fmt: skip
    for (kind, name), files in wanted.items():
        (container,) = one(docs, kind, name)["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        files.append(command[command.index("--config") + 1])
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        for file in files:
            assert any(file == m or file.startswith(m + "/") for m in mounts), (name, file)
        # O_NOFOLLOW: the router key must be a subPath mount (a file), not a Secret volume's symlink.
        key_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == router.router_key_file)
        assert key_mount["subPath"] == "router.key"


def test_make_secrets_writes_what_the_daemons_accept(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    for _ in range(2):  # a second run keeps every file
        subprocess.run(
            [sys.executable, str(DEPLOY / "make_secrets.py"), "jumpstarter.lab.example", str(out)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    docs = render("base")
    _, routerd_file = config_files(docs, tmp_path)
    text = routerd_file.read_text().replace("/etc/jumpstarter/tls/", f"{out}/tls/")
    routerd_file.write_text(text.replace("/etc/jumpstarter/keys/", f"{out}/router/"))
    check = subprocess.run(
        [sys.executable, "-m", "routerd.main", "--config", str(routerd_file), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "router key" in check.stdout and "jumpstarter.lab.example" in check.stdout
    cert, ca = (out / "tls/tls.crt").read_bytes(), (out / "tls/ca.crt").read_bytes()
    assert tls.signed_by(cert, ca) and tls.covers(cert, "jumpstarter.lab.example")
    tls.check_pair(cert, (out / "tls/tls.key").read_bytes())
    assert isinstance(load_or_create_key(str(out / "signing/signing.pem")), ec.EllipticCurvePrivateKey)
    # Only these three directories go into the cluster: the lab CA's key is not among them.
    secret_dirs = {
        "tls": ["ca.crt", "tls.crt", "tls.key"],
        "signing": ["signing.pem"],
        "router": ["router.key"],
    }
    for name, files in secret_dirs.items():
        assert sorted(p.name for p in (out / name).iterdir()) == files
    secret_names = {"jumpstarter-tls", "jumpstarter-signing-key", "jumpstarter-router-key"}
    used = {v["secret"]["secretName"] for spec in pods(docs) for v in spec["volumes"] if "secret" in v}
    assert used == secret_names
