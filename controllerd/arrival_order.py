"""Serve every call in arrival order: generated services go through their generic handler only.

grpc.aio takes the calls of each *registered* method (what generated `add_*_to_server` functions
also register) from a queue of its own, in turn. Under load the busiest method then waits longest:
with 500 exporters and 200 clients, exporters' ReportStatus (heartbeats and lease transitions)
waited up to 20 s, and longer the longer the load lasted, while client calls waited 1 s
(tests/bench/bench_load.py). A generic handler takes every call from one queue, first come first
served, so a saturated controller delays every caller alike instead of starving exporters.
"""

from __future__ import annotations

from typing import Any

import grpc


class ArrivalOrder:
    """Stands in for a server (or a `guarded` registry) while services are registered."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.generic: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.update(h.service_name() for h in handlers if isinstance(h, grpc.ServiceRpcHandler))
        self.registry.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        if service not in self.generic:  # only a generic handler keeps calls in one queue
            self.registry.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.registry, name)
