"""ServiceAccount identities checked through TokenReview (issue 11 §3, DESIGN.md §5 "Auth").

On the Kubernetes store a caller may present a cluster token (TokenRequest, audience = this
controller's gRPC endpoint) instead of one of our ES256 tokens. As upstream's BasicAuthorizer
(reference/upstream-controller.md §5.3) it names itself with `jumpstarter-kind/-namespace/-name`;
the object must exist in the store's namespace and its `spec.username` must equal the username
the cluster vouches for, exactly.

Bounded: answers are cached by sha256(token) (positive at most `cache_seconds` and never past the
token's `exp`, negative NEGATIVE_SECONDS), LRU-bounded; callers presenting the same token share one
review; at most IN_FLIGHT reviews reach the API server at once, at most MAX_WAITING wait for a
turn, and new tokens are reviewed at REVIEW_RATE per second after a burst of REVIEW_BURST
(beyond: RESOURCE_EXHAUSTED), so a flood of random tokens is not a flood on the API server.
Exporters' long streams (Status, Listen) are re-reviewed every `cache_seconds` and ended once
refused (ServiceAccount deleted, token expired, `spec.username` changed, object deleted).
Tokens are held in memory only, never logged or stored; Identity.jti is "sa:" + sha256[:16].
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from controllerd.errors import PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable

if TYPE_CHECKING:
    from controllerd.auth import Identity, TokenAuthority
    from controllerd.config import ControllerConfig
    from controllerd.hub import Hub
    from controllerd.store import Store
    from controllerd.store.kubernetes import KubernetesStore

log = structlog.get_logger("controllerd.kube_identity")

IN_FLIGHT = 4  # TokenReviews at once against the API server
MAX_WAITING = 64  # reviews waiting for a turn; beyond, callers are told to retry
MAX_ENTRIES = 4096  # cached answers (LRU)
MAX_LIVE = 4096  # exporters' streams whose tokens are re-reviewed
REVIEW_RATE = 20.0  # new (uncached) tokens reviewed per second after the burst
REVIEW_BURST = 200  # a controller restart: this many exporters and clients reconnect at once
NEGATIVE_SECONDS = 5.0  # a refused token is refused from the cache this long
REVIEW_TIMEOUT = 10.0  # seconds for one TokenReview call
REVOKED_MEMORY = 120.0  # seconds a refused stream's jti stays in auth.revoked (its streams see it)

# (token, audiences) -> (username or "", why refused); raises Unavailable when the API cannot answer
ReviewCall = Callable[[str, list[str]], tuple[str, str]]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_jti(token: str) -> str:
    """Stable and non-secret: names the token in logs and in `auth.revoked` without revealing it."""
    return "sa:" + token_hash(token)[:16]


def unverified_expiry(token: str) -> float | None:
    """The `exp` a JWT claims (unverified: used only to cache an answer for less time, never more)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = payload.get("exp") if isinstance(payload, dict) else None
    except (ValueError, TypeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


@dataclass(frozen=True)
class Answer:
    username: str  # "" when refused
    problem: str
    until: float  # monotonic time the answer may be served from the cache


class TokenReviewer:
    """TokenReview answers by sha256(token): cached, LRU-bounded, single-flight, few in flight."""

    def __init__(
        self,
        review: ReviewCall,
        audiences: list[str],
        *,
        cache_seconds: float = 30.0,
        negative_seconds: float = NEGATIVE_SECONDS,
        max_entries: int = MAX_ENTRIES,
        in_flight: int = IN_FLIGHT,
        max_waiting: int = MAX_WAITING,
        rate: float = REVIEW_RATE,
        burst: int = REVIEW_BURST,
    ) -> None:
        self.review = review
        self.audiences = list(audiences)
        self.cache_seconds = cache_seconds
        self.negative_seconds = negative_seconds
        self.max_entries = max_entries
        self.max_waiting = max_waiting
        self.cache: OrderedDict[str, Answer] = OrderedDict()
        self.pending: dict[str, asyncio.Future[Answer]] = {}
        self.turns = asyncio.Semaphore(in_flight)
        self.waiting = 0  # reviews started and not answered (in flight or waiting for a turn)
        self.reviews = 0  # TokenReviews sent (metrics, tests)
        self.rate, self.burst = rate, burst
        self.allowance, self.stamp = float(burst), time.monotonic()  # a token bucket of new reviews

    async def username(self, token: str, *, fresh: bool = False) -> str:
        """The cluster's username for `token`; Unauthenticated when it refuses it.

        `fresh` skips the cache (a stream's periodic re-review); the answer replaces the cached one."""
        key = token_hash(token)
        answer = None if fresh else self._cached(key)
        if answer is None:
            shared = self.pending.get(key)
            answer = (
                await asyncio.shield(shared) if shared is not None else await self._ask(key, token, not fresh)
            )
        if not answer.username:
            raise Unauthenticated(f"token refused by the cluster (TokenReview): {answer.problem}")
        return answer.username

    def _charge(self) -> None:
        """One new review from the bucket (streams' re-reviews are not charged: bounded by MAX_LIVE)."""
        now = time.monotonic()
        self.allowance = min(float(self.burst), self.allowance + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.allowance < 1:
            raise ResourceExhausted("too many new ServiceAccount tokens to review; try again in a moment")
        self.allowance -= 1

    def _cached(self, key: str) -> Answer | None:
        answer = self.cache.get(key)
        if answer is None:
            return None
        if answer.until <= time.monotonic():
            del self.cache[key]
            return None
        self.cache.move_to_end(key)
        return answer

    async def _ask(self, key: str, token: str, charged: bool) -> Answer:
        if self.waiting >= self.max_waiting:
            raise ResourceExhausted("too many ServiceAccount tokens being reviewed; try again in a moment")
        if charged:
            self._charge()
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        self.waiting += 1
        try:
            async with self.turns:
                self.reviews += 1
                username, problem = await asyncio.to_thread(self.review, token, self.audiences)
            answer = self._keep(key, token, username, problem)
            future.set_result(answer)
            return answer
        except BaseException as exc:  # callers sharing this review get the same error
            future.set_exception(exc if isinstance(exc, Exception) else Unavailable("review cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise
        finally:
            self.waiting -= 1
            del self.pending[key]

    def _keep(self, key: str, token: str, username: str, problem: str) -> Answer:
        now = time.monotonic()
        if username:
            seconds = self.cache_seconds
            expiry = unverified_expiry(token)
            if expiry is not None:  # never served past the token's own end
                seconds = min(seconds, expiry - time.time())
        else:
            seconds = self.negative_seconds
        answer = Answer(username, problem, now + seconds)
        if seconds > 0:
            self.cache[key] = answer
            self.cache.move_to_end(key)
            while len(self.cache) > self.max_entries:
                self.cache.popitem(last=False)
        else:
            self.cache.pop(key, None)
        return answer


def cluster_review(api_client: Any) -> ReviewCall:
    """TokenReview through the official client (blocking: the reviewer runs it in a thread)."""
    from kubernetes import client as k8s

    authentication = k8s.AuthenticationV1Api(api_client)

    def review(token: str, audiences: list[str]) -> tuple[str, str]:
        body = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=audiences))
        try:
            answer = authentication.create_token_review(body, _request_timeout=REVIEW_TIMEOUT)
        except k8s.ApiException as exc:  # never its body: the API server echoes the token in it
            raise Unavailable(f"cannot review the token (TokenReview: {exc.status} {exc.reason})") from None
        except Exception as exc:  # noqa: BLE001 - transport errors (urllib3): the cluster is unreachable
            raise Unavailable(f"cannot review the token (TokenReview: {type(exc).__name__})") from None
        status = answer.status
        if status is None or not status.authenticated:
            return "", (status.error if status is not None and status.error else "not authenticated")
        # audience-aware answer: a compatible audience must come back (TokenReviewStatus docs)
        if not set(status.audiences or []) & set(audiences):
            return "", "the token is not valid for this controller's endpoint (audience)"
        username = status.user.username if status.user is not None else ""
        return (username, "") if username else ("", "no username in the review")

    return review


class ClusterIdentities:
    """Callers with cluster tokens, mapped to Exporter/Client objects by `spec.username`."""

    def __init__(
        self,
        store: KubernetesStore,
        reviewer: TokenReviewer,
        *,
        recheck: float,
        streaming: Callable[[Identity], bool] = lambda who: True,
        on_refused: Callable[[Identity, str], None] = lambda who, why: None,
    ) -> None:
        self.store = store
        self.reviewer = reviewer
        self.recheck = recheck
        self.streaming = streaming  # whether the identity still holds a long stream here
        self.on_refused = on_refused  # ends its streams
        self.live: OrderedDict[str, tuple[str, Identity]] = OrderedDict()  # jti -> (token, identity)
        self._sweeper: asyncio.Task[None] | None = None

    async def authenticate(self, token: str, kind: str, namespace: str, name: str) -> Identity:
        from controllerd.auth import Identity

        username = await self.reviewer.username(token)
        jti = token_jti(token)
        uid = await self._match(username, kind, namespace, name)
        who = Identity(kind, namespace, name, uid, jti)
        if kind == "Exporter":  # exporters hold long streams: re-reviewed while they do
            self.live[jti] = (token, who)
            self.live.move_to_end(jti)
            while len(self.live) > MAX_LIVE:
                self.live.popitem(last=False)
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = asyncio.create_task(self._sweep_forever(), name="serviceaccount-recheck")
        return who

    async def _match(self, username: str, kind: str, namespace: str, name: str) -> str:
        """The object's uid when it exists here and its spec.username is `username`."""
        from controllerd.store import NotFound

        informer = self.store.exporters if kind == "Exporter" else self.store.clients
        try:
            if namespace != self.store.namespace:
                raise NotFound(namespace)
            get = self.store.get_exporter if kind == "Exporter" else self.store.get_client
            record = await get(namespace, name)
        except NotFound:
            raise PermissionDenied(f"{kind.lower()} {namespace}/{name} does not exist") from None
        obj = informer.get(name) or {}
        if (obj.get("spec") or {}).get("username") != username:
            raise PermissionDenied("token does not belong to the named object")
        return record.uid

    async def _sweep_forever(self) -> None:
        while self.live:
            await asyncio.sleep(self.recheck)  # a period, not a wait for a condition
            await self.sweep()

    async def sweep(self) -> None:
        """Re-review every token behind a live stream; end the streams of those now refused."""
        for jti, (token, who) in list(self.live.items()):
            if not self.streaming(who):
                self.live.pop(jti, None)
                continue
            try:
                username = await self.reviewer.username(token, fresh=True)
                if await self._match(username, who.kind, who.namespace, who.name) != who.uid:
                    raise PermissionDenied(f"{who.kind.lower()} {who.name} was re-created")
            except (Unauthenticated, PermissionDenied) as exc:
                self.live.pop(jti, None)
                log.info(
                    "serviceaccount token refused: ending its streams", kind=who.kind, name=who.name, jti=jti
                )
                self.on_refused(who, str(exc))
            except (Unavailable, ResourceExhausted) as exc:  # the API server's trouble: boards stay
                log.warning("serviceaccount token re-review failed; kept", name=who.name, error=str(exc))


def cluster_identities(
    config: ControllerConfig, store: Store, auth: TokenAuthority, hub: Hub
) -> ClusterIdentities | None:
    """TokenReview identities when `kubernetes_identities` is on (the Kubernetes store's default)."""
    from controllerd.store.kubernetes import KubernetesStore

    if not config.kubernetes_identities or not isinstance(store, KubernetesStore):
        return None
    reviewer = TokenReviewer(
        cluster_review(store.api.client),
        auth.audiences,
        cache_seconds=config.kubernetes_identity_cache_seconds,
    )

    def refused(who: Identity, why: str) -> None:
        auth.revoked.add(who.jti)  # Status and Listen check it when woken
        asyncio.get_running_loop().call_later(REVOKED_MEMORY, auth.revoked.discard, who.jti)
        hub.exporter_changed(who.namespace, who.name)

    return ClusterIdentities(
        store,
        reviewer,
        recheck=config.kubernetes_identity_cache_seconds,
        streaming=lambda who: hub.connected(who.namespace, who.name),
        on_refused=refused,
    )
