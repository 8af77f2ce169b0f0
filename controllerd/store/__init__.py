"""Where the controller keeps its records: SQLite (embedded default) or Kubernetes."""

from controllerd.store.base import Conflict, NotFound, StorageError, StorageFull, Store

__all__ = ["Conflict", "NotFound", "StorageError", "StorageFull", "Store", "open_store"]


def open_store(url: str) -> Store:
    """`sqlite:///var/lib/jumpstarter/controller.db` (or `sqlite://:memory:`)."""
    if url.startswith("sqlite://"):
        from controllerd.store.sqlite import SqliteStore

        path = url[len("sqlite://") :]
        return SqliteStore(":memory:" if path in (":memory:", "/:memory:") else path)
    raise ValueError(f"unknown store {url!r} (sqlite:///PATH; kubernetes comes with the Kubernetes store)")
