"""Bounds on `Dial`: a token bucket per client and a cap on a lease's concurrent Dials.

Every Dial makes the exporter open a router stream, so an unbounded Dial rate
piles up streams on the exporter and the router. A client may Dial `burst`
times at once and `rate` times per second after that; a lease may have at most
`max_pending` Dials in progress (mostly waiting for its exporter to get ready).
Beyond either the caller gets RESOURCE_EXHAUSTED naming the limit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from controllerd.errors import ResourceExhausted

DEFAULT_DIAL_RATE = 5.0  # Dials per second per client, after the burst
DEFAULT_DIAL_BURST = 30
DEFAULT_MAX_PENDING_DIALS = 8  # Dials in progress per lease
MAX_IDLE_BUCKETS = 10_000  # forget full buckets beyond this many clients


@dataclass
class Bucket:
    tokens: float
    stamp: float


class DialLimits:
    def __init__(
        self,
        rate: float = DEFAULT_DIAL_RATE,
        burst: int = DEFAULT_DIAL_BURST,
        max_pending: int = DEFAULT_MAX_PENDING_DIALS,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_pending = max_pending
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.pending: dict[tuple[str, str], int] = {}

    def charge(self, namespace: str, client: str) -> None:
        """Take one Dial from the client's bucket, or raise RESOURCE_EXHAUSTED."""
        now = time.monotonic()
        key = (namespace, client)
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_IDLE_BUCKETS:
                self._forget_full(now)
            bucket = self.buckets[key] = Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1:
            raise ResourceExhausted(
                f"client {client} dials too fast (dial_rate {self.rate:g}/s, dial_burst {self.burst});"
                " try again in a moment",
            )
        bucket.tokens -= 1

    @contextlib.contextmanager
    def dialing(self, namespace: str, lease: str) -> Iterator[None]:
        """Count one Dial in progress on the lease while the block runs."""
        key = (namespace, lease)
        if self.pending.get(key, 0) >= self.max_pending:
            raise ResourceExhausted(
                f"lease {lease} has {self.max_pending} Dials in progress (max_pending_dials);"
                " try again in a moment",
            )
        self.pending[key] = self.pending.get(key, 0) + 1
        try:
            yield
        finally:
            self.pending[key] -= 1
            if self.pending[key] <= 0:
                del self.pending[key]

    def _forget_full(self, now: float) -> None:
        for key, bucket in list(self.buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst:
                del self.buckets[key]
