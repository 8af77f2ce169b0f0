"""Who may join a router stream: each token once, two peers per stream, per-lease caps before the global one.

- A token takes one side of its stream: bound tokens (our controller's) the side
  their role names, unbound tokens (an upstream controller's) one of two anonymous
  sides. A side, once taken, stays taken until the token expires, so a token can
  never be replayed after its stream ended and a stream never gets a third caller.
- A new stream counts against its lease (streams waiting or spliced, and peers
  waiting alone) before it counts against the router's `max_streams`; the per-lease
  caps are below the global one, so one lease alone can never fill the router.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from jumpstarter.routertoken import LEEWAY, RouterClaims

UNBOUND_SIDES = ("peer-1", "peer-2")
Side = tuple[str, str]  # (stream id, role or anonymous side)


class Refused(Exception):
    """A caller may not join: the status to abort with and the metrics outcome."""

    def __init__(self, code: grpc.StatusCode, message: str, outcome: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome


@dataclass(frozen=True)
class Limits:
    max_streams: int
    max_streams_per_lease: int
    max_waiting_per_lease: int


class Admission:
    """Used token sides and per-lease stream counts of one router process."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.used: dict[Side, float] = {}
        self.expiries: list[tuple[float, Side]] = []
        self.streams: Counter[str] = Counter()  # per lease: stream ids waiting or spliced
        self.waiting: Counter[str] = Counter()  # per lease: peers waiting alone

    def side(self, claims: RouterClaims) -> Side:
        """The side of its stream this token would take; Refused if the token was used already."""
        self._forget_expired()
        sides = (claims.role,) if claims.role is not None else UNBOUND_SIDES
        for side in sides:
            if (claims.stream_id, side) not in self.used:
                return (claims.stream_id, side)
        raise Refused(
            grpc.StatusCode.PERMISSION_DENIED,
            "router token already used: each token joins one stream, once",
            "reused",
        )

    def check_new_stream(self, lease: str | None, total: int) -> None:
        """Refuse a new waiting peer over its lease's caps first, then over the router's."""
        limits = self.limits
        if lease is not None and self.streams[lease] >= limits.max_streams_per_lease:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"lease {lease} is at its limit of {limits.max_streams_per_lease} streams"
                " on this router (max_streams_per_lease); close some connections",
                "exhausted",
            )
        if lease is not None and self.waiting[lease] >= limits.max_waiting_per_lease:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"lease {lease} has {limits.max_waiting_per_lease} peers waiting for their partner"
                " on this router (max_waiting_per_lease); try again later",
                "exhausted",
            )
        if total >= limits.max_streams:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"router is at its limit of {limits.max_streams} streams (max_streams); try again later",
                "exhausted",
            )

    def take(self, side: Side, claims: RouterClaims) -> None:
        """Mark the side used until the token can no longer verify."""
        until = claims.expires + LEEWAY
        self.used[side] = until
        heapq.heappush(self.expiries, (until, side))

    def _forget_expired(self) -> None:
        now = time.time()
        while self.expiries and self.expiries[0][0] < now:
            _, side = heapq.heappop(self.expiries)
            self.used.pop(side, None)

    # -- per-lease counts: a stream is counted from its first peer until its splice ends --

    def waits(self, lease: str | None) -> None:
        if lease is not None:
            self.streams[lease] += 1
            self.waiting[lease] += 1

    def paired(self, lease: str | None) -> None:
        if lease is not None:
            self._drop(self.waiting, lease)

    def gave_up(self, lease: str | None) -> None:
        """A lone peer left before anyone joined: its stream is gone."""
        if lease is not None:
            self._drop(self.waiting, lease)
            self._drop(self.streams, lease)

    def ended(self, lease: str | None) -> None:
        if lease is not None:
            self._drop(self.streams, lease)

    @staticmethod
    def _drop(counts: Counter[str], lease: str) -> None:
        counts[lease] -= 1
        if counts[lease] <= 0:
            del counts[lease]
