"""routerd workers: a stream id claimed by a worker is released when that worker refuses the caller."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from jumpstarter import routertoken
from jumpstarter.metrics import new_registry
from routerd.admission import Limits
from routerd.relay import Claims, Workers
from routerd.service import Router, RouterMetrics

KEY = b"k" * 32


class Aborted(Exception):
    pass


class Context:
    """Just what Router.stream uses of a grpc.aio.ServicerContext before it waits or forwards."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def peer(self) -> str:
        return "ipv4:192.0.2.1:40000"

    async def send_initial_metadata(self, _metadata: object) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, _details: str) -> None:
        self.code = code
        raise Aborted


def test_a_refused_first_caller_leaves_no_claim_behind(tmp_path: os.PathLike[str]) -> None:
    directory = str(tmp_path)
    claims = Claims(directory, 0)
    limits = Limits(max_streams=0, max_streams_per_lease=32, max_waiting_per_lease=16)
    router = Router(KEY, 5.0, limits, RouterMetrics(new_registry()), claims, Workers(directory))
    context = Context(routertoken.mint(KEY, "stream-1"))
    with pytest.raises(Aborted):
        asyncio.run(router.stream(None, context))  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert os.listdir(claims.folder) == []  # else the next caller of stream-1 elsewhere is relayed here
