"""The simulated lab of bench_load.py: real gRPC exporters and clients of one controllerd, on grpc.aio.

Every peer has its own channel (its own TLS connection, as on a real lab).

- Exporter: Register, ReportStatus(AVAILABLE), a Status stream; on `leased=true` it opens Listen and
  reports LEASE_READY, on `leased=false` it closes Listen and reports AVAILABLE (like StubExporter in
  tests/integration/central.py), and repeats its status every HEARTBEAT seconds like exporterd.
- Client: think, CreateLease(selector), poll GetLease until Ready, hold, sometimes extend
  (UpdateLease), release (DeleteLease); again until the end time.

A worker process runs many of one kind and, when done, puts its `Record` on a multiprocessing queue:
every RPC as (time, op, code) and every grant as (time, latency, hot, immediate).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from google.protobuf import field_mask_pb2  # noqa: E402

from jumpstarter.client.v1 import client_pb2, client_pb2_grpc  # noqa: E402
from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc  # noqa: E402
from tests.integration.central import Identity, condition, is_true, seconds, short  # noqa: E402

AVAILABLE, LEASE_READY = common_pb2.EXPORTER_STATUS_AVAILABLE, common_pb2.EXPORTER_STATUS_LEASE_READY
HEARTBEAT = 10.0  # seconds, as exporterd (exporterd/controller_calls.py)
RPC_TIMEOUT = 60.0
THINK = (0.5, 2.0)  # seconds a client waits between leases
HOLD = (1.0, 4.0)  # seconds a client holds a granted lease
EXTEND_SHARE = 0.25  # leases extended (UpdateLease duration) while held
LEASE_SECONDS = 60.0
ONLINE_BATCH = 50  # exporters brought online at once


@dataclass
class Record:
    kind: str
    calls: list[tuple[float, str, str, float]] = field(default_factory=list)  # (time, op, code, seconds)
    grants: list[tuple[float, float, bool, bool]] = field(default_factory=list)  # (time, s, hot, immediate)

    async def call(self, op: str, pending: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await pending
        except grpc.aio.AioRpcError as exc:
            self.calls.append((time.time(), op, exc.code().name, time.perf_counter() - started))
            raise
        self.calls.append((time.time(), op, "OK", time.perf_counter() - started))
        return result


def _channel(endpoint: str, ca: bytes) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    # a connection of its own: channels with the same target and options may share one otherwise
    return grpc.aio.secure_channel(endpoint, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


# -- exporters ----------------------------------------------------------------------------------


class SimExporter:
    def __init__(self, identity: Identity, channel: grpc.aio.Channel, record: Record) -> None:
        self.identity = identity
        self.stub = jumpstarter_pb2_grpc.ControllerServiceStub(channel)
        self.md = identity.metadata()
        self.record = record
        self.status: int = AVAILABLE
        self.online = asyncio.Event()

    async def report(self, status: int) -> None:
        self.status = status
        request = jumpstarter_pb2.ReportStatusRequest(status=status, message="sim")  # type: ignore[arg-type]
        try:
            await self.record.call(
                "ReportStatus", self.stub.ReportStatus(request, metadata=self.md, timeout=RPC_TIMEOUT)
            )
        except grpc.aio.AioRpcError:
            pass  # recorded; the next change or heartbeat reports again

    async def run(self) -> None:
        register = jumpstarter_pb2.RegisterRequest(labels={"jumpstarter.dev/name": self.identity.name})
        while True:
            try:
                await self.record.call(
                    "Register", self.stub.Register(register, metadata=self.md, timeout=RPC_TIMEOUT)
                )
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(1)
        await self.report(AVAILABLE)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:  # a Status stream that ends is reopened, as exporterd does
                await self._follow()
                await asyncio.sleep(1)
        finally:
            heartbeat.cancel()

    async def _heartbeat(self) -> None:
        await asyncio.sleep(random.uniform(0, HEARTBEAT))
        while True:
            await self.report(self.status)
            await asyncio.sleep(HEARTBEAT)

    async def _follow(self) -> None:
        current: str | None = None
        listen: asyncio.Task[None] | None = None
        call = self.stub.Status(jumpstarter_pb2.StatusRequest(), metadata=self.md)
        try:
            async for message in call:
                self.online.set()
                if message.leased and message.lease_name != current:
                    if listen is not None:
                        listen.cancel()
                    current = message.lease_name
                    listen = asyncio.create_task(self._listen(short(current), time.perf_counter()))
                    await self.report(LEASE_READY)
                elif not message.leased and current is not None:
                    if listen is not None:
                        listen.cancel()
                    current, listen = None, None
                    await self.report(AVAILABLE)
            self.record.calls.append((time.time(), "Status", "OK", 0.0))
        except grpc.aio.AioRpcError as exc:
            self.record.calls.append((time.time(), "Status", exc.code().name, 0.0))
        finally:
            if listen is not None:
                listen.cancel()
            call.cancel()

    async def _listen(self, lease: str, told: float) -> None:
        try:
            async for _ in self.stub.Listen(
                jumpstarter_pb2.ListenRequest(lease_name=lease), metadata=self.md
            ):
                pass
        except grpc.aio.AioRpcError as exc:  # seconds: from leased=true to the refusal
            self.record.calls.append((time.time(), "Listen", exc.code().name, time.perf_counter() - told))


async def _exporters(endpoint: str, ca: bytes, identities: list[Identity], ready: Any, stop: Any) -> Record:
    record = Record("exporters")
    channels = [_channel(endpoint, ca) for _ in identities]
    sims = [SimExporter(i, c, record) for i, c in zip(identities, channels, strict=True)]
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, len(sims), ONLINE_BATCH):
        batch = sims[start : start + ONLINE_BATCH]
        tasks += [asyncio.create_task(s.run()) for s in batch]
        await asyncio.gather(*(s.online.wait() for s in batch))
    ready.set()
    await asyncio.to_thread(stop.wait)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return record


def exporter_worker(
    endpoint: str, ca: bytes, identities: list[Identity], ready: Any, stop: Any, out: Any
) -> None:
    """Process entry: bring every exporter online, set `ready`, serve leases until `stop`, report."""
    out.put(asyncio.run(_exporters(endpoint, ca, identities, ready, stop)))


# -- clients ------------------------------------------------------------------------------------


class SimClient:
    def __init__(
        self, identity: Identity, selector: str, hot: bool, channel: grpc.aio.Channel, record: Record
    ) -> None:
        self.identity = identity
        self.selector = selector
        self.hot = hot
        self.stub = client_pb2_grpc.ClientServiceStub(channel)
        self.md = identity.metadata()
        self.parent = f"namespaces/{identity.namespace}"
        self.record = record
        self.rng = random.Random(identity.name)

    async def run(self, end: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, THINK[1]))  # do not start in lockstep
        while time.time() < end:
            try:
                await self._one(end)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(1)  # recorded; back off a little
            await asyncio.sleep(self.rng.uniform(*THINK))

    async def _one(self, end: float) -> None:
        spec = client_pb2.Lease(selector=self.selector)
        spec.duration.CopyFrom(seconds(LEASE_SECONDS))
        request = client_pb2.CreateLeaseRequest(parent=self.parent, lease=spec)
        started = time.perf_counter()
        lease = await self.record.call(
            "CreateLease", self.stub.CreateLease(request, metadata=self.md, timeout=RPC_TIMEOUT)
        )
        immediate = is_true(lease, "Ready")
        delay = 0.02
        while not is_true(lease, "Ready"):
            ended = condition(lease, "Ready") is not None or (condition(lease, "Pending") is None)
            if ended or time.time() > end:  # refused/expired, or the run is over while it queues
                if not ended:
                    await self._release(lease.name)
                self.record.calls.append(
                    (time.time(), "grant", "ENDED_UNGRANTED" if ended else "RUN_OVER", 0.0)
                )
                return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)  # exact for quick grants, cheap for queued ones
            get = client_pb2.GetLeaseRequest(name=lease.name)
            lease = await self.record.call(
                "GetLease", self.stub.GetLease(get, metadata=self.md, timeout=RPC_TIMEOUT)
            )
        self.record.grants.append((time.time(), time.perf_counter() - started, self.hot, immediate))
        hold = self.rng.uniform(*HOLD)
        if self.rng.random() < EXTEND_SHARE:
            await asyncio.sleep(hold / 2)
            change = client_pb2.Lease(name=lease.name)
            change.duration.CopyFrom(seconds(2 * LEASE_SECONDS))
            update = client_pb2.UpdateLeaseRequest(
                lease=change, update_mask=field_mask_pb2.FieldMask(paths=["duration"])
            )
            await self.record.call(
                "UpdateLease", self.stub.UpdateLease(update, metadata=self.md, timeout=RPC_TIMEOUT)
            )
            hold /= 2
        await asyncio.sleep(hold)
        await self._release(lease.name)

    async def _release(self, name: str) -> None:
        request = client_pb2.DeleteLeaseRequest(name=name)
        await self.record.call(
            "DeleteLease", self.stub.DeleteLease(request, metadata=self.md, timeout=RPC_TIMEOUT)
        )


async def _clients(endpoint: str, ca: bytes, specs: list[tuple[Identity, str, bool]], end: float) -> Record:
    record = Record("clients")
    channels = [_channel(endpoint, ca) for _ in specs]
    sims = [SimClient(i, sel, hot, c, record) for (i, sel, hot), c in zip(specs, channels, strict=True)]
    await asyncio.gather(*(s.run(end) for s in sims))
    for channel in channels:
        await channel.close()
    return record


def client_worker(
    endpoint: str, ca: bytes, specs: list[tuple[Identity, str, bool]], end: float, out: Any
) -> None:
    """Process entry: run every client's lease loop until `end` (wall clock), finish held leases, report."""
    out.put(asyncio.run(_clients(endpoint, ca, specs, end)))
