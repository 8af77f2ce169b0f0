"""An open client tree whose exporter session was replaced (as after an exporterd restart).

The session server runs in-process on a real unix socket; the test swaps its session the
way exporterd does, so the old tree's driver uuids are gone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

import jumpstarter
from jumpstarter.drivers.composite import Composite
from jumpstarter.drivers.network import EchoNetwork
from jumpstarter.drivers.power import MockPower
from jumpstarter.errors import BoardRestarted, DriverMethodNotFound
from jumpstarter.session.server import Session, SessionSlot, serve_unix


class Served:
    """A session slot served on a loop thread; `restart()` swaps in fresh drivers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.slot = SessionSlot(self._session())
        self.stop: asyncio.Event | None = None
        started = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(started),))
        self.thread.start()
        started.wait(10)

    @staticmethod
    def _session() -> Session:
        return Session(Composite(children={"power": MockPower(), "echo": EchoNetwork()}))

    async def _serve(self, started: threading.Event) -> None:
        self.stop = asyncio.Event()
        async with serve_unix(self.slot, self.path, 0o600):
            started.set()
            await self.stop.wait()

    def restart(self) -> None:
        async def swap() -> None:
            self.slot.current = self._session()

        asyncio.run_coroutine_threadsafe(swap(), self.loop).result(10)

    def close(self) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    server = Served(str(tmp_path / "board.sock"))
    try:
        yield server
    finally:
        server.close()


def test_every_kind_of_call_on_an_old_tree_says_the_board_restarted(served: Served):
    with jumpstarter.connect(served.path) as board:
        board.power.on()
        served.restart()

        with pytest.raises(BoardRestarted, match="the board's exporter restarted; reconnect"):
            board.power.on()
        with pytest.raises(BoardRestarted):
            list(board.power.streamingcall("read"))
        with pytest.raises(BoardRestarted):
            board.echo.stream()
        with pytest.raises(BoardRestarted):
            asyncio.run(board.power.call_async("off"))

    with jumpstarter.connect(served.path) as board:  # reconnecting is the way out
        board.power.on()


def test_an_unknown_method_on_the_same_session_is_still_method_not_found(served: Served):
    with jumpstarter.connect(served.path) as board:
        with pytest.raises(DriverMethodNotFound) as info:
            board.power.call("no_such_method")
        assert not isinstance(info.value, BoardRestarted)
