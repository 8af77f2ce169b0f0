"""`jumpstarter.v1.RouterService.Stream`: verify the router token, pair two callers, splice them.

Pairing (PROTOCOL.md §6.5): the first caller with a stream id (the token's
subject) waits; the second is spliced to it. Each token joins once and a stream
has exactly two callers (routerd/admission.py): a replayed token or a third
caller gets PERMISSION_DENIED. Forwarding: each caller's requests become the
other caller's responses, byte for byte (messages are passed through unparsed:
`StreamRequest` and `StreamResponse` have the same wire format, so payload,
frame type and any unknown field arrive verbatim). One message in flight per
direction: a read waits for the previous write, so HTTP/2 flow control is the
only buffer.

Endings:
- a caller half-closes: that direction stops, the other keeps flowing; once
  both have half-closed, both calls end OK;
- a caller fails or goes away: the other is aborted at once with UNAVAILABLE;
- nobody joins within `lone_peer_timeout`: the waiting caller gets DEADLINE_EXCEEDED;
- bad or missing token: UNAUTHENTICATED; a lease over `max_streams_per_lease`
  streams or `max_waiting_per_lease` lone peers, or the router over
  `max_streams` stream ids waiting or spliced: RESOURCE_EXHAUSTED;
- the router stops (SIGTERM): every stream ends with UNAVAILABLE "router shutting down".

With several workers (routerd/relay.py) a caller whose stream id waits in another
worker is relayed there, and the pairing above happens in that worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from jumpstarter.channels import server_options
from jumpstarter.log import Throttle
from jumpstarter.routertoken import RouterClaims, RouterTokenError, verify_claims
from routerd.admission import Admission, Limits, Refused
from routerd.relay import PEER_KEY, Claims, Workers, relay

log = structlog.get_logger("routerd")

SERVICE = "jumpstarter.v1.RouterService"
# Grace between "both directions at EOF" and "both calls end OK": grpc reports a
# cancelled call as EOF on read a moment before it cancels the handler.
COMPLETION_GRACE = 0.05
OUTCOMES = (
    "ok",
    "peer_failed",
    "cancelled",
    "lone_timeout",
    "unauthenticated",
    "reused",
    "exhausted",
    "shutdown",
)
SERVER_OPTIONS = server_options(
    # Upstream Python peers ping every 20 s, also between calls: never GOAWAY them for it.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    # Our own pings find peers that vanished without closing their connection.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)

# Workers share the listen port: the kernel spreads new connections over them.
WORKER_OPTIONS = [(k, 1 if k == "grpc.so_reuseport" else v) for k, v in SERVER_OPTIONS]


class RouterMetrics:
    """The router's Prometheus series, registered on the daemon's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.waiting = Gauge(
            "jumpstarter_router_streams_waiting",
            "Stream ids with one caller waiting for its peer",
            registry=registry,
        )
        self.active = Gauge(
            "jumpstarter_router_streams_active", "Stream ids with two callers spliced", registry=registry
        )
        self.bytes = Counter(
            "jumpstarter_router_forwarded_bytes",
            "Message bytes forwarded, both directions",
            registry=registry,
        )
        self.frames = Counter(
            "jumpstarter_router_forwarded_frames", "Messages forwarded, both directions", registry=registry
        )
        self.calls = Counter(
            "jumpstarter_router_calls",
            "RouterService.Stream calls by outcome",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.calls.labels(outcome)


@dataclass(eq=False)
class Peer:
    """One caller of `Stream`; `copy` moves its requests into the other caller's responses."""

    context: grpc.aio.ServicerContext
    address: str
    copy: asyncio.Task[None] | None = None
    at_eof: bool = False


@dataclass(eq=False)
class Splice:
    stream_id: str
    lease: str | None
    peers: tuple[Peer, Peer]
    both_done: asyncio.Event = field(default_factory=asyncio.Event)
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    handlers: int = 2
    forwarded: int = 0

    def other(self, peer: Peer) -> Peer:
        return self.peers[1] if peer is self.peers[0] else self.peers[0]

    def copy_finished(self, peer: Peer) -> None:
        peer.at_eof = True
        if all(p.at_eof for p in self.peers):
            asyncio.get_running_loop().call_later(COMPLETION_GRACE, self._complete)

    def _complete(self) -> None:
        if not self.failed.is_set():
            self.both_done.set()

    def fail(self, reason: str) -> None:
        """End the splice: stop both copies now (the first reason wins)."""
        if self.failed.is_set() or self.both_done.is_set():
            return
        self.reason = reason
        self.failed.set()
        for peer in self.peers:
            if peer.copy is not None:
                peer.copy.cancel()


@dataclass(eq=False)
class Waiting:
    peer: Peer
    partner: asyncio.Future[Splice]
    claims: RouterClaims


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the single `authorization: Bearer <token>` entry (scheme case-insensitive)."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise RouterTokenError("missing authorization metadata")
    if len(values) > 1:
        raise RouterTokenError("more than one authorization entry")
    value = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RouterTokenError("authorization is not 'Bearer <token>'")
    return token.strip()


class Router:
    """The waiting table and the splices of one routerd process."""

    def __init__(
        self,
        key: bytes,
        lone_peer_timeout: float,
        limits: Limits,
        metrics: RouterMetrics,
        claims: Claims | None = None,
        workers: Workers | None = None,
    ) -> None:
        self.key = key
        self.claims = claims  # None: the only worker
        self.workers = workers
        self.lone_peer_timeout = lone_peer_timeout
        self.admission = Admission(limits)
        self.metrics = metrics
        self.waiting: dict[str, Waiting] = {}
        self.splices: set[Splice] = set()
        self.active = 0
        self.closing = False
        self.rejections = Throttle()

    def handler(self) -> grpc.GenericRpcHandler:
        """The `Stream` method with raw bytes in and out (no (de)serialization on the hot path)."""
        method = grpc.stream_stream_rpc_method_handler(self.stream)
        return grpc.method_handlers_generic_handler(SERVICE, {"Stream": method})

    def worker_handler(self) -> grpc.GenericRpcHandler:
        """`Stream` for the workers' private socket: callers relayed by another worker."""
        method = grpc.stream_stream_rpc_method_handler(self.relayed_stream)
        return grpc.method_handlers_generic_handler(SERVICE, {"Stream": method})

    async def relayed_stream(self, requests: object, context: grpc.aio.ServicerContext) -> None:
        await self.stream(requests, context, relayed=True)

    async def stream(
        self, requests: object, context: grpc.aio.ServicerContext, relayed: bool = False
    ) -> None:
        metadata = context.invocation_metadata() or ()
        address = context.peer()
        if relayed:  # the relaying worker names the caller
            address = next((str(v) for k, v in metadata if k == PEER_KEY), address)
        try:
            claims = verify_claims(self.key, bearer_token(metadata))
        except RouterTokenError as exc:
            self._count("unauthenticated")
            dropped = self.rejections.ready()  # anyone can send these: one line per interval at most
            if dropped is not None:
                log.warning("rejected stream", peer=address, reason=exc.reason, suppressed=dropped)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"invalid router token: {exc.reason}")
            return
        # Headers go out before any forwarding: a write cancelled after it completed would
        # otherwise leave grpc believing they are unsent, and a later abort would fail.
        await context.send_initial_metadata(())
        if self.closing:
            self._count("shutdown")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "router shutting down")
        me = Peer(context, address)
        stream_id = claims.stream_id
        waiting = self.waiting.get(stream_id)
        claimed = False  # this call took the stream id's claim (workers > 1)
        if waiting is None and self.claims is not None and not relayed:
            owner = self.claims.claim(stream_id)
            if owner is not None and owner != self.claims.index:
                await self._relay(context, metadata, address, owner)
                return
            claimed = owner is None
        try:
            side = self.admission.side(claims)
            if waiting is None:
                self.admission.check_new_stream(claims.lease, len(self.waiting) + self.active)
            elif waiting.claims.lease != claims.lease:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED, "router token is for another lease", "reused"
                )
        except Refused as refused:
            if claimed:  # nobody waits here (a claim we did not take may be a splice's)
                self._release(stream_id)
            self._count(refused.outcome)
            log.warning("stream refused", peer=address, lease=claims.lease, reason=refused.message)
            await context.abort(refused.code, refused.message)
            return
        self.admission.take(side, claims)
        if waiting is None:
            splice = await self._wait_for_peer(claims, me)
        else:
            del self.waiting[stream_id]
            self.admission.paired(claims.lease)
            self.metrics.waiting.set(len(self.waiting))
            splice = Splice(stream_id, claims.lease, (waiting.peer, me))
            self.splices.add(splice)
            self.active += 1
            self.metrics.active.set(self.active)
            waiting.partner.set_result(splice)
            log.info("stream spliced", stream=stream_id, peers=[waiting.peer.address, address])
        await self._forward(splice, me)

    async def _wait_for_peer(self, claims: RouterClaims, me: Peer) -> Splice:
        stream_id = claims.stream_id
        partner: asyncio.Future[Splice] = asyncio.get_running_loop().create_future()
        entry = Waiting(me, partner, claims)
        self.waiting[stream_id] = entry
        self.admission.waits(claims.lease)
        self.metrics.waiting.set(len(self.waiting))
        log.debug("stream waiting for its peer", stream=stream_id, peer=me.address)
        try:
            await asyncio.wait({partner}, timeout=self.lone_peer_timeout)
        except asyncio.CancelledError:
            self._count("cancelled")
            if partner.done():
                # Paired at the very moment we went away: release the splice too.
                splice = partner.result()
                splice.fail(f"the other peer ({me.address}) went away")
                self._leave(splice)
            raise
        finally:
            if self.waiting.get(stream_id) is entry:
                del self.waiting[stream_id]
                self._release(stream_id)
                self.admission.gave_up(claims.lease)
                self.metrics.waiting.set(len(self.waiting))
            if not partner.done():
                partner.cancel()
        if partner.cancelled() and self.closing:
            self._count("shutdown")
            await me.context.abort(grpc.StatusCode.UNAVAILABLE, "router shutting down")
        if partner.cancelled():
            self._count("lone_timeout")
            log.info("stream dropped: no peer joined", stream=stream_id, peer=me.address)
            await me.context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no peer joined this stream within {self.lone_peer_timeout:g} s",
            )
        return partner.result()

    def _release(self, stream_id: str) -> None:
        if self.claims is not None:
            self.claims.release(stream_id)

    async def _relay(
        self,
        context: grpc.aio.ServicerContext,
        metadata: Iterable[tuple[str, str | bytes]],
        address: str,
        owner: int,
    ) -> None:
        """Hand this caller to the worker where its peer waits; end with that worker's status."""
        assert self.workers is not None
        forwarded = [(k, v) for k, v in metadata if k == "authorization" and isinstance(v, str)]
        forwarded.append((PEER_KEY, address))
        log.debug("stream relayed", peer=address, worker=owner)
        code, details = await relay(context, self.workers.channel(owner), forwarded)
        if code != grpc.StatusCode.OK:
            await context.abort(code, details)

    async def _forward(self, splice: Splice, me: Peer) -> None:
        other = splice.other(me)
        if not splice.failed.is_set():
            me.copy = asyncio.ensure_future(self._copy(splice, me, other))
        ends = [asyncio.ensure_future(splice.both_done.wait()), asyncio.ensure_future(splice.failed.wait())]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            splice.fail(f"the other peer ({me.address}) went away")
            self._count("cancelled")
            raise
        finally:
            for end in ends:
                end.cancel()
            # Nobody may still be writing to our call when it ends (abort or return).
            copies = {p.copy for p in splice.peers if p.copy is not None}
            if splice.failed.is_set() and copies:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait(copies)
            self._leave(splice)
        if splice.both_done.is_set():
            self._count("ok")
            return
        self._count("shutdown" if self.closing else "peer_failed")
        await me.context.abort(grpc.StatusCode.UNAVAILABLE, f"stream ended: {splice.reason}")

    async def _copy(self, splice: Splice, source: Peer, target: Peer) -> None:
        metrics = self.metrics
        try:
            while True:
                message = await source.context.read()
                if message is grpc.aio.EOF:
                    break
                await target.context.write(message)
                splice.forwarded += len(message)
                metrics.bytes.inc(len(message))
                metrics.frames.inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the grpc error of a call that ended under us
            splice.fail(f"forwarding {source.address} -> {target.address} failed: {type(exc).__name__}")
            return
        splice.copy_finished(source)

    def _leave(self, splice: Splice) -> None:
        splice.handlers -= 1
        if splice.handlers == 0:
            self._release(splice.stream_id)  # held until here: a replayed token is refused here
            self.splices.discard(splice)
            self.admission.ended(splice.lease)
            self.active -= 1
            self.metrics.active.set(self.active)
            outcome = "ok" if splice.both_done.is_set() else "failed"
            log.info(
                "stream ended",
                stream=splice.stream_id,
                outcome=outcome,
                reason=splice.reason or None,
                bytes=splice.forwarded,
            )

    def shutdown(self) -> None:
        """End every waiting and spliced stream with UNAVAILABLE (the server stops right after)."""
        self.closing = True
        for entry in list(self.waiting.values()):
            entry.partner.cancel()
        for splice in list(self.splices):
            splice.fail("router shutting down")

    def _count(self, outcome: str) -> None:
        self.metrics.calls.labels(outcome).inc()


def build_server(router: Router) -> grpc.aio.Server:
    server = grpc.aio.server(options=SERVER_OPTIONS if router.claims is None else WORKER_OPTIONS)
    server.add_generic_rpc_handlers((router.handler(),))
    return server


def build_worker_server(router: Router) -> grpc.aio.Server:
    """The server of this worker's private socket (callers relayed by the other workers)."""
    server = grpc.aio.server(options=server_options())
    server.add_generic_rpc_handlers((router.worker_handler(),))
    return server
