"""controllerd/replica.py's small parts: where a replica says it is, and streams cut at a term's end.
The replicas themselves, forwarding through real processes: tests/integration/test_kube_replicas_serving.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from controllerd.replica import TermOver, advertised_address, until


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"POD_IP": "10.1.2.3"}, "10.1.2.3:8082"),
        ({"POD_IP": "fd00::7"}, "[fd00::7]:8082"),
        ({"POD_IP": "10.1.2.3", "CONTROLLERD_REPLICA_ADDRESS": "ctl-0.ctl:9000"}, "ctl-0.ctl:9000"),
    ],
)
def test_a_replica_advertises_its_pod_ip_with_the_listen_port(environ, expected):
    assert advertised_address("0.0.0.0:8082", environ) == expected


def test_a_stream_ends_when_the_term_does_and_its_source_is_closed():
    closed: list[str] = []

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.Event().wait()  # an idle Status stream
            yield 2
        finally:
            closed.append("source")

    async def scenario() -> list[int]:
        term: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        got = []
        with pytest.raises(TermOver):
            async for item in until(source(), term):
                got.append(item)
                asyncio.get_running_loop().call_later(0.05, term.set_result, None)
        return got

    assert asyncio.run(scenario()) == [1]
    assert closed == ["source"]


def test_a_stream_that_ends_first_ends_normally():
    async def source() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def scenario() -> list[int]:
        term: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        return [i async for i in until(source(), term)]

    assert asyncio.run(scenario()) == [0, 1, 2]
