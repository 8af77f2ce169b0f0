"""Every gRPC channel the client library and the CLI open is closed by them, never by the GC.

A channel left to the garbage collector closes itself in a finalizer that waits for
gRPC's daemon threads; during interpreter shutdown those are frozen and the process
hangs after its work is done. The session is served in-process over a real unix socket.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import jumpstarter
from jumpstarter.cli.main import main
from jumpstarter.drivers.composite import Composite
from jumpstarter.drivers.network import EchoNetwork
from jumpstarter.drivers.power import MockPower
from jumpstarter.session.local import LocalServer
from tests.channel_audit import audit


@pytest.fixture
def served():  # type: ignore[no-untyped-def]
    with LocalServer(lambda: Composite(children={"power": MockPower(), "echo": EchoNetwork()})) as path:
        yield path


def test_blocking_and_async_calls_on_a_connected_tree_close_every_channel(served):
    async def use_async(root) -> list[object]:  # type: ignore[no-untyped-def]
        await root.power.call_async("on")
        readings = [r async for r in root.power.streamingcall_async("read")]
        async with root.echo.stream_async() as stream:
            await stream.send(b"ping")
            assert await stream.receive() == b"ping"
        return readings

    with audit() as channels:
        with jumpstarter.connect(served) as root:
            root.power.on()
            with root.echo.stream() as stream:
                stream.send(b"ping")
                assert stream.receive() == b"ping"
            assert asyncio.run(use_async(root))
            assert asyncio.run(use_async(root))  # a second event loop: the first one is gone
        assert len(channels.created) >= 2, "the audit saw no channel: it is not measuring anything"
        assert channels.unclosed() == []


def test_connect_async_closes_its_channel(served):
    async def use() -> None:
        async with jumpstarter.connect_async(served) as root:
            await root.power.call_async("off")

    with audit() as channels:
        asyncio.run(use())
        assert channels.created and channels.unclosed() == []


def test_a_cli_command_with_logs_closes_its_channel_and_leaves_no_thread(served, capsys):
    before = set(threading.enumerate())
    with audit() as channels:
        assert main(["--host", served, "--logs", "power", "on"]) == 0
        assert channels.created and channels.unclosed() == []
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert "logs" not in left, f"the --logs follower outlived the command: {left}"
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon], left
