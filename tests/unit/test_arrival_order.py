"""controllerd serves generated services through their generic handler only (controllerd/arrival_order.py).

grpc.aio takes the calls of each registered method from a queue of its own, in turn: under load
the busiest method (exporters' ReportStatus) waited up to 20 s while client calls waited 1 s
(tests/bench/bench_load.py). With only the generic handler every call waits in one queue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from controllerd.arrival_order import ArrivalOrder
from jumpstarter.rpcinput import guarded
from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc


class Reporting(jumpstarter_pb2_grpc.ControllerServiceServicer):
    async def ReportStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return jumpstarter_pb2.ReportStatusResponse()


async def serve_and_call(register: Any) -> list[str]:
    """A real grpc.aio server; `register(registry)` adds services; one ReportStatus is called.

    Returns the services the server was given as registered methods."""
    server = grpc.aio.server()
    registered: list[str] = []
    real = server.add_registered_method_handlers

    def spy(service: str, handlers: Any) -> None:
        registered.append(service)
        real(service, handlers)

    server.add_registered_method_handlers = spy  # type: ignore[method-assign]
    register(ArrivalOrder(guarded(server)))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = jumpstarter_pb2_grpc.ControllerServiceStub(channel)
            await stub.ReportStatus(jumpstarter_pb2.ReportStatusRequest(), timeout=30)
    finally:
        await server.stop(None)
    return registered


def test_a_generated_service_is_served_by_its_generic_handler_only():
    registered = asyncio.run(
        serve_and_call(lambda r: jumpstarter_pb2_grpc.add_ControllerServiceServicer_to_server(Reporting(), r))
    )
    assert registered == []


def test_a_service_registered_only_as_methods_still_reaches_the_server():
    def register(registry: Any) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            Reporting().ReportStatus,
            request_deserializer=jumpstarter_pb2.ReportStatusRequest.FromString,
            response_serializer=jumpstarter_pb2.ReportStatusResponse.SerializeToString,
        )
        registry.add_registered_method_handlers("jumpstarter.v1.ControllerService", {"ReportStatus": handler})

    assert asyncio.run(serve_and_call(register)) == ["jumpstarter.v1.ControllerService"]
