"""Both stores for the store contract suite: `@pytest.fixture(params=STORES)` and `Backing(kind)`.

A Backing is what the records live in (a SQLite file, a fake Kubernetes cluster served by
tests/harness/kube_api.py); opening a second store on it is a restart, or a second replica.
"""

from __future__ import annotations

from pathlib import Path

from controllerd.store import Store, open_store
from tests.harness.kube_api import KubeApiServer

STORES = ["sqlite", "kubernetes"]
NAMESPACE = "lab"  # the namespace every contract test uses (a Kubernetes store serves one)


class Backing:
    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.api = KubeApiServer() if kind == "kubernetes" else None
        self.url = (
            f"kubernetes://{NAMESPACE}?kubeconfig={self.api.kubeconfig}"
            if self.api is not None
            else f"sqlite://{tmp_path}/c.db"
        )
        self.opened: list[Store] = []

    def open(self) -> Store:
        store = open_store(self.url)
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()
        if self.api is not None:
            self.api.close()

    def __enter__(self) -> Backing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
