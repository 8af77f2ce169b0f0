"""The Kubernetes API as the store uses it: one namespace, blocking calls, our error vocabulary,
and informers (list + watch, resync, `410 Gone` handling) that keep a copy of a kind in memory.

Everything here blocks: the store runs it in threads (`asyncio.to_thread`), never on the loop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from controllerd.errors import Conflict, InvalidArgument, NotFound, StorageError
from controllerd.store.kube_values import Object
from jumpstarter.backoff import Backoff
from jumpstarter.errors import ConfigError

log = structlog.get_logger("store.kubernetes")

REQUEST_TIMEOUT = 30.0  # seconds for one API call
WATCH_TIMEOUT = 300  # the server ends a watch after this; the informer then resumes it from its RV
RESYNC = 60.0  # seconds between full re-lists, whatever the watch said (a missed event heals)


class StaleWrite(StorageError):
    """The object changed since it was read (another writer): nothing stored; re-read and retry."""


def api_client(kubeconfig: str | None, context: str | None) -> k8s.ApiClient:
    try:
        if kubeconfig is None and context is None:
            with contextlib.suppress(k8s_config.ConfigException):
                configuration = k8s.Configuration()
                k8s_config.load_incluster_config(client_configuration=configuration)
                return k8s.ApiClient(configuration)
        return k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
    except (k8s_config.ConfigException, OSError) as exc:
        raise ConfigError(f"kubernetes store: cannot load the cluster configuration: {exc}") from None


class Api:
    """CRUD on namespaced objects of one namespace; ApiExceptions become the controller's errors."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.client = api
        self.custom = k8s.CustomObjectsApi(api)
        self.namespace = namespace

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except k8s.ApiException as exc:
            raise _error(exc, what) from None
        except OSError as exc:  # urllib3 wraps most transport errors in OSError subclasses
            raise StorageError(f"kubernetes API: {what}: {exc}") from None
        except Exception as exc:  # urllib3's MaxRetryError and friends
            if type(exc).__module__.startswith("urllib3"):
                raise StorageError(f"kubernetes API: {what}: {exc}") from None
            raise

    def get(self, group: str, version: str, plural: str, name: str) -> Object:
        return self._call(  # type: ignore[no-any-return]
            f"get {plural}/{name}",
            lambda: self.custom.get_namespaced_custom_object(
                group, version, self.namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    def list(self, group: str, version: str, plural: str, selector: str = "") -> Object:
        return self._call(  # type: ignore[no-any-return]
            f"list {plural}",
            lambda: self.custom.list_namespaced_custom_object(
                group,
                version,
                self.namespace,
                plural,
                label_selector=selector,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )

    def create(self, group: str, version: str, plural: str, body: Object) -> Object:
        return self._call(  # type: ignore[no-any-return]
            f"create {plural}/{body['metadata']['name']}",
            lambda: self.custom.create_namespaced_custom_object(
                group, version, self.namespace, plural, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    def replace(self, group: str, version: str, plural: str, body: Object, *, status: bool = False) -> Object:
        name = body["metadata"]["name"]
        method = (
            self.custom.replace_namespaced_custom_object_status
            if status
            else self.custom.replace_namespaced_custom_object
        )
        return self._call(  # type: ignore[no-any-return]
            f"update {plural}/{name}{'/status' if status else ''}",
            lambda: method(
                group, version, self.namespace, plural, name, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    def delete(
        self, group: str, version: str, plural: str, name: str, resource_version: str | None = None
    ) -> None:
        body = (
            k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(resource_version=resource_version))
            if resource_version
            else None
        )
        self._call(
            f"delete {plural}/{name}",
            lambda: self.custom.delete_namespaced_custom_object(
                group, version, self.namespace, plural, name, body=body, _request_timeout=REQUEST_TIMEOUT
            ),
        )


def _error(exc: k8s.ApiException, what: str) -> Exception:
    status = exc.status or 0
    if status == 404:
        return NotFound(f"{what}: not found")
    if status == 409 and "already exists" in str(exc.body or ""):
        return Conflict(f"{what}: already exists")
    if status == 409:
        return StaleWrite(f"{what}: changed meanwhile by another writer; nothing stored")
    if status in (400, 422):
        return InvalidArgument(f"{what}: refused by the API server: {_message(exc)}")
    return StorageError(f"kubernetes API: {what}: {status} {_message(exc)}")


def _message(exc: k8s.ApiException) -> str:
    import json

    with contextlib.suppress(ValueError, TypeError):
        return str(json.loads(exc.body or "").get("message", exc.reason))
    return str(exc.reason)


def version_of(obj: Object) -> int:
    """An object's resourceVersion as a number, only to keep a cache from going back in time.

    Kubernetes calls resourceVersions opaque; they are etcd revisions, and anything else
    counts as 0 here (the cache then takes every event, as client-go's informers do)."""
    text = str(obj.get("metadata", {}).get("resourceVersion", ""))
    return int(text) if text.isdigit() else 0


class Informer:
    """A kind's objects in memory by name: listed, then watched from the list's resourceVersion.

    A watch that ends is resumed from the last event's version; `410 Gone` (history compacted)
    or any error means a fresh list; every RESYNC seconds it lists again anyway. `on_change(plural,
    object)` is called in the informer's thread after an event (object None after a full list)."""

    def __init__(
        self,
        api: Api,
        group: str,
        version: str,
        plural: str,
        on_change: Callable[[str, Object | None], None] = lambda plural, obj: None,
        resync: float = RESYNC,
        selector: str = "",
    ) -> None:
        self.api, self.group, self.version, self.plural = api, group, version, plural
        self.selector = selector
        self.on_change = on_change
        self.resync = resync
        self.lock = threading.Lock()
        self.objects: dict[str, Object] = {}
        self._gone: dict[str, int] = {}  # name -> version of our own delete: older events do not revive it
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._watch: k8s_watch.Watch | None = None
        self.relists = 0  # how many full lists (tests check 410 handling with it)
        self._thread = threading.Thread(target=self._run, name=f"informer-{plural}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def put(self, obj: Object) -> None:
        """Our own write's result: seen at once, not when its event arrives."""
        with self.lock:
            current = self.objects.get(obj["metadata"]["name"])
            if current is None or version_of(obj) >= version_of(current):
                self.objects[obj["metadata"]["name"]] = obj

    def forget(self, name: str, version: int = 0) -> None:
        with self.lock:
            self.objects.pop(name, None)
            self._gone[name] = version

    def snapshot(self) -> list[Object]:
        with self.lock:
            return list(self.objects.values())

    def get(self, name: str) -> Object | None:
        with self.lock:
            return self.objects.get(name)

    def _relist(self) -> str:
        listed = self.api.list(self.group, self.version, self.plural, self.selector)
        at = version_of(listed)
        with self.lock:
            fresh = {o["metadata"]["name"]: o for o in listed.get("items") or []}
            for name, mine in self.objects.items():  # our own writes newer than the list stay
                if version_of(mine) > max(at, version_of(fresh.get(name) or {})):
                    fresh[name] = mine
            self.objects = fresh
            self._gone = {n: v for n, v in self._gone.items() if v > at}
        self.relists += 1
        self.synced.set()
        self.on_change(self.plural, None)
        return str(listed["metadata"]["resourceVersion"])

    def _run(self) -> None:
        retry = Backoff(start=0.2, cap=5.0, jitter=0.2)
        while not self._stop.is_set():
            try:
                version = self._relist()
                retry.reset()
                self._follow(version)
            except Exception as exc:  # noqa: BLE001 - the informer outlives any failure: list again
                if self._stop.is_set():
                    return
                log.warning("kubernetes watch failed; listing again", kind=self.plural, error=str(exc))
                self._stop.wait(retry.next_pause() or 5.0)

    def _follow(self, version: str) -> None:
        """Apply watch events from `version` until the resync time; raises to relist (410, errors)."""
        import time

        until = time.monotonic() + self.resync
        while not self._stop.is_set() and time.monotonic() < until:
            self._watch = k8s_watch.Watch()
            timeout = max(1, min(WATCH_TIMEOUT, int(until - time.monotonic()) + 1))
            try:
                for event in self._watch.stream(
                    self.api.custom.list_namespaced_custom_object,
                    self.group,
                    self.version,
                    self.api.namespace,
                    self.plural,
                    resource_version=version,
                    label_selector=self.selector,
                    timeout_seconds=timeout,
                    allow_watch_bookmarks=True,
                    _request_timeout=(REQUEST_TIMEOUT, timeout + REQUEST_TIMEOUT),
                ):
                    obj = event["object"]
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if event["type"] == "BOOKMARK":
                        continue
                    self._apply(event["type"], obj)
                    if self._stop.is_set() or time.monotonic() >= until:
                        break
            finally:
                self._watch.stop()

    def _apply(self, type_: str, obj: Object) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            current = self.objects.get(name)
            if current is not None and version_of(obj) < version_of(current):
                return  # older than what our own write already put here
            if version_of(obj) <= self._gone.get(name, -1):
                return  # from before our own delete of it
            if type_ == "DELETED":
                self.objects.pop(name, None)
            else:
                self.objects[name] = obj
        self.on_change(self.plural, obj)
