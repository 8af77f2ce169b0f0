"""routerd as a real process on loopback with TLS: pairing, verbatim forwarding, endings, limits.

Peers are grpc.aio clients over secure channels that trust the router's
generated certificate; tokens are minted with the router's key file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import jwt
import pytest

from jumpstarter import routertoken, tls
from jumpstarter.channels import message_limits
from jumpstarter.v1 import router_pb2, router_pb2_grpc
from routerd.service import COMPLETION_GRACE

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA, RST, PING, GOAWAY = 0, 3, 6, 7
MiB = 1024 * 1024
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@dataclass
class Routerd:
    directory: str
    process: subprocess.Popen[bytes]
    log_path: str
    port: int = 0
    metrics_url: str = ""
    key: bytes = b""
    ca: bytes = b""

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with_json = line.strip()
            if with_json.startswith("{"):
                out.append(json.loads(with_json))
        return out

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def metric(self, name: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in metrics")

    def channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca)
        return grpc.aio.secure_channel(f"127.0.0.1:{self.port}", creds, options=message_limits())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class RouterdFactory:
    base: str
    started: list[Routerd] = field(default_factory=list)

    def config(self, name: str, **settings: Any) -> str:
        directory = os.path.join(self.base, name)
        os.makedirs(directory, exist_ok=True)
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "tls": {"cert": "tls.crt", "key": "tls.key"},
            "router_key_file": "router.key",
            "lone_peer_timeout": 30,
            "metrics": "127.0.0.1:0",
        }
        values.update(settings)
        path = os.path.join(directory, "routerd.yaml")
        with open(path, "w") as handle:
            json.dump(values, handle)  # JSON is YAML
        return path

    def start(self, name: str = "router", **settings: Any) -> Routerd:
        path = self.config(name, **settings)
        directory = os.path.dirname(path)
        log_path = os.path.join(directory, "routerd.log")
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [PY, "-m", "routerd.main", "--config", path, "--create-key", "--log-format", "json"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        router = Routerd(directory, process, log_path)
        self.started.append(router)
        deadline = time.monotonic() + 20
        while True:
            serving = [e for e in router.events() if e.get("event") == "serving"]
            if serving:
                router.port = serving[0]["port"]
                urls = [e["url"] for e in router.events() if e.get("event") == "metrics"]
                router.metrics_url = urls[0] if urls else ""
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"routerd did not start (rc={process.poll()}):\n{router.log()[-3000:]}")
            time.sleep(0.05)
        router.key = routertoken.load_key(os.path.join(directory, "router.key"))
        ca = os.path.join(directory, "ca.crt")  # the lab CA it made on first start, unless given a pair
        with open(ca if os.path.exists(ca) else os.path.join(directory, "tls.crt"), "rb") as handle:
            router.ca = handle.read()
        return router


@pytest.fixture(scope="module")
def routers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterdFactory]:
    factory = RouterdFactory(str(tmp_path_factory.mktemp("routerd")))
    try:
        yield factory
    finally:
        for router in factory.started:
            router.stop()


@pytest.fixture(scope="module")
def router(routers: RouterdFactory) -> Routerd:
    return routers.start("shared", lone_peer_timeout=30)


def open_stream(
    channel: grpc.aio.Channel, token: str | None, metadata: tuple[tuple[str, str], ...] = ()
) -> Any:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    auth = (("authorization", f"Bearer {token}"),) if token is not None else ()
    return stub.Stream(metadata=auth + metadata)


def frame(payload: bytes, frame_type: int = DATA) -> router_pb2.StreamRequest:
    return router_pb2.StreamRequest(payload=payload, frame_type=frame_type)


async def read_n(call: Any, n: int, timeout: float = 10) -> list[tuple[int, bytes]]:
    got = []
    for _ in range(n):
        message = await asyncio.wait_for(call.read(), timeout)
        assert message is not grpc.aio.EOF, f"stream ended after {len(got)} of {n} frames"
        got.append((message.frame_type, message.payload))
    return got


async def status_of(call: Any, timeout: float = 10) -> grpc.StatusCode:
    return await asyncio.wait_for(call.code(), timeout)


async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def ended(router: Routerd, stream_id: str) -> list[dict[str, Any]]:
    return [e for e in router.events() if e.get("event") == "stream ended" and e["stream"] == stream_id]


# --- pairing and forwarding ---------------------------------------------------------


def test_frames_of_every_type_arrive_verbatim_in_both_directions(router: Routerd) -> None:
    big = os.urandom(4 * MiB)
    frames_a = [
        (DATA, b"hello"),
        (PING, b""),
        (42, b"\x00\x01unknown"),
        (DATA, big),
        (RST, b"r"),
        (GOAWAY, b""),
    ]
    frames_b = [(DATA, b"from b"), (42, b"\xff" * 3), (PING, b"p"), (GOAWAY, b"bye")]

    async def scenario() -> None:
        token = routertoken.mint(router.key)
        async with router.channel() as ch_a, router.channel() as ch_b:
            a, b = open_stream(ch_a, token), open_stream(ch_b, token)
            for kind, payload in frames_a:
                await a.write(frame(payload, kind))
            for kind, payload in frames_b:
                await b.write(frame(payload, kind))
            assert await read_n(b, len(frames_a)) == frames_a
            assert await read_n(a, len(frames_b)) == frames_b
            await a.done_writing()
            await b.done_writing()
            assert await a.read() is grpc.aio.EOF
            assert await b.read() is grpc.aio.EOF
            assert await status_of(a) == grpc.StatusCode.OK
            assert await status_of(b) == grpc.StatusCode.OK

    run(scenario())


def test_half_close_leaves_the_other_direction_flowing_and_both_end_ok(router: Routerd) -> None:
    stream_id = str(uuid.uuid4())

    async def scenario() -> None:
        token = routertoken.mint(router.key, stream_id)
        async with router.channel() as ch_a, router.channel() as ch_b:
            a, b = open_stream(ch_a, token), open_stream(ch_b, token)
            await a.write(frame(b"last words"))
            await a.write(frame(b"", GOAWAY))
            await a.done_writing()
            assert await read_n(b, 2) == [(DATA, b"last words"), (GOAWAY, b"")]
            for i in range(20):  # B -> A keeps flowing after A half-closed
                await b.write(frame(b"more %d" % i))
            assert await read_n(a, 20) == [(DATA, b"more %d" % i) for i in range(20)]
            # Round trips B -> A for 20 times the router's completion grace after A's half-close: each
            # one proves the splice still forwards, and the router logged no end for it meanwhile.
            window = time.monotonic() + 20 * COMPLETION_GRACE
            i = 20
            while time.monotonic() < window:
                await b.write(frame(b"more %d" % i))
                assert await read_n(a, 1) == [(DATA, b"more %d" % i)]
                i += 1
            assert not ended(router, stream_id), "the router ended the stream with one direction open"
            await b.write(frame(b"", GOAWAY))
            await b.done_writing()
            assert await read_n(a, 1) == [(GOAWAY, b"")]
            assert await asyncio.wait_for(a.read(), 5) is grpc.aio.EOF
            assert await asyncio.wait_for(b.read(), 5) is grpc.aio.EOF
            assert await status_of(a) == grpc.StatusCode.OK
            assert await status_of(b) == grpc.StatusCode.OK

    run(scenario())
    assert [e["outcome"] for e in ended(router, stream_id)] == ["ok"]


def test_a_cancelled_peer_ends_the_other_at_once_with_unavailable(router: Routerd) -> None:
    async def scenario() -> None:
        token = routertoken.mint(router.key)
        async with router.channel() as ch_a, router.channel() as ch_b:
            a, b = open_stream(ch_a, token), open_stream(ch_b, token)
            await a.write(frame(b"ping"))
            assert await read_n(b, 1) == [(DATA, b"ping")]
            a.cancel()
            # "at once": well inside the 30 s lone-peer timeout and the keepalive that would end B otherwise
            assert await status_of(b, timeout=5) == grpc.StatusCode.UNAVAILABLE
            assert "went away" in await b.details()

    run(scenario())


PEER_SCRIPT = """
import asyncio, sys, time, grpc
from jumpstarter.v1 import router_pb2, router_pb2_grpc
async def main():
    ca = open(sys.argv[2], "rb").read()
    ch = grpc.aio.secure_channel(sys.argv[1], grpc.ssl_channel_credentials(ca))
    call = router_pb2_grpc.RouterServiceStub(ch).Stream(metadata=[("authorization", "Bearer " + sys.argv[3])])
    await call.write(router_pb2.StreamRequest(payload=b"alive"))
    print("sent", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_a_killed_peer_process_ends_the_other_at_once_with_unavailable(router: Routerd) -> None:
    async def scenario() -> None:
        token = routertoken.mint(router.key)
        ca_path = os.path.join(router.directory, "ca.crt")
        peer = subprocess.Popen(
            [PY, "-c", PEER_SCRIPT, f"127.0.0.1:{router.port}", ca_path, token],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            async with router.channel() as ch_b:
                b = open_stream(ch_b, token)
                assert await read_n(b, 1, timeout=15) == [(DATA, b"alive")]
                peer.kill()
                # "at once": far sooner than the 60 s + 20 s keepalive that finds silent peers
                assert await status_of(b, timeout=5) == grpc.StatusCode.UNAVAILABLE
        finally:
            peer.kill()
            peer.wait()

    run(scenario())


def test_streams_with_different_ids_do_not_cross(router: Routerd) -> None:
    async def scenario() -> None:
        tokens = [routertoken.mint(router.key) for _ in range(3)]
        async with router.channel() as channel:
            # All callers first, so every stream has a waiting peer before any pairing completes.
            firsts = [open_stream(channel, t) for t in tokens]
            for i, call in enumerate(firsts):
                await call.write(frame(b"first %d" % i))
            seconds = [open_stream(channel, t) for t in reversed(tokens)]
            seconds.reverse()
            for i, call in enumerate(seconds):
                await call.write(frame(b"second %d" % i))
            for i in range(3):
                assert await read_n(seconds[i], 1) == [(DATA, b"first %d" % i)]
                assert await read_n(firsts[i], 1) == [(DATA, b"second %d" % i)]
            for call in firsts + seconds:
                await call.done_writing()
            for call in firsts + seconds:
                assert await status_of(call) == grpc.StatusCode.OK

    run(scenario())


def test_client_keepalive_pings_every_second_do_not_get_the_connection_closed(router: Routerd) -> None:
    """Upstream peers ping every 20 s even with no call open; the router must never GOAWAY them for it."""

    def spliced_ports(stream_id: str) -> set[str]:
        spliced = [
            e for e in router.events() if e.get("event") == "stream spliced" and e["stream"] == stream_id
        ]
        return {peer.rsplit(":", 1)[1] for peer in spliced[0]["peers"]}

    async def pair_once(channel: grpc.aio.Channel) -> str:
        stream_id = str(uuid.uuid4())
        token = routertoken.mint(router.key, stream_id)
        a, b = open_stream(channel, token), open_stream(channel, token)
        await a.write(frame(b"x"))
        assert await read_n(b, 1) == [(DATA, b"x")]
        await a.done_writing()
        await b.done_writing()
        assert await status_of(a) == await status_of(b) == grpc.StatusCode.OK
        return stream_id

    async def scenario() -> None:
        options = [
            ("grpc.keepalive_time_ms", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        creds = grpc.ssl_channel_credentials(root_certificates=router.ca)
        async with grpc.aio.secure_channel(f"127.0.0.1:{router.port}", creds, options=options) as channel:
            before = await pair_once(channel)
            await asyncio.sleep(4)  # idle, pinging every second: a strict server would GOAWAY
            after = await pair_once(channel)
        assert spliced_ports(before) == spliced_ports(after), "the connection was replaced"

    run(scenario())


# --- timeouts, limits, authentication --------------------------------------------------


def test_a_lone_peer_is_dropped_with_deadline_exceeded_after_the_timeout(routers: RouterdFactory) -> None:
    router = routers.start("lonely", lone_peer_timeout=1)

    async def scenario() -> None:
        async with router.channel() as channel:
            started = time.monotonic()
            call = open_stream(channel, routertoken.mint(router.key))
            await call.write(frame(b"anyone?"))
            assert await status_of(call, timeout=10) == grpc.StatusCode.DEADLINE_EXCEEDED
            elapsed = time.monotonic() - started
            assert elapsed >= 0.9, elapsed  # not before the timeout; status_of bounds it from above
            assert "no peer joined" in await call.details()

    run(scenario())
    assert router.metric('jumpstarter_router_calls_total{outcome="lone_timeout"}') == 1
    assert router.metric("jumpstarter_router_streams_waiting") == 0


def test_streams_beyond_max_streams_are_refused_with_resource_exhausted(routers: RouterdFactory) -> None:
    router = routers.start("small", max_streams=2)

    def waiting() -> float:
        return router.metric("jumpstarter_router_streams_waiting")

    async def scenario() -> None:
        async with router.channel() as channel:
            held = [open_stream(channel, routertoken.mint(router.key)) for _ in range(2)]
            for call in held:
                await call.write(frame(b"x"))
            await until(lambda: waiting() == 2, "both held streams to wait for their peers")
            extra = open_stream(channel, routertoken.mint(router.key))
            assert await status_of(extra) == grpc.StatusCode.RESOURCE_EXHAUSTED
            held[0].cancel()
            await until(lambda: waiting() == 1, "the router to free the cancelled stream's slot")
            # A freed slot is usable again: a new stream id is admitted and its peer reaches it.
            token = routertoken.mint(router.key)
            again = open_stream(channel, token)
            await again.write(frame(b"y"))
            await until(lambda: waiting() == 2, "the new stream to be admitted")
            partner = open_stream(channel, token)
            assert await read_n(partner, 1) == [(DATA, b"y")]
            for call in [*held, again, partner]:
                call.cancel()

    run(scenario())


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": routertoken.ISSUER,
        "aud": [routertoken.AUDIENCE],
        "sub": "stream-1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


BAD_TOKENS: dict[str, Callable[[bytes], tuple[tuple[str, str], ...]]] = {
    "garbage": lambda key: (("authorization", "Bearer not-a-jwt"),),
    "expired": lambda key: (
        ("authorization", "Bearer " + jwt.encode(_claims(exp=int(time.time()) - 3600), key, "HS256")),
    ),
    "wrong-audience": lambda key: (
        ("authorization", "Bearer " + jwt.encode(_claims(aud=["https://example.com"]), key, "HS256")),
    ),
    "wrong-issuer": lambda key: (
        ("authorization", "Bearer " + jwt.encode(_claims(iss="someone"), key, "HS256")),
    ),
    "wrong-key": lambda key: (("authorization", "Bearer " + routertoken.mint(b"k" * 64)),),
    "missing": lambda key: (),
    "not-bearer": lambda key: (("authorization", "Basic " + routertoken.mint(key)),),
    "two-entries": lambda key: (
        ("authorization", "Bearer " + routertoken.mint(key)),
        ("authorization", "Bearer " + routertoken.mint(key)),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_or_missing_tokens_are_unauthenticated(router: Routerd, case: str) -> None:
    async def scenario() -> None:
        async with router.channel() as channel:
            call = open_stream(channel, None, BAD_TOKENS[case](router.key))
            assert await status_of(call) == grpc.StatusCode.UNAUTHENTICATED
            assert "invalid router token" in await call.details()

    run(scenario())


def test_the_bearer_prefix_is_case_insensitive(router: Routerd) -> None:
    async def scenario() -> None:
        token = routertoken.mint(router.key)
        async with router.channel() as channel:
            a = open_stream(channel, None, (("authorization", f"bearer {token}"),))
            b = open_stream(channel, None, (("authorization", f"BEARER {token}"),))
            await a.write(frame(b"hi"))
            assert await read_n(b, 1) == [(DATA, b"hi")]
            a.cancel()
            b.cancel()

    run(scenario())


# --- bounded memory, metrics, lifecycle ------------------------------------------------


def test_a_fast_sender_to_a_peer_that_does_not_read_is_held_back(routers: RouterdFactory) -> None:
    router = routers.start("memory")
    chunk = os.urandom(1 * MiB)
    sent = 0

    async def scenario() -> None:
        nonlocal sent
        token = routertoken.mint(router.key)
        async with router.channel() as ch_a, router.channel() as ch_b:
            a, b = open_stream(ch_a, token), open_stream(ch_b, token)
            await a.write(frame(b"start"))
            assert await read_n(b, 1) == [(DATA, b"start")]
            before = router.rss_kib()

            async def flood() -> None:
                nonlocal sent
                while sent < 1024 * MiB:
                    await a.write(frame(chunk))
                    sent += len(chunk)

            flooding = asyncio.ensure_future(flood())
            # Wait until the sender is blocked: nothing more accepted for 2 s (or it got through).
            deadline = time.monotonic() + 120
            last, since = -1, time.monotonic()
            while not flooding.done() and time.monotonic() - since < 2:
                assert time.monotonic() < deadline, f"sender never stalled: {sent / MiB:.0f} MiB accepted"
                if sent != last:
                    last, since = sent, time.monotonic()
                await asyncio.sleep(0.1)
            growth = (router.rss_kib() - before) / 1024
            assert not flooding.done(), "1 GiB went through a peer that reads nothing"
            assert sent < 200 * MiB, f"sender was not held back: {sent / MiB:.0f} MiB accepted"
            assert growth < 100, f"router RSS grew {growth:.0f} MiB"
            # Nothing was dropped: once B reads, everything A sent arrives.
            received = 0
            while received < sent:
                message = await asyncio.wait_for(b.read(), 10)
                received += len(message.payload)
            flooding.cancel()
            a.cancel()
            b.cancel()

    run(scenario())
    assert sent >= 1 * MiB


def test_metrics_count_calls_bytes_and_streams(routers: RouterdFactory) -> None:
    router = routers.start("metrics")

    async def scenario() -> None:
        token = routertoken.mint(router.key)
        async with router.channel() as channel:
            a, b = open_stream(channel, token), open_stream(channel, token)
            await a.write(frame(b"x" * 1000))
            await read_n(b, 1)
            assert router.metric("jumpstarter_router_streams_active") == 1
            await a.done_writing()
            await b.done_writing()
            assert await status_of(a) == await status_of(b) == grpc.StatusCode.OK
            bad = open_stream(channel, "nope")
            assert await status_of(bad) == grpc.StatusCode.UNAUTHENTICATED

    run(scenario())
    assert router.metric('jumpstarter_router_calls_total{outcome="ok"}') == 2
    assert router.metric('jumpstarter_router_calls_total{outcome="unauthenticated"}') == 1
    assert router.metric("jumpstarter_router_streams_active") == 0
    assert router.metric("jumpstarter_router_forwarded_frames_total") == 1
    assert router.metric("jumpstarter_router_forwarded_bytes_total") >= 1000
    assert router.metric("process_resident_memory_bytes") > 0


def test_sigterm_ends_waiting_and_spliced_streams_with_unavailable_and_exits_0(
    routers: RouterdFactory,
) -> None:
    router = routers.start("sigterm")

    async def scenario() -> None:
        token = routertoken.mint(router.key)
        async with router.channel() as channel:
            lone = open_stream(channel, routertoken.mint(router.key))
            a, b = open_stream(channel, token), open_stream(channel, token)
            await a.write(frame(b"x"))
            await read_n(b, 1)
            router.process.send_signal(signal.SIGTERM)
            for call in (lone, a, b):
                assert await status_of(call) == grpc.StatusCode.UNAVAILABLE
                assert "router shutting down" in await call.details()

    run(scenario())
    assert router.process.wait(timeout=10) == 0
    events = [e["event"] for e in router.events()]
    assert events[-1] == "stopped" and "stopping" in events, router.log()[-3000:]
    assert not [e for e in router.events() if e["level"] == "error"], router.log()[-3000:]


def test_first_start_generates_a_private_key_and_a_certificate_for_the_advertised_name(
    routers: RouterdFactory,
) -> None:
    router = routers.start("advertise", advertise="router.example.test:8083")
    for name in ("tls.key", "router.key", "ca.key"):
        assert os.stat(os.path.join(router.directory, name)).st_mode & 0o777 == 0o600
    with open(os.path.join(router.directory, "tls.crt"), "rb") as handle:
        cert = handle.read()
    names = tls.certificate_names(cert)
    assert {"router.example.test", "localhost", "127.0.0.1"} <= set(names)
    assert tls.signed_by(cert, router.ca) and cert != router.ca  # a leaf of the lab CA made beside it
    event = next(e for e in router.events() if e.get("event") == "tls certificate")
    assert event["generated"] is True and event["self_signed"] is False
    assert "token" not in router.log().lower().replace("router token", "")


# --- --check ---------------------------------------------------------------------------


def check(config: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "routerd.main", "--config", config, "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def write(path: str, text: str, mode: int = 0o644) -> str:
    with open(path, "w") as handle:
        handle.write(textwrap.dedent(text))
    os.chmod(path, mode)
    return path


def test_check_accepts_a_good_config(tmp_path: Any) -> None:
    routertoken.generate_key(str(tmp_path / "router.key"))
    config = write(str(tmp_path / "routerd.yaml"), "listen: 0.0.0.0:8083\nrouter_key_file: router.key\n")
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"{config}: ok")
    assert "will be generated" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen: 0.0.0.0:8083\nlisen: x\n", ":2: lisen: unknown key"),
        ("lone_peer_timeout: soon\n", ":1: lone_peer_timeout: expected a positive number"),
        ("max_streams: 0\n", ":1: max_streams: expected a positive whole number"),
        (
            "max_streams: 10\nmax_streams_per_lease: 10\n",
            ":2: max_streams_per_lease: must be below max_streams",
        ),
        ("max_waiting_per_lease: 64\n", ":1: max_waiting_per_lease: must not exceed max_streams_per_lease"),
        ("listen: 8083\n", ":1: listen: expected HOST:PORT"),
        ("metrics: 0.0.0.0:9103\n", ":1: metrics: 0.0.0.0:9103 is not a loopback address"),
        ("tls:\n  cert: a.crt\n  chain: b\n", ":3: tls.chain: unknown key"),
        ("listen: [oops\n", ":2: expected ',' or ']'"),
    ],
)
def test_check_rejects_a_bad_config_naming_file_line_and_key(tmp_path: Any, text: str, expected: str) -> None:
    config = write(str(tmp_path / "routerd.yaml"), text)
    result = check(config)
    assert result.returncode == 2
    assert f"{config}{expected}" in result.stderr, result.stderr


def test_check_rejects_a_missing_or_exposed_router_key(tmp_path: Any) -> None:
    config = write(str(tmp_path / "routerd.yaml"), "router_key_file: router.key\n")
    result = check(config)
    assert (
        result.returncode == 2
        and "router key file missing" in result.stderr
        and "--create-key" in result.stderr
    )
    write(str(tmp_path / "router.key"), "a" * 64, mode=0o644)
    result = check(config)
    assert result.returncode == 2 and "chmod 600" in result.stderr
