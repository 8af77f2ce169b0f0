"""A small Kubernetes API server for tests: a TEST DOUBLE, because no real API server can be
installed or run on these machines (no kind, k3s or etcd here).

It implements exactly the endpoints controllerd's Kubernetes store and leader election use,
with the behaviour the Kubernetes API documents for them (API concepts: "Resource versions",
"Efficient detection of changes", "Conflicts"; CRD docs: "Status subresource"):

- HTTPS on loopback with a certificate from a test CA, and a bearer token (401 without it).
- Namespaced resources under `/apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME[/status]]`:
  the jumpstarter.dev CRDs, our lab.jumpstarter.dev kinds and coordination.k8s.io/v1 Leases;
  plus the all-namespaces list `/apis/GROUP/VERSION/PLURAL`.
- create (POST; 409 AlreadyExists; server-set uid, creationTimestamp, resourceVersion, generation),
  get, replace (PUT; `metadata.resourceVersion` required for custom resources, 409 Conflict when it
  is stale), delete (with `preconditions`), and the status subresource: a PUT to the main resource
  ignores `status`, a PUT to `/status` changes only `status`, POST drops `status`.
- list with `labelSelector` (equality and set-based), answered with the list's resourceVersion.
- watch (`?watch=true&resourceVersion=RV`): the events after RV as chunked JSON lines; without RV,
  synthetic ADDED events for what exists first. An RV older than the kept history gets an ERROR
  event whose Status is `410 Expired` ("too old resource version"), as the API server does.
- resourceVersions are one cluster-wide counter (etcd's revision), strings to clients.
- deleting an object deletes what names it in `metadata.ownerReferences` (the garbage collector).
- core v1 ServiceAccounts, Secrets and ConfigMaps (namespaced CRUD as above, no resourceVersion required);
  TokenRequest (`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`: `spec.audiences`,
  `spec.expirationSeconds` >= 600, 404 for a missing ServiceAccount) answering a JWT whose `sub` is
  `system:serviceaccount:NS:NAME`; and TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`):
  authenticated only for a token this server minted, unexpired, whose ServiceAccount still exists
  with the same uid, and (when `spec.audiences` is given) valid for one of them; `status.audiences`
  is the intersection. Unlike a real cluster the tokens are HS256 with a key only this server holds
  (a real one signs RS256 with keys it publishes): a consumer must use TokenReview, never verify them.

Tests use `compact()` to drop the history (forcing 410 on the next watch) and `drop_watches()`
to cut every open watch (as an API server restart or a load balancer does).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jumpstarter import tls
from jumpstarter.selector import SelectorError, parse


@dataclass(frozen=True)
class Kind:
    kind: str
    status: bool  # has the status subresource
    custom: bool = True  # custom resources refuse an update without resourceVersion


KINDS: dict[tuple[str, str, str], Kind] = {
    ("jumpstarter.dev", "v1alpha1", "exporters"): Kind("Exporter", True),
    ("jumpstarter.dev", "v1alpha1", "clients"): Kind("Client", True),
    ("jumpstarter.dev", "v1alpha1", "leases"): Kind("Lease", True),
    ("jumpstarter.dev", "v1alpha1", "exporteraccesspolicies"): Kind("ExporterAccessPolicy", True),
    ("lab.jumpstarter.dev", "v1alpha1", "controllertokens"): Kind("ControllerToken", False),
    ("lab.jumpstarter.dev", "v1alpha1", "auditevents"): Kind("AuditEvent", False),
    ("lab.jumpstarter.dev", "v1alpha1", "controllersequences"): Kind("ControllerSequence", False),
    ("coordination.k8s.io", "v1", "leases"): Kind("Lease", False, custom=False),
    ("", "v1", "serviceaccounts"): Kind("ServiceAccount", False, custom=False),
    ("", "v1", "secrets"): Kind("Secret", False, custom=False),
    ("", "v1", "configmaps"): Kind("ConfigMap", False, custom=False),
}
SERVICE_ACCOUNTS = ("", "v1", "serviceaccounts")
TOKEN_REVIEWS = ("authentication.k8s.io", "v1", "tokenreviews")
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"  # what a cluster's SA tokens name as `iss`
API_AUDIENCE = SA_ISSUER  # the audience a TokenRequest without `audiences` gets (the API server's own)
MIN_TOKEN_SECONDS = 600  # TokenRequest refuses shorter lifetimes

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>status|token))?)?$"
)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


Key = tuple[tuple[str, str, str], str, str]  # (group, version, plural), namespace, name


class FakeCluster:
    """The objects, the resourceVersion counter and the event history (bounded: older RVs get 410)."""

    def __init__(self, history: int = 2000) -> None:
        self.lock = threading.Condition()
        self.objects: dict[Key, dict[str, Any]] = {}
        self.revision = 1  # etcd's first revision: a list of nothing still names a version to watch from
        # (revision, type, key, object, the object before: a selector watch sees it leave or enter)
        self.events: deque[tuple[int, str, Key, dict[str, Any], dict[str, Any] | None]] = deque(
            maxlen=history
        )
        self.oldest = 1  # the first revision still in the history, minus one
        self.generation = 0  # bumped by drop_watches()
        self.requests = 0

    def _record(
        self, type_: str, key: Key, obj: dict[str, Any], before: dict[str, Any] | None = None
    ) -> None:
        if len(self.events) == self.events.maxlen:
            self.oldest = self.events[0][0]
        self.events.append((self.revision, type_, key, copy.deepcopy(obj), before))
        self.lock.notify_all()

    def _bump(self, obj: dict[str, Any]) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)

    def compact(self) -> None:
        """Forget the history (etcd compaction): a watch from any earlier RV now gets 410 Gone."""
        with self.lock:
            self.events.clear()
            self.oldest = self.revision

    def drop_watches(self) -> None:
        with self.lock:
            self.generation += 1
            self.lock.notify_all()

    # -- operations (called with the lock held) -------------------------------------

    def get(self, key: Key) -> dict[str, Any]:
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{key[0][2]}.{key[0][0]} "{key[2]}" not found')
        return obj

    def create(self, key: Key, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{key[0][2]}.{key[0][0]} "{key[2]}" already exists')
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        for server_set in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            meta.pop(server_set, None)
        meta.update(
            namespace=key[1],
            uid=str(uuid.uuid4()),
            generation=1,
            creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        if kind.status:
            obj.pop("status", None)  # POST to a resource with the status subresource ignores status
        self._bump(obj)
        self.objects[key] = obj
        self._record("ADDED", key, obj)
        return obj

    def replace(self, key: Key, kind: Kind, body: dict[str, Any], status_only: bool) -> dict[str, Any]:
        current = self.get(key)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if not wanted and kind.custom:
            raise ApiError(
                422,
                "Invalid",
                f'{kind.kind} "{key[2]}" is invalid: metadata.resourceVersion: '
                "Invalid value: 0: must be specified for an update",
            )
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[0][2]}.{key[0][0]} "{key[2]}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        obj = copy.deepcopy(current)
        if status_only:
            obj["status"] = copy.deepcopy(body.get("status"))
            if obj["status"] is None:
                obj.pop("status")
        else:
            new = copy.deepcopy(body)
            meta = new.setdefault("metadata", {})
            for server_set in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                meta[server_set] = obj["metadata"][server_set]
            if kind.status:  # the main resource ignores status changes
                new.pop("status", None)
                if "status" in obj:
                    new["status"] = obj["status"]
            if new.get("spec") != obj.get("spec"):
                meta["generation"] = obj["metadata"]["generation"] + 1
            obj = new
        self._bump(obj)
        self.objects[key] = obj
        self._record("MODIFIED", key, obj, current)
        return obj

    def delete(self, key: Key, body: dict[str, Any]) -> dict[str, Any]:
        current = self.get(key)
        wanted = ((body or {}).get("preconditions") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[0][2]}.{key[0][0]} "{key[2]}": '
                "Precondition failed: ResourceVersion in precondition does not match",
            )
        del self.objects[key]
        self._bump(current)
        self._record("DELETED", key, current)
        self._collect(current["metadata"]["uid"])
        return current

    def _collect(self, owner: str) -> None:
        """The garbage collector (background propagation): what `owner` owned goes with it."""
        for key, obj in list(self.objects.items()):
            if any(ref.get("uid") == owner for ref in obj["metadata"].get("ownerReferences") or []):
                self.delete(key, {})

    def select(self, gvr: tuple[str, str, str], ns: str | None, selector: str) -> list[dict[str, Any]]:
        wanted = _selector(selector)
        return [
            obj
            for (g, n, _), obj in sorted(self.objects.items(), key=lambda kv: kv[0][1:])
            if g == gvr and (ns is None or n == ns) and wanted.matches(obj["metadata"].get("labels") or {})
        ]


def _selector(text: str) -> Any:
    try:
        return parse(text)
    except SelectorError as exc:
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {exc}") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stall per reply

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(
        self,
    ) -> tuple[Key | None, tuple[str, str, str], Kind, str | None, str | None, dict[str, list[str]]]:
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        parts = urlsplit(self.path)
        match = _PATH.match(parts.path)
        if not match:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({parts.path})"
            )
        if match["core"]:
            gvr = ("", "v1", match["plural"])
        else:
            gvr = (match["group"], match["version"], match["plural"])
        kind = KINDS.get(gvr)
        if gvr == TOKEN_REVIEWS and not match["ns"] and not match["name"]:
            kind = Kind("TokenReview", False, custom=False)
        sub_ok = match["sub"] is None or (
            (match["sub"] == "status" and kind is not None and kind.status)
            or (match["sub"] == "token" and gvr == SERVICE_ACCOUNTS)
        )
        if kind is None or not sub_ok:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({parts.path})"
            )
        ns, name = match["ns"], match["name"]
        if name is not None and ns is None:
            raise ApiError(404, "NotFound", "namespaced resources need a namespace")
        key = (gvr, ns or "", name) if name is not None else None
        return key, gvr, kind, match["sub"], ns, parse_qs(parts.query)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 3 * 1024 * 1024:  # the API server's request size limit
            raise ApiError(413, "RequestEntityTooLarge", "request is too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise ApiError(400, "BadRequest", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        return body

    def _handle(self, method: str) -> None:
        cluster = self.server.cluster
        try:
            key, gvr, kind, sub, ns, query = self._route()
            with cluster.lock:
                cluster.requests += 1
            if method == "GET" and key is None:
                selector = (query.get("labelSelector") or [""])[0]
                if (query.get("watch") or [""])[0] in ("true", "1"):
                    self._watch(gvr, ns, selector, query)
                    return
                with cluster.lock:
                    items = copy.deepcopy(cluster.select(gvr, ns, selector))
                    version = str(cluster.revision)
                self._send(
                    200,
                    {
                        "apiVersion": "/".join(part for part in gvr[:2] if part),
                        "kind": f"{kind.kind}List",
                        "metadata": {"resourceVersion": version},
                        "items": items,
                    },
                )
                return
            body = self._body() if method in ("POST", "PUT", "DELETE") else {}
            if gvr == TOKEN_REVIEWS or sub == "token":
                if method != "POST":
                    raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")
                if sub == "token":
                    assert key is not None
                    self._send(201, self.server.tokens.request(cluster, key, body))
                else:
                    self._send(201, self.server.tokens.review(cluster, body))
                return
            with cluster.lock:
                if method == "POST" and key is None and ns is not None:
                    name = (body.get("metadata") or {}).get("name")
                    if not name:
                        raise ApiError(422, "Invalid", "metadata.name: Required value: name is required")
                    if (body.get("metadata") or {}).get("namespace") not in (None, ns):
                        raise ApiError(
                            400, "BadRequest", "the namespace of the object does not match the request"
                        )
                    self._send(201, copy.deepcopy(cluster.create((gvr, ns, name), kind, body)))
                elif key is None:
                    raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection here")
                elif method == "GET":
                    self._send(200, copy.deepcopy(cluster.get(key)))
                elif method == "PUT":
                    if (body.get("metadata") or {}).get("name") not in (None, key[2]):
                        raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
                    self._send(200, copy.deepcopy(cluster.replace(key, kind, body, sub == "status")))
                elif method == "DELETE":
                    self._send(200, copy.deepcopy(cluster.delete(key, body)))
                else:
                    raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")
        except ApiError as exc:
            self._send(exc.code, exc.status())

    def _chunk(self, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(
        self, gvr: tuple[str, str, str], ns: str | None, selector: str, query: dict[str, list[str]]
    ) -> None:
        cluster = self.server.cluster
        wanted = _selector(selector)
        since = (query.get("resourceVersion") or [""])[0]
        timeout = float((query.get("timeoutSeconds") or ["1800"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        end = time.monotonic() + timeout

        def ours(key: Key, obj: dict[str, Any]) -> bool:
            return (
                key[0] == gvr
                and (ns is None or key[1] == ns)
                and wanted.matches(obj["metadata"].get("labels") or {})
            )

        with cluster.lock:
            generation = cluster.generation
            if since in ("", "0"):  # start from "any": the current state as ADDED events first
                backlog = [
                    ("ADDED", copy.deepcopy(o)) for k, o in sorted(cluster.objects.items()) if ours(k, o)
                ]
                position = cluster.revision
            elif not since.isdigit() or int(since) < cluster.oldest:
                gone = ApiError(410, "Expired", f"too old resource version: {since} ({cluster.oldest + 1})")
                backlog, position = [("ERROR", gone.status())], -1
            else:
                backlog, position = [], int(since)
        try:
            for type_, obj in backlog:
                self._chunk({"type": type_, "object": obj})
            while position >= 0 and time.monotonic() < end:
                with cluster.lock:
                    fresh = [e for e in cluster.events if e[0] > position]
                    if not fresh:
                        cluster.lock.wait(min(0.5, max(0.0, end - time.monotonic())))
                        if cluster.generation != generation or self.server.closing:
                            break
                        continue
                if fresh[0][0] > position + 1 and position < cluster.oldest:  # fell out of the history
                    gone = ApiError(410, "Expired", f"too old resource version: {position}")
                    self._chunk({"type": "ERROR", "object": gone.status()})
                    break
                for revision, type_, key, obj, before in fresh:
                    position = revision
                    now_in, was_in = ours(key, obj), before is not None and ours(key, before)
                    if type_ == "MODIFIED" and was_in != now_in:  # left or entered the selected set
                        type_ = "DELETED" if was_in else "ADDED"
                    if now_in or was_in:
                        self._chunk({"type": type_, "object": obj})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - the base class's names
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class ServiceAccountTokens:
    """TokenRequest and TokenReview (authentication.k8s.io/v1) over this server's ServiceAccounts."""

    def __init__(self) -> None:
        self._key = uuid.uuid4().hex + uuid.uuid4().hex
        self.reviews = 0  # how many TokenReviews were asked (tests check a cache is used)

    def request(self, cluster: FakeCluster, key: Key, body: dict[str, Any]) -> dict[str, Any]:
        import jwt

        spec = body.get("spec") or {}
        audiences = spec.get("audiences") or [API_AUDIENCE]
        seconds = int(spec.get("expirationSeconds") or 3600)
        if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
            raise ApiError(422, "Invalid", "spec.audiences: Invalid value: must be a list of strings")
        if seconds < MIN_TOKEN_SECONDS:
            raise ApiError(
                422,
                "Invalid",
                f"spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes",
            )
        with cluster.lock:
            account = copy.deepcopy(cluster.get(key))
        now = int(time.time())
        _, ns, name = key
        token = jwt.encode(
            {
                "iss": SA_ISSUER,
                "sub": f"system:serviceaccount:{ns}:{name}",
                "aud": audiences,
                "iat": now,
                "nbf": now,
                "exp": now + seconds,
                "kubernetes.io": {
                    "namespace": ns,
                    "serviceaccount": {"name": name, "uid": account["metadata"]["uid"]},
                },
            },
            self._key,
            algorithm="HS256",
        )
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"audiences": audiences, "expirationSeconds": seconds},
            "status": {
                "token": token,
                "expirationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + seconds)),
            },
        }

    def review(self, cluster: FakeCluster, body: dict[str, Any]) -> dict[str, Any]:
        import jwt

        spec = body.get("spec") or {}
        token, wanted = spec.get("token"), spec.get("audiences") or []
        if not isinstance(token, str) or not isinstance(wanted, list):
            raise ApiError(400, "BadRequest", "spec.token must be a string, spec.audiences a list")
        self.reviews += 1
        answer: dict[str, Any] = {"authenticated": False, "user": {}}
        try:
            claims = jwt.decode(
                token, self._key, algorithms=["HS256"], options={"verify_aud": False}, issuer=SA_ISSUER
            )
            owner = claims["kubernetes.io"]
            ns, name, uid = (
                owner["namespace"],
                owner["serviceaccount"]["name"],
                owner["serviceaccount"]["uid"],
            )
            with cluster.lock:
                account = cluster.objects.get((SERVICE_ACCOUNTS, ns, name))
            if account is None or account["metadata"]["uid"] != uid:
                raise ValueError("service account deleted")
            audiences = [a for a in claims["aud"] if not wanted or a in wanted]
            if not audiences:
                raise ValueError("token audiences do not match")
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            answer["error"] = f"[invalid bearer token, {exc}]"
        else:
            answer = {
                "authenticated": True,
                "user": {
                    "username": f"system:serviceaccount:{ns}:{name}",
                    "uid": uid,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{ns}",
                        "system:authenticated",
                    ],
                },
                "audiences": audiences,
            }
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": answer,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    cluster: FakeCluster
    token: str
    tokens: ServiceAccountTokens
    closing: bool = False


class KubeApiServer:
    """`with KubeApiServer() as api:` serves on 127.0.0.1 with TLS; `api.kubeconfig` is a file for it."""

    def __init__(self, cluster: FakeCluster | None = None) -> None:
        self.cluster = cluster or FakeCluster()
        self.token = uuid.uuid4().hex
        self._dir = tempfile.TemporaryDirectory(prefix="kube-api-")
        root = Path(self._dir.name)
        ca_cert, ca_key = tls.generate_ca()
        cert, key = tls.issue(tls.LabCA("ca.crt", "ca.key", ca_cert, ca_key), ["127.0.0.1", "localhost"])
        (root / "ca.crt").write_bytes(ca_cert)
        (root / "tls.crt").write_bytes(cert)
        (root / "tls.key").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(root / "tls.crt", root / "tls.key")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.cluster, self._server.token = self.cluster, self.token
        self.tokens = self._server.tokens = ServiceAccountTokens()
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self.kubeconfig = str(root / "kubeconfig")
        self.write_kubeconfig(self.kubeconfig, str(root / "ca.crt"))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def write_kubeconfig(self, path: str, ca_path: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url, "certificate-authority": ca_path}}],
            "users": [{"name": "controller", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "controller"}}],
            "current-context": "fake",
        }
        Path(path).write_text(json.dumps(config))
        Path(path).chmod(0o600)

    def close(self) -> None:
        self._server.closing = True
        self.cluster.drop_watches()
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(OSError):
            self._dir.cleanup()

    def __enter__(self) -> KubeApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
