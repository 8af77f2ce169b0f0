"""A frozen exporter (it accepts the connection but never answers) must not stall a client forever.

RemoteSession waits for LEASE_READY by polling GetStatus; each poll is bounded by STATUS_TIMEOUT,
so the ready wait ends at its own deadline. Real gRPC on a unix socket; the server's GetStatus
handler blocks until the test ends, as a SIGSTOPped exporter would.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
import pytest

from jumpstarter.client.connection import Connection
from jumpstarter.errors import DriverTimeout
from jumpstarter.v1 import jumpstarter_pb2


def test_get_status_of_a_frozen_exporter_times_out(tmp_path):
    release = threading.Event()

    def frozen(request: Any, context: grpc.ServicerContext) -> jumpstarter_pb2.GetStatusResponse:
        release.wait(60)
        return jumpstarter_pb2.GetStatusResponse()

    handler = grpc.unary_unary_rpc_method_handler(
        frozen,
        request_deserializer=jumpstarter_pb2.GetStatusRequest.FromString,
        response_serializer=jumpstarter_pb2.GetStatusResponse.SerializeToString,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("jumpstarter.v1.ExporterService", {"GetStatus": handler}),)
    )
    path = str(tmp_path / "frozen.sock")
    server.add_insecure_port(f"unix:{path}")
    server.start()
    connection = Connection(path)
    try:
        with pytest.raises(DriverTimeout):
            connection.status(timeout=0.5)
    finally:
        release.set()
        connection.channel.close()
        server.stop(None)
