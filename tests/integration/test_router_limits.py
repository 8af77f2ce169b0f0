"""Router tokens are single-use and per-lease limits hold, through real routerd processes.

A token takes one side of one stream, once: replaying it after its stream ended,
or a third caller on a stream, is refused with PERMISSION_DENIED. One lease that
opens streams until it is refused never makes another lease's session fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from jumpstarter import routertoken

from .test_routerd import (
    DATA,
    Routerd,
    RouterdFactory,
    frame,
    open_stream,
    read_n,
    routers,  # noqa: F401 - the module's routerd factory fixture
    run,
    status_of,
)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def pair_and_echo(router: Routerd, channel: grpc.aio.Channel, lease: str) -> None:
    """One client/exporter pair of `lease` that carries a frame each way."""
    client_token, exporter_token = routertoken.mint_pair(router.key, lease)
    client, exporter = open_stream(channel, client_token), open_stream(channel, exporter_token)
    await client.write(frame(b"ping"))
    assert await read_n(exporter, 1) == [(DATA, b"ping")]
    await exporter.write(frame(b"pong"))
    assert await read_n(client, 1) == [(DATA, b"pong")]
    for call in (client, exporter):
        await call.done_writing()
    assert await status_of(client) == grpc.StatusCode.OK
    assert await status_of(exporter) == grpc.StatusCode.OK


def test_a_token_is_refused_after_its_stream_ended(routers: RouterdFactory) -> None:  # noqa: F811
    router = routers.start("reuse")

    async def scenario() -> None:
        client_token, exporter_token = routertoken.mint_pair(router.key, "lab/reuse")
        async with router.channel() as channel:
            client, exporter = open_stream(channel, client_token), open_stream(channel, exporter_token)
            await client.write(frame(b"a"))
            assert await read_n(exporter, 1) == [(DATA, b"a")]
            for call in (client, exporter):
                await call.done_writing()
            assert await status_of(client) == grpc.StatusCode.OK
            for token in (client_token, exporter_token):  # replayed, each alone or as a new pair
                again = open_stream(channel, token)
                assert await status_of(again) == grpc.StatusCode.PERMISSION_DENIED
                assert "already used" in await again.details()

    run(scenario())


def test_a_third_caller_on_a_stream_is_refused(routers: RouterdFactory) -> None:  # noqa: F811
    router = routers.start("third")

    async def scenario() -> None:
        client_token, exporter_token = routertoken.mint_pair(router.key, "lab/third")
        unbound = routertoken.mint(router.key)  # an upstream controller's token names no side
        async with router.channel() as channel:
            client, exporter = open_stream(channel, client_token), open_stream(channel, exporter_token)
            await client.write(frame(b"a"))
            assert await read_n(exporter, 1) == [(DATA, b"a")]
            intruder = open_stream(channel, client_token)
            assert await status_of(intruder) == grpc.StatusCode.PERMISSION_DENIED
            first, second = open_stream(channel, unbound), open_stream(channel, unbound)
            await first.write(frame(b"u"))
            assert await read_n(second, 1) == [(DATA, b"u")]
            third = open_stream(channel, unbound)
            assert await status_of(third) == grpc.StatusCode.PERMISSION_DENIED
            await exporter.write(frame(b"b"))  # the spliced pair is untouched by the refusals
            assert await read_n(client, 1) == [(DATA, b"b")]
            for call in (client, exporter, first, second):
                call.cancel()

    run(scenario())


def test_one_lease_flooding_streams_is_capped_and_another_lease_still_works(
    routers: RouterdFactory,  # noqa: F811
) -> None:
    router = routers.start("perlease", max_streams=12, max_streams_per_lease=6, max_waiting_per_lease=4)

    async def scenario() -> None:
        async with router.channel() as channel:
            # Spliced streams up to the lease's cap, then lone peers: every one is refused past its cap.
            spliced = []
            for _ in range(3):
                client_token, exporter_token = routertoken.mint_pair(router.key, "lab/greedy")
                pair = open_stream(channel, client_token), open_stream(channel, exporter_token)
                await pair[0].write(frame(b"x"))
                assert await read_n(pair[1], 1) == [(DATA, b"x")]
                spliced.extend(pair)
            # 3 spliced + 3 waiting = max_streams_per_lease: these 3 lone peers are held, not refused.
            lone = [
                open_stream(channel, routertoken.mint_pair(router.key, "lab/greedy")[0]) for _ in range(3)
            ]
            await eventually(lambda: router.metric("jumpstarter_router_streams_waiting") == 3, "3 waiting")
            refused: list[str] = []
            for _ in range(12):
                call = open_stream(channel, routertoken.mint_pair(router.key, "lab/greedy")[0])
                assert await status_of(call, 30) == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused.append(await call.details())
            assert all("lease lab/greedy" in d and "max_streams_per_lease" in d for d in refused), refused
            assert router.metric("jumpstarter_router_streams_waiting") == 3  # the held ones are still waiting
            await pair_and_echo(router, channel, "lab/other")
            for call in [*spliced, *lone]:
                call.cancel()

    run(scenario())


def test_one_lease_cannot_keep_more_than_its_cap_of_peers_waiting(routers: RouterdFactory) -> None:  # noqa: F811
    router = routers.start("waiting", max_streams=20, max_streams_per_lease=10, max_waiting_per_lease=2)

    async def scenario() -> None:
        async with router.channel() as channel:
            lone = [open_stream(channel, routertoken.mint_pair(router.key, "lab/w")[1]) for _ in range(2)]
            await eventually(lambda: router.metric("jumpstarter_router_streams_waiting") == 2, "2 waiting")
            extra = open_stream(channel, routertoken.mint_pair(router.key, "lab/w")[1])
            assert await status_of(extra) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_waiting_per_lease" in await extra.details()
            await pair_and_echo(router, channel, "lab/w2")
            for call in lone:
                call.cancel()

    run(scenario())
