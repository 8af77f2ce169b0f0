"""Where the controller keeps its records: SQLite (embedded default) or Kubernetes."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from controllerd.store.base import Conflict, NotFound, StorageError, StorageFull, Store
from jumpstarter.errors import ConfigError

__all__ = ["Conflict", "NotFound", "StorageError", "StorageFull", "Store", "kubernetes_url", "open_store"]


def open_store(url: str) -> Store:
    """`sqlite:///var/lib/jumpstarter/controller.db` (or `sqlite://:memory:`), or
    `kubernetes://NAMESPACE?kubeconfig=PATH&context=NAME` (upstream's CRDs in that namespace)."""
    if url.startswith("sqlite://"):
        from controllerd.store.sqlite import SqliteStore

        path = url[len("sqlite://") :]
        return SqliteStore(":memory:" if path in (":memory:", "/:memory:") else path)
    if url.startswith("kubernetes://"):
        from controllerd.store.kube_client import Api, api_client
        from controllerd.store.kubernetes import KubernetesStore

        namespace, kubeconfig, context = kubernetes_url(url)
        return KubernetesStore(Api(api_client(kubeconfig, context), namespace))
    raise ValueError(f"unknown store {url!r} (sqlite:///PATH or kubernetes://NAMESPACE?kubeconfig=PATH)")


_NAMESPACE = re.compile(
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
)  # a DNS label, as Kubernetes names namespaces


def kubernetes_url(url: str) -> tuple[str, str | None, str | None]:
    """`kubernetes://NAMESPACE?kubeconfig=PATH&context=NAME` -> (namespace, kubeconfig, context).

    Without `kubeconfig` the controller uses its pod's ServiceAccount when it runs in a cluster,
    else the default kubeconfig (~/.kube/config or $KUBECONFIG)."""
    parts = urlsplit(url)
    if parts.scheme != "kubernetes" or not _NAMESPACE.match(parts.netloc) or parts.path not in ("", "/"):
        raise ConfigError(f"store {url!r}: expected kubernetes://NAMESPACE?kubeconfig=PATH&context=NAME")
    query = parse_qs(parts.query, strict_parsing=False)
    unknown = set(query) - {"kubeconfig", "context"}
    if unknown:
        raise ConfigError(
            f"store {url!r}: unknown option(s) {', '.join(sorted(unknown))} (kubeconfig, context)"
        )
    kubeconfig, context = query.get("kubeconfig"), query.get("context")
    return parts.netloc, kubeconfig[0] if kubeconfig else None, context[0] if context else None
