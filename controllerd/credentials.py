"""Credentials for Clients and Exporters on the Kubernetes store, as upstream's controller makes them
(reference/upstream-controller.md §1.2, §1.6, §5.5), so that resources created with `kubectl apply`
get a token and upstream's `jmp admin create` works against us:

- Secret `<name>-client` / `<name>-exporter`, type Opaque, key `token`, with a controller owner
  reference to the resource (deleting the resource garbage-collects it);
- the resource's `status.credential` ({name}) and `status.endpoint`;
- ConfigMap `jumpstarter-service-ca-cert`, key `ca.crt`: the CA clients trust the controller with.

The token is the controller's own (TokenAuthority.issue): recorded and revocable like every token.
One token per resource: `ensure` is the only way in, for this reconciler and for `jumpstarter admin
create|rotate` over the socket; a Secret that already holds a good token is used, not replaced, and
the loser of a race to create the Secret revokes the token it minted (never handed out).
A good token is one this controller signed for this resource's uid and that is not about to expire.
A revoked one counts as good: a revocation stands (only `rotate` or deleting the Secret replaces it).
One that expires within RENEW of its lifetime (or has expired) is renewed, as upstream rewrites a token
that no longer validates: a new token goes into the Secret and the old one is left to expire. Deleting the Secret
of a resource whose status names it is a rotation, as upstream's `admin rotate`: older tokens are
revoked and a new one is written.

Only the leader reconciles (`leading`); a pass reacts to watch events within about a second (checking
only what changed: an exporter's heartbeat costs a dict lookup), re-checks everything every RESYNC
seconds, and mints at most PER_PASS tokens per pass (the rest on the next one).
Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
import structlog
from kubernetes import client as k8s

from controllerd import audit
from controllerd.auth import ALGORITHM, TokenAuthority, subject
from controllerd.errors import Conflict, InvalidArgument, NotFound, StorageError
from controllerd.health_checks import HEALTH_CLIENT
from controllerd.store import kube_codec as codec
from controllerd.store.kube_client import REQUEST_TIMEOUT, StaleWrite

if TYPE_CHECKING:
    from controllerd.store.kube_client import Informer
    from controllerd.store.kubernetes import KubernetesStore

log = structlog.get_logger("controllerd.credentials")

SUFFIX = {"Client": "-client", "Exporter": "-exporter"}
PLURAL = {"Client": "clients", "Exporter": "exporters"}
CA_CONFIGMAP = "jumpstarter-service-ca-cert"
CA_KEY = "ca.crt"
MANAGED_BY = {"app.kubernetes.io/managed-by": "jumpstarter-controllerd"}
RESYNC = 15.0  # seconds between full checks (Secrets are not watched: a deleted one is seen here)
MIN_GAP = 1.0  # seconds between passes: exporter heartbeats must not turn into a pass each
PER_PASS = 50  # tokens minted per pass at most
TRIES = 8
MAX_RENEW = 7 * 24 * 3600.0  # a token is renewed this long before it expires at most...
RENEW = 0.1  # ...or this part of its lifetime before, whichever is shorter
ACTOR = "credentials"  # who rotated, in the audit history


def secret_name(kind: str, name: str) -> str:
    return name + SUFFIX[kind]


class Credentials:
    def __init__(self, store: KubernetesStore, auth: TokenAuthority, ca_pem: bytes, ttl: float) -> None:
        self.store, self.api, self.auth = store, store.api, auth
        self.namespace = store.namespace
        self.core = k8s.CoreV1Api(store.api.client)
        self.ca = ca_pem.decode()
        self.ttl = ttl
        self.leading: Callable[[], bool] = lambda: True
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Secret name -> (its resourceVersion, uid, when to renew) of a credential checked good
        self._good: dict[str, tuple[str, str, float]] = {}
        self._full_at = 0.0  # monotonic time of the last full pass
        self._dirty: set[tuple[str, str]] = set()  # (kind, name) the watches saw change

    # -- blocking calls (run in threads) ------------------------------------------------------

    def _core(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`method(*args, **kwargs)` of CoreV1Api, bounded in time as the store's own calls are."""
        return self.api._call(  # the one mapping of API errors to ours
            what, lambda: method(*args, **kwargs, _request_timeout=REQUEST_TIMEOUT)
        )

    def _read_secret(self, name: str) -> k8s.V1Secret | None:
        try:
            return self._core(f"get secrets/{name}", self.core.read_namespaced_secret, name, self.namespace)
        except NotFound:
            return None

    def _write_secret(
        self, name: str, current: k8s.V1Secret | None, token: str, owner: dict[str, Any]
    ) -> str:
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels=dict(MANAGED_BY),
                owner_references=[
                    k8s.V1OwnerReference(
                        api_version=owner["apiVersion"],
                        kind=owner["kind"],
                        name=owner["metadata"]["name"],
                        uid=owner["metadata"]["uid"],
                        controller=True,
                        block_owner_deletion=True,
                    )
                ],
            ),
            type="Opaque",
            data={"token": base64.b64encode(token.encode()).decode()},
        )
        if current is None:
            stored = self._core(
                f"create secrets/{name}", self.core.create_namespaced_secret, self.namespace, body
            )
        else:  # at the version read: a concurrent writer makes this a 409, never a lost token
            _meta(body).resource_version = _meta(current).resource_version
            stored = self._core(
                f"update secrets/{name}",
                self.core.replace_namespaced_secret,
                name,
                self.namespace,
                body,
            )
        return str(_meta(stored).resource_version)

    def _list_secrets(self) -> dict[str, k8s.V1Secret]:
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        listed = self._core(
            "list secrets", self.core.list_namespaced_secret, self.namespace, label_selector=selector
        )
        return {str(_meta(s).name): s for s in listed.items or []}

    def _set_status(self, kind: str, name: str) -> None:
        """status.credential and status.endpoint, written at the version read (retried on a 409)."""
        plural, informer = PLURAL[kind], self._informer(kind)
        for _ in range(TRIES):
            obj = self.api.get(codec.GROUP, codec.VERSION, plural, name)
            status = dict(obj.get("status") or {})
            wanted = {"credential": {"name": secret_name(kind, name)}, "endpoint": self.auth.endpoint}
            if all(status.get(k) == v for k, v in wanted.items()):
                return
            try:
                stored = self.api.replace(
                    codec.GROUP, codec.VERSION, plural, dict(obj, status={**status, **wanted}), status=True
                )
            except StaleWrite:
                continue
            informer.put(stored)
            return
        raise StaleWrite(f"{plural}/{name}: status kept changing; credential not recorded")

    def publish_ca(self) -> None:
        """ConfigMap jumpstarter-service-ca-cert (ca.crt): what `jmp admin create` puts in configs."""
        try:
            current = self._core(
                f"get configmaps/{CA_CONFIGMAP}",
                self.core.read_namespaced_config_map,
                CA_CONFIGMAP,
                self.namespace,
            )
        except NotFound:
            current = None
        if current is not None and (current.data or {}).get(CA_KEY) == self.ca:
            return
        body = k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name=CA_CONFIGMAP, namespace=self.namespace, labels=dict(MANAGED_BY)),
            data={**((current.data or {}) if current is not None else {}), CA_KEY: self.ca},
        )
        if current is None:
            self._core(
                f"create configmaps/{CA_CONFIGMAP}",
                self.core.create_namespaced_config_map,
                self.namespace,
                body,
            )
        else:
            _meta(body).resource_version = _meta(current).resource_version
            self._core(
                f"update configmaps/{CA_CONFIGMAP}",
                self.core.replace_namespaced_config_map,
                CA_CONFIGMAP,
                self.namespace,
                body,
            )
        log.info("published the CA", configmap=CA_CONFIGMAP)

    # -- checks ----------------------------------------------------------------------------

    def _informer(self, kind: str) -> Informer:
        return self.store.clients if kind == "Client" else self.store.exporters

    def _token_of(
        self, secret: k8s.V1Secret | None, kind: str, name: str, uid: str, owner_uid: str
    ) -> str | None:
        """The Secret's token if it is ours for this resource (signed by us, its subject and uid,
        the Secret owned by this very object), whether revoked or expiring (`ensure` and `_check` judge those)."""
        if secret is None or not secret.data or not secret.data.get("token"):
            return None
        if not any(ref.uid == owner_uid for ref in _meta(secret).owner_references or []):
            return None
        try:
            token = base64.b64decode(secret.data["token"], validate=True).decode()
            claims = jwt.decode(
                token,
                self.auth.public,
                algorithms=[ALGORITHM],
                audience=self.auth.audiences,
                issuer=self.auth.issuer,
                options={"verify_exp": False},
            )
        except (ValueError, UnicodeDecodeError, jwt.PyJWTError):
            return None
        return token if claims.get("sub") == subject(kind, self.namespace, name, uid) else None

    # -- the one way a credential is made -------------------------------------------------

    async def ensure(self, kind: str, name: str, uid: str, *, force: bool = False) -> tuple[str, float]:
        """The resource's token, from its Secret when that holds a good one (`force`: a new one
        anyway, for rotate); writes the Secret and the status. Returns (token, expiry)."""
        if kind == "Client" and name == HEALTH_CLIENT:
            raise InvalidArgument(f"client name {name!r} is reserved for the controller's health checks")
        owner = await asyncio.to_thread(self.api.get, codec.GROUP, codec.VERSION, PLURAL[kind], name)
        name_of = secret_name(kind, name)
        for _ in range(TRIES):
            secret = await asyncio.to_thread(self._read_secret, name_of)
            token = self._token_of(secret, kind, name, uid, owner["metadata"]["uid"])
            expires = _expiry(token) if token is not None else 0.0
            if token is not None and not force and time.time() < self.renew_at(expires):
                await asyncio.to_thread(self._set_status, kind, name)
                return token, expires
            if token is None and not force and _published(owner, name_of):  # deleted or spoilt: a rotation
                await self._rotated(kind, name, "its Secret was deleted or changed")  # as upstream's rotate
            elif token is not None and not force:  # expiring: a new one; the old one runs out by itself
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
                why = f"its token expire{'d' if expires <= time.time() else 's'} at {when}"
                await self.store.append_audit(
                    [audit.event(self.namespace, kind.lower(), name, "renewed", ACTOR, "TokenRenewed", why)]
                )
            minted, expiry = await self.auth.issue(kind, self.namespace, name, uid, self.ttl)
            try:
                await asyncio.to_thread(self._write_secret, name_of, secret, minted, owner)
            except (Conflict, StaleWrite):  # another replica or call wrote it first: use theirs
                await self.auth.revoke(jti=jwt.decode(minted, options={"verify_signature": False})["jti"])
                continue
            await asyncio.to_thread(self._set_status, kind, name)
            log.info("credential written", kind=kind, name=name, secret=name_of)
            return minted, expiry
        raise StaleWrite(f"secrets/{name_of}: kept changing; no credential written")

    def renew_at(self, expires: float) -> float:
        """When a token that expires at `expires` is renewed."""
        return expires - min(MAX_RENEW, RENEW * self.ttl)

    async def _rotated(self, kind: str, name: str, why: str) -> None:
        event = audit.event(self.namespace, kind.lower(), name, "rotated", ACTOR, "TokenRotated", why)
        await self.auth.revoke(subject_prefix=subject(kind, self.namespace, name, ""), audit=[event])

    # -- the reconciler ---------------------------------------------------------------------

    def follow(self, leading: Callable[[], bool]) -> None:
        """Run passes while `leading()`, and after the watches see a Client or Exporter change."""
        self.leading = leading
        changed = self.store.on_change

        def on_change(plural: str, obj: Any) -> None:
            changed(plural, obj)
            if plural in ("clients", "exporters"):
                self.poke(plural, obj)

        self.store.on_change = on_change

    def poke(self, plural: str, obj: Any) -> None:
        """From an informer thread: check that object soon (None: a fresh list, check everything)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._mark, plural, obj)

    def _mark(self, plural: str, obj: Any) -> None:
        if obj is None:
            self._full_at = 0.0
        else:
            self._dirty.add(("Client" if plural == "clients" else "Exporter", obj["metadata"]["name"]))
        self._wake.set()

    def _check(
        self, kind: str, obj: dict[str, Any], secrets: dict[str, k8s.V1Secret] | None
    ) -> Missing | None:
        """What to do for one resource, or None when its credential is good. Without `secrets` (a
        watch event) a credential checked good before, for this uid, is taken as still good."""
        name = obj["metadata"]["name"]
        if kind == "Client" and name == HEALTH_CLIENT:  # its token could use or end the checker's leases
            return None
        uid = (codec.client_record(obj) if kind == "Client" else codec.exporter_record(obj)).uid
        name_of = secret_name(kind, name)
        status = obj.get("status") or {}
        published = _published(obj, name_of)
        if published and status.get("endpoint") == self.auth.endpoint:
            known = self._good.get(name_of)
            fresh = known is not None and time.time() < known[2]
            if secrets is None and fresh and known is not None and known[1] == uid:
                return None
            secret = secrets.get(name_of) if secrets is not None else None
            if secret is not None:
                seen = (str(_meta(secret).resource_version), uid)
                if fresh and known is not None and known[:2] == seen:
                    return None
                token = self._token_of(secret, kind, name, uid, obj["metadata"].get("uid", ""))
                renew = self.renew_at(_expiry(token)) if token is not None else 0.0
                if token is not None and time.time() < renew:
                    self._good[name_of] = (*seen, renew)
                    return None
        return Missing(kind, name, uid)

    async def reconcile(self, full: bool) -> int:
        """One pass over every resource (`full`) or those the watches saw change; how many are left."""
        secrets: dict[str, k8s.V1Secret] | None = None
        if full:
            await asyncio.to_thread(self.publish_ca)
            secrets = await asyncio.to_thread(self._list_secrets)
            self._good = {k: v for k, v in self._good.items() if k in secrets}
            candidates = [(kind, o) for kind in PLURAL for o in self._informer(kind).snapshot()]
        else:
            dirty, self._dirty = self._dirty, set()
            found = ((kind, self._informer(kind).get(name)) for kind, name in dirty)
            candidates = [(kind, o) for kind, o in found if o is not None]
        todo = [m for kind, o in candidates if (m := self._check(kind, o, secrets)) is not None]
        for item in todo[:PER_PASS]:
            try:
                _, expires = await self.ensure(item.kind, item.name, item.uid)
                self._good[secret_name(item.kind, item.name)] = ("", item.uid, self.renew_at(expires))
            except NotFound:
                pass  # the resource was deleted meanwhile
            except (StorageError, InvalidArgument, Conflict) as exc:
                log.warning("credential not written", kind=item.kind, name=item.name, error=str(exc))
        for item in todo[PER_PASS:]:  # the next pass, soon
            self._dirty.add((item.kind, item.name))
        return max(0, len(todo) - PER_PASS)

    async def run(self) -> None:
        """Forever, while leading: a pass after watch events (at most one per MIN_GAP), and a full
        one every RESYNC seconds (a deleted Secret, a missed event) and on becoming the leader."""
        self._loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), MIN_GAP if not self.leading() else RESYNC)
            self._wake.clear()
            if not self.leading():
                self._full_at = 0.0  # whoever leads next starts with a full pass
                continue
            full = time.monotonic() - self._full_at >= RESYNC
            try:
                if full:
                    self._full_at = time.monotonic()
                if await self.reconcile(full):
                    self._wake.set()
            except Exception as exc:  # noqa: BLE001 - the reconciler outlives any failure; the next pass retries
                log.warning("credentials pass failed", error=str(exc))
                self._full_at = 0.0
            await asyncio.sleep(MIN_GAP)


@dataclass(frozen=True)
class Missing:
    kind: str
    name: str
    uid: str


def _meta(obj: Any) -> k8s.V1ObjectMeta:
    meta = obj.metadata
    assert meta is not None, "the API server always answers metadata"
    return meta  # type: ignore[no-any-return]


def _expiry(token: str) -> float:
    """A token's `exp` (already verified as ours by `_token_of`)."""
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def _published(obj: dict[str, Any], name_of: str) -> bool:
    return ((obj.get("status") or {}).get("credential") or {}).get("name") == name_of
