"""routerd with `workers: 2`: worker processes share the port, and streams pair across them.

Every peer uses its own TLS connection (a local subchannel pool), so the kernel spreads
them over the workers and many streams have their two callers on different workers:
those are relayed to the worker where the first caller waits (routerd/relay.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from jumpstarter import routertoken
from jumpstarter.channels import message_limits

from .test_routerd import (
    DATA,
    GOAWAY,
    Routerd,
    RouterdFactory,
    frame,
    open_stream,
    read_n,
    run,
    status_of,
)

PAIRS = 16  # 32 connections: the chance that no pair spans both workers is 2^-16


@pytest.fixture(scope="module")
def routers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterdFactory]:
    factory = RouterdFactory(str(tmp_path_factory.mktemp("workers")))
    try:
        yield factory
    finally:
        for router in factory.started:
            router.stop(timeout=40)


def own_connection(router: Routerd) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=router.ca)
    options = [*message_limits(), ("grpc.use_local_subchannel_pool", 1)]
    return grpc.aio.secure_channel(f"127.0.0.1:{router.port}", creds, options=options)


def workers_of(router: Routerd) -> dict[int, int]:
    """Worker index -> pid, from each worker's "serving" line."""
    return {e["worker"]: e["pid"] for e in router.events() if e.get("event") == "serving" and "worker" in e}


def start_workers(routers: RouterdFactory, name: str, **settings: Any) -> Routerd:
    router = routers.start(name, workers=2, **settings)
    deadline = time.monotonic() + 30
    while len(workers_of(router)) < 2:
        assert time.monotonic() < deadline, f"both workers did not start:\n{router.log()[-3000:]}"
        time.sleep(0.05)
    return router


def test_streams_pair_and_forward_verbatim_across_workers_and_both_workers_carry_streams(
    routers: RouterdFactory,
) -> None:
    router = start_workers(routers, "pairs")

    async def one(index: int) -> None:
        token = routertoken.mint(router.key)
        async with own_connection(router) as ch_a, own_connection(router) as ch_b:
            a, b = open_stream(ch_a, token), open_stream(ch_b, token)
            big = os.urandom(300_000 + index)
            await a.write(frame(big))
            await a.write(frame(b"", GOAWAY))
            await b.write(frame(b"back %d" % index))
            await b.write(frame(b"", GOAWAY))
            assert await read_n(b, 2, timeout=30) == [(DATA, big), (GOAWAY, b"")]
            assert await read_n(a, 2, timeout=30) == [(DATA, b"back %d" % index), (GOAWAY, b"")]
            await a.done_writing()
            await b.done_writing()
            assert await status_of(a, 30) == grpc.StatusCode.OK
            assert await status_of(b, 30) == grpc.StatusCode.OK

    async def scenario() -> None:
        await asyncio.gather(*(one(i) for i in range(PAIRS)))

    run(scenario())
    spliced = [e for e in router.events() if e.get("event") == "stream spliced"]
    assert len(spliced) == PAIRS
    assert {e["worker"] for e in spliced} == {0, 1}, "one worker carried every stream"
    ended = [e for e in router.events() if e.get("event") == "stream ended"]
    assert [e["outcome"] for e in ended] == ["ok"] * PAIRS


def test_a_cancelled_peer_ends_its_partner_on_the_other_worker_with_unavailable(
    routers: RouterdFactory,
) -> None:
    router = start_workers(routers, "cancel")

    async def one() -> None:
        token = routertoken.mint(router.key)
        async with own_connection(router) as ch_a, own_connection(router) as ch_b:
            a, b = open_stream(ch_a, token), open_stream(ch_b, token)
            await a.write(frame(b"ping"))
            assert await read_n(b, 1, timeout=30) == [(DATA, b"ping")]
            a.cancel()
            assert await status_of(b, timeout=10) == grpc.StatusCode.UNAVAILABLE
            assert "went away" in await b.details()

    async def scenario() -> None:
        await asyncio.gather(*(one() for _ in range(PAIRS)))

    run(scenario())


def test_a_replayed_token_is_refused_on_whichever_worker_it_lands(routers: RouterdFactory) -> None:
    router = start_workers(routers, "replay")

    async def scenario() -> None:
        token = routertoken.mint(router.key)
        async with own_connection(router) as ch_a, own_connection(router) as ch_b:
            a, b = open_stream(ch_a, token), open_stream(ch_b, token)
            await a.write(frame(b"hello"))
            assert await read_n(b, 1, timeout=30) == [(DATA, b"hello")]
            for _ in range(8):  # fresh connections: both workers get some
                async with own_connection(router) as ch_c:
                    c = open_stream(ch_c, token)
                    assert await status_of(c, 30) == grpc.StatusCode.PERMISSION_DENIED
            await b.write(frame(b"still spliced"))
            assert await read_n(a, 1, timeout=30) == [(DATA, b"still spliced")]

    run(scenario())


def test_sigterm_stops_every_worker_and_a_dead_worker_stops_the_set(routers: RouterdFactory) -> None:
    router = start_workers(routers, "stop")
    pids = list(workers_of(router).values())
    assert router.stop(signal.SIGTERM, timeout=40) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"worker {pid} outlived the supervisor"

    router = start_workers(routers, "crash")
    pids = list(workers_of(router).values())
    os.kill(pids[0], signal.SIGKILL)
    router.process.wait(timeout=40)
    assert router.process.returncode == 1
    assert "a worker exited" in router.log()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
