"""The session server and client library together, over real gRPC on a unix socket (in-process)."""

from __future__ import annotations

import asyncio
import base64
import bz2
import gzip
import lzma
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import zstandard

import jumpstarter
from jumpstarter.client.connection import Connection
from jumpstarter.client.drivers.generic import GenericClient
from jumpstarter.driver import Driver, export, exportstream
from jumpstarter.drivers.composite import Composite
from jumpstarter.drivers.network import EchoNetwork, TcpNetwork
from jumpstarter.drivers.power import MockPower
from jumpstarter.drivers.storage import FileFlasher
from jumpstarter.errors import (
    DriverError,
    DriverInvalidArgument,
    DriverMethodNotFound,
    DriverNotImplemented,
    DriverTimeout,
    DriverUnavailable,
    ExporterNotReady,
)
from jumpstarter.session.local import LocalServer
from jumpstarter.streams import memory_pipe


class Gadget(Driver):
    """A driver exercising every kind of exported method."""

    client = "example.client.GadgetClient"  # unknown to us: a generic client drives it

    @export
    async def add(self, a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @export
    def blocking_echo(self, data: bytes) -> bytes:
        return data[::-1]

    @export
    async def fail(self, kind: str) -> None:
        raise {
            "value": ValueError,
            "timeout": TimeoutError,
            "conn": ConnectionError,
            "nie": NotImplementedError,
            "other": RuntimeError,
        }[kind](f"failed with {kind}")

    @export
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise TimeoutError("stopped after the last item")

    @export
    def sync_count(self, n: int) -> Iterator[dict[str, int]]:
        for i in range(n):
            yield {"i": i}

    @export
    async def shout(self, text: str) -> None:
        self.log.warning("shouting", text=text)

    @exportstream
    async def connect(self) -> AsyncIterator[object]:
        ours, theirs = memory_pipe()

        async def upper() -> None:
            while data := await theirs.receive():
                await theirs.send(data.upper())
            await theirs.send_eof()

        task = asyncio.create_task(upper())
        try:
            yield ours
        finally:
            task.cancel()


def tree(tmp_path=None) -> Driver:
    children: dict[str, Driver] = {
        "power": MockPower(description="main power"),
        "gadget": Gadget(),
        "net": Composite(children={"echo": EchoNetwork(), "closed": TcpNetwork(host="127.0.0.1", port=1)}),
    }
    if tmp_path is not None:
        children["storage"] = FileFlasher(path=str(tmp_path / "disk.img"))
    return Composite(children=children)


@pytest.fixture
def served(tmp_path):
    with LocalServer(lambda: tree(tmp_path), labels={"jumpstarter.dev/name": "unit"}) as path:
        yield path


@pytest.fixture
def board(served):
    with jumpstarter.connect(served) as root:
        yield root


def test_report_is_preorder_with_client_and_name_labels(served):
    connection = Connection(served)
    report = connection.report()
    connection.close()
    names = [r.labels.get("jumpstarter.dev/name") for r in report.reports]
    assert names == [None, "power", "gadget", "net", "echo", "closed", "storage"]
    assert not report.reports[0].HasField("parent_uuid")
    by_uuid = {r.uuid: r for r in report.reports}
    assert by_uuid[report.reports[4].parent_uuid].labels["jumpstarter.dev/name"] == "net"
    for entry in report.reports:
        assert str(uuid.UUID(entry.uuid)) == entry.uuid  # canonical lowercase
        assert "jumpstarter.dev/client" in entry.labels
    assert report.reports[1].labels["jumpstarter.dev/client"] == "jumpstarter_driver_power.client.PowerClient"
    assert report.reports[1].description == "main power"
    assert report.reports[2].methods_description["add"] == "Add two integers."
    assert report.labels["jumpstarter.dev/name"] == "unit"


def test_unknown_client_label_gets_a_generic_client(board):
    assert isinstance(board.gadget, GenericClient)
    assert board.net.echo.path == "net.echo"


def test_integers_stay_integers_and_bytes_come_back_as_base64_text(board):
    result = board.gadget.call("add", 2, 3)
    assert result == 5 and type(result) is int
    # bytes travel as base64 text (as upstream does) and the generic client hands that text back as is
    echoed = board.gadget.call("blocking_echo", b"\x00\x01\xff")
    assert type(echoed) is str and echoed == base64.b64encode(b"\xff\x01\x00").decode("ascii")
    assert jumpstarter.values.b64decode(echoed) == b"\xff\x01\x00"


@pytest.mark.parametrize(
    "kind, error",
    [
        ("value", DriverInvalidArgument),
        ("timeout", DriverTimeout),
        ("conn", DriverUnavailable),
        ("nie", DriverNotImplemented),
        ("other", DriverError),
    ],
)
def test_driver_exceptions_come_back_as_matching_exceptions_with_the_message(board, kind, error):
    with pytest.raises(error, match=f"failed with {kind}"):
        board.gadget.call("fail", kind)


def test_unknown_method_lists_the_existing_ones(board):
    with pytest.raises(DriverMethodNotFound, match=r"no unary method 'nope' \(it has: .*add.*blocking_echo"):
        board.gadget.call("nope")


def test_wrong_arguments_are_invalid_argument_before_the_driver_runs(board):
    with pytest.raises(DriverInvalidArgument, match=r"Gadget.add\(a, b\) takes 2 argument"):
        board.gadget.call("add", 1)
    with pytest.raises(DriverInvalidArgument, match="expected an integer"):
        board.gadget.call("add", 1, "two")


def test_a_streaming_method_is_not_callable_as_unary(board):
    with pytest.raises(DriverMethodNotFound, match="is a streaming method"):
        board.gadget.call("count", 3)


def test_streaming_calls_yield_items_then_the_error(board):
    items = []
    with pytest.raises(DriverTimeout, match="stopped after the last item"):
        for item in board.gadget.streamingcall("count", 3):
            items.append(item)
    assert items == [0, 1, 2]
    assert list(board.gadget.streamingcall("sync_count", 2)) == [{"i": 0}, {"i": 1}]


def test_power_client_reads_typed_readings(board):
    board.power.on()
    reading = next(board.power.read())
    assert (reading.voltage, reading.current) == (5.0, 2.0)


def test_byte_stream_round_trip_and_end_of_stream(board):
    with board.gadget.stream("connect") as stream:
        stream.send(b"hello ")
        stream.send(b"board")
        stream.send_eof()
        assert b"".join(stream) == b"HELLO BOARD"


def test_echo_stream_keeps_order_over_many_chunks(board):
    chunks = [bytes([i]) * 70000 for i in range(40)]
    with board.net.echo.stream() as stream:
        sender = threading.Thread(target=lambda: ([stream.send(c) for c in chunks], stream.send_eof()))
        sender.start()
        received = b"".join(stream)
        sender.join()
    assert received == b"".join(chunks)


def test_stream_open_failure_surfaces_at_open(board):
    with pytest.raises(DriverUnavailable, match="cannot connect to 127.0.0.1:1"):
        board.net.closed.stream()


@pytest.mark.parametrize(
    "encoding, compress",
    [
        (None, lambda b: b),
        ("gzip", gzip.compress),
        ("xz", lzma.compress),
        ("bz2", bz2.compress),
        ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
    ],
)
def test_resource_upload_is_decompressed_by_the_exporter(board, tmp_path, encoding, compress):
    payload = bytes(range(256)) * 8192  # 2 MiB
    data = compress(payload)
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    with board.storage.upload(iter(chunks), encoding) as handle:
        result = board.storage.call("flash", handle, None)
    assert result["bytes"] == len(payload)
    assert (tmp_path / "disk.img").read_bytes() == payload


def test_corrupt_compressed_upload_is_an_invalid_argument(board):
    with pytest.raises(DriverInvalidArgument, match="corrupt gzip data"):
        with board.storage.upload(iter([b"\x1f\x8b\x08\x00garbage" * 10]), "gzip") as handle:
            board.storage.call("flash", handle, None)


def test_dump_streams_the_target_back(board, tmp_path):
    (tmp_path / "disk.img").write_bytes(b"x" * 3_000_000)
    out = tmp_path / "out.img"
    assert board.storage.dump(str(out), progress=False) == 3_000_000
    assert out.read_bytes() == b"x" * 3_000_000


def test_unknown_resource_handle_is_rejected(board):
    with pytest.raises(DriverInvalidArgument, match="no open resource stream"):
        board.storage.call("flash", {"kind": "client_stream", "uuid": str(uuid.uuid4())}, None)


def test_every_log_subscriber_gets_every_record(served):
    a, b = Connection(served), Connection(served)
    streams = [a.logs(), b.logs()]
    got: list[list[str]] = [[], []]
    shouted: list[tuple[str, str] | None] = [None, None]  # checked in this thread after the join
    ready = threading.Barrier(3)

    def follow(index: int) -> None:
        iterator = streams[index]
        ready.wait()
        for record in iterator:
            got[index].append(record.message)
            if record.message == "shouting":
                shouted[index] = (record.severity, record.structured_fields["text"])
                return

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    ready.wait()
    with jumpstarter.connect(served) as root:
        # a record only reaches subscribers registered before it: retry until both saw one
        for _ in range(200):
            root.gadget.call("shout", "hey")
            if all("shouting" in g for g in got):
                break
            threads[0].join(0.01)
    for t in threads:
        t.join(30)
    alive = [t.is_alive() for t in threads]
    a.close()  # ends the log stream of a follower still waiting, so its thread can finish
    b.close()
    for t in threads:
        t.join(30)
    for s in streams:
        s.close()
    assert alive == [False, False], got
    assert shouted == [("WARNING", "hey"), ("WARNING", "hey")], got


def test_status_is_lease_ready_and_end_session_without_lease_says_so(served):
    connection = Connection(served)
    status = connection.status()
    from jumpstarter.v1 import common_pb2

    assert status.status == common_pb2.EXPORTER_STATUS_LEASE_READY
    assert status.status_version >= 1
    ended = connection.end_session()
    assert ended.success is False and "No active lease" in ended.message
    connection.close()


def test_calls_are_refused_when_the_session_is_not_ready(tmp_path):
    from jumpstarter.session.server import Session
    from jumpstarter.v1 import common_pb2

    async def scenario() -> None:
        from jumpstarter.client.aio_connection import AsyncConnection
        from jumpstarter.session.server import serve_unix

        session = Session(tree(), status=common_pb2.EXPORTER_STATUS_AVAILABLE)
        path = str(tmp_path / "s.sock")
        async with serve_unix(session, path):
            connection = AsyncConnection(path)
            report = await connection.report()
            with pytest.raises(ExporterNotReady, match="not ready for driver calls"):
                await connection.call(report.reports[1].uuid, "on", [])
            await connection.close()

    asyncio.run(scenario())


def test_async_api_calls_and_streams(served):
    async def scenario() -> None:
        async with jumpstarter.connect_async(served) as root:
            assert await root.gadget.call_async("add", 20, 22) == 42
            assert [x async for x in root.gadget.streamingcall_async("sync_count", 2)] == [{"i": 0}, {"i": 1}]
            async with root.gadget.stream_async() as stream:
                await stream.send(b"abc")
                await stream.send_eof()
                assert await stream.receive() == b"ABC"

    asyncio.run(scenario())


def test_ref_alias_reports_the_target_uuid_under_a_new_name(tmp_path):
    from jumpstarter.config.exporter import load_exporter_config

    cfg = tmp_path / "e.yaml"
    cfg.write_text("export:\n  power: {type: power.mock}\n  dut:\n    children:\n      pwr: {ref: power}\n")
    config = load_exporter_config(str(cfg))
    with LocalServer(config.build) as path, jumpstarter.connect(path) as root:
        assert root.dut.pwr.uuid == root.power.uuid
        root.dut.pwr.on()
        assert [r.current for r in root.power.read()] == [2.0]


def test_serial_console_output_goes_to_a_log_file_per_session(tmp_path):
    import os
    import tty

    from jumpstarter.drivers.serial import Serial

    master, slave = os.openpty()
    tty.setraw(slave)
    logs = tmp_path / "console"
    board = Composite(
        children={"serial": Serial(url=os.ttyname(slave), console_log=str(logs), console_log_max=64)}
    )
    try:
        with LocalServer(lambda: board) as path, jumpstarter.connect(path) as root:
            with root.serial.console() as console:
                os.write(master, b"U-Boot 2024.01\r\nlogin: ")
                console.expect("login:", timeout=10)
                os.write(master, b"x" * 100)  # past the 64-byte cap
                console.expect("x" * 20, timeout=10)
        files = list(logs.iterdir())
        assert len(files) == 1 and files[0].name.startswith("local-")
        text = files[0].read_bytes()
        assert text.startswith(b"U-Boot 2024.01\r\nlogin: ")
        assert text.endswith(b"[jumpstarter: console log size limit reached]\n")
        assert oct(files[0].stat().st_mode & 0o777) == "0o640"
    finally:
        os.close(master)
        os.close(slave)


def test_async_stream_open_failure_surfaces_at_open(served):
    async def scenario() -> None:
        async with jumpstarter.connect_async(served) as root:
            with pytest.raises(DriverUnavailable, match="cannot connect to 127.0.0.1:1"):
                async with root.net.closed.stream_async():
                    pass

    asyncio.run(scenario())


def test_a_method_found_once_is_still_checked_on_every_call(tmp_path):
    """The exporter remembers where a method is, never that a call was allowed."""
    from jumpstarter.session.server import Session
    from jumpstarter.v1 import common_pb2

    async def scenario() -> None:
        from jumpstarter.client.aio_connection import AsyncConnection
        from jumpstarter.session.server import serve_unix

        session = Session(tree())
        path = str(tmp_path / "s.sock")
        async with serve_unix(session, path):
            connection = AsyncConnection(path)
            gadget = (await connection.report()).reports[2].uuid
            assert await connection.call(gadget, "add", [20, 22]) == 42
            with pytest.raises(DriverInvalidArgument, match="takes 2 argument"):
                await connection.call(gadget, "add", [1])
            with pytest.raises(DriverMethodNotFound):
                await connection.call(gadget, "count", [1])  # a streaming method, not unary
            session.set_status(common_pb2.EXPORTER_STATUS_AVAILABLE)
            with pytest.raises(ExporterNotReady, match="not ready for driver calls"):
                await connection.call(gadget, "add", [20, 22])
            await connection.close()

    asyncio.run(scenario())


def test_every_response_carries_a_fresh_canonical_uuid(served):
    import grpc

    from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

    connection = Connection(served)
    gadget = connection.report().reports[2].uuid
    connection.close()
    with grpc.insecure_channel(f"unix:{served}") as channel:
        stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
        request = jumpstarter_pb2.DriverCallRequest(uuid=gadget, method="add")
        request.args.add().number_value = 1
        request.args.add().number_value = 2
        ids = [stub.DriverCall(request).uuid for _ in range(50)]
        streamed = jumpstarter_pb2.StreamingDriverCallRequest(uuid=gadget, method="sync_count")
        streamed.args.add().number_value = 5
        ids += [item.uuid for item in stub.StreamingDriverCall(streamed)]
    assert len(ids) == 55 and len(set(ids)) == 55
    for text in ids:
        assert str(uuid.UUID(text)) == text and uuid.UUID(text).version == 4
