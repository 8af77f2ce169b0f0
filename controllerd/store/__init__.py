"""Where the controller keeps its records: SQLite (embedded default) or Kubernetes."""

from controllerd.store.base import Conflict, NotFound, StorageError, StorageFull, Store

__all__ = ["Conflict", "NotFound", "StorageError", "StorageFull", "Store", "open_store"]


def open_store(url: str) -> Store:
    """`sqlite:///var/lib/jumpstarter/controller.db` (or `sqlite://:memory:`), or
    `kubernetes://NAMESPACE?kubeconfig=PATH&context=NAME` (upstream's CRDs in that namespace;
    without kubeconfig: the pod's ServiceAccount in a cluster, else the default kubeconfig)."""
    if url.startswith("sqlite://"):
        from controllerd.store.sqlite import SqliteStore

        path = url[len("sqlite://") :]
        return SqliteStore(":memory:" if path in (":memory:", "/:memory:") else path)
    if url.startswith("kubernetes://"):
        from controllerd.store.kube_client import Api, api_client, parse_url
        from controllerd.store.kubernetes import KubernetesStore

        namespace, kubeconfig, context = parse_url(url)
        return KubernetesStore(Api(api_client(kubeconfig, context), namespace))
    raise ValueError(f"unknown store {url!r} (sqlite:///PATH or kubernetes://NAMESPACE?kubeconfig=PATH)")
