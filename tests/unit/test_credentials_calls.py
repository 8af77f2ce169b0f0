"""controllerd/credentials.py's API calls are bounded in time, as the store's own: a hung API server
holds a reconciler pass (and `jumpstarter admin create` over the socket) for REQUEST_TIMEOUT at most.
The reconciler itself, against the in-test API server: tests/integration/test_kube_admin.py.
"""

from __future__ import annotations

import types
from typing import Any

from kubernetes import client as k8s

from controllerd.credentials import CA_CONFIGMAP, Credentials
from controllerd.store.kube_client import REQUEST_TIMEOUT


class _Core:
    """CoreV1Api's methods the reconciler uses: each records its keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, kwargs))
            meta = k8s.V1ObjectMeta(name=CA_CONFIGMAP, resource_version="1")
            if method.startswith("list"):
                return k8s.V1SecretList(items=[])
            if "config_map" in method:
                return k8s.V1ConfigMap(metadata=meta, data={})
            return k8s.V1Secret(metadata=meta)

        return call


def test_every_core_api_call_has_a_request_timeout() -> None:
    api = types.SimpleNamespace(client=None, _call=lambda what, call: call())
    store = types.SimpleNamespace(api=api, namespace="lab")
    credentials = Credentials(store, types.SimpleNamespace(), b"CA", 3600.0)  # type: ignore[arg-type]
    core = credentials.core = _Core()  # type: ignore[assignment]
    owner = {
        "apiVersion": "jumpstarter.dev/v1alpha1",
        "kind": "Client",
        "metadata": {"name": "a", "uid": "u"},
    }

    credentials._read_secret("a-client")
    credentials._write_secret("a-client", None, "token", owner)
    credentials._write_secret(
        "a-client", k8s.V1Secret(metadata=k8s.V1ObjectMeta(resource_version="1")), "t", owner
    )
    credentials._list_secrets()
    credentials.publish_ca()  # read, then replace (the CA differs)

    assert [method for method, _ in core.calls] == [
        "read_namespaced_secret",
        "create_namespaced_secret",
        "replace_namespaced_secret",
        "list_namespaced_secret",
        "read_namespaced_config_map",
        "replace_namespaced_config_map",
    ]
    assert all(kwargs.get("_request_timeout") == REQUEST_TIMEOUT for _, kwargs in core.calls)
