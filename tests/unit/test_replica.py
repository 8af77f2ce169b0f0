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


class _Call:
    """A forwarded stream's client side: two items, then its end."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata = metadata
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._items()

    async def _items(self) -> AsyncIterator[bytes]:
        for item in (b"1", b"2"):
            await asyncio.sleep(0.01)  # from the leader, over the network
            yield item

    def cancel(self) -> None:
        self.cancelled = True


class _Channel:
    def __init__(self) -> None:
        self.calls: list[_Call] = []

    async def channel_ready(self) -> None:
        return None

    def unary_stream(self, method: str):  # noqa: ANN201 - a fake of grpc.aio.Channel's
        def call(request, metadata, timeout):  # noqa: ANN001, ANN202
            self.calls.append(_Call(metadata))
            return self.calls[-1]

        return call

    unary_unary = stream_unary = stream_stream = unary_stream


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[object, str] | None = None

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("authorization", "Bearer t"), ("cookie", "not passed")]

    async def abort(self, code: object, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def test_a_stream_held_through_an_election_is_served_by_the_new_leader():
    """A Status stream that arrives while nobody leads waits for the election; once the new leader
    is reachable the stream is forwarded to it and lasts: it is not ended for the term it waited out."""
    import types

    import grpc

    from controllerd.replica import ReplicaGate
    from controllerd.replica_forward import Forwarder

    async def scenario() -> tuple[list[bytes], _Context, _Channel]:
        elector = types.SimpleNamespace(leading=False, leader=None, identity="me", on_change=None)
        gate = ReplicaGate(elector)  # type: ignore[arg-type]
        forwarder = Forwarder(gate, "me", b"", "controller")
        channel = _Channel()
        forwarder._channel = lambda address: channel  # type: ignore[method-assign]
        like = grpc.unary_stream_rpc_method_handler(lambda request, context: None)
        handler = forwarder.handler("/jumpstarter.v1.ControllerService/Status", like)
        context = _Context()

        def elected() -> None:
            elector.leader = ("other", "10.0.0.2:8082")
            elector.on_change()

        asyncio.get_running_loop().call_later(0.05, elected)
        got = [item async for item in handler.unary_stream(b"", context)]
        return got, context, channel

    got, context, channel = asyncio.run(scenario())
    assert context.aborted is None
    assert got == [b"1", b"2"]
    assert len(channel.calls) == 1
    # only what the leader authenticates, and the mark that stops a second forwarding
    assert channel.calls[0].metadata == [("authorization", "Bearer t"), ("x-jumpstarter-forwarded-by", "me")]
