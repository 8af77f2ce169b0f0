"""Prometheus metrics of the controller (scraped from a loopback HTTP port by default)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from controllerd.records import Lease
from jumpstarter.metrics import MetricsServer, new_registry, start_http


class ControllerMetrics:
    def __init__(self, store: Any, scheduler: Any) -> None:
        self.registry = new_registry()
        self.leases = Counter("jumpstarter_leases_total", "Lease events", ["event"], registry=self.registry)
        self.wait = Histogram(
            "jumpstarter_lease_wait_seconds",
            "Time from request to grant",
            registry=self.registry,
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
        )
        self.pending = Gauge(
            "jumpstarter_leases_pending", "Leases waiting for an exporter", registry=self.registry
        )
        self.active = Gauge("jumpstarter_leases_active", "Leases holding an exporter", registry=self.registry)
        self.online = Gauge("jumpstarter_exporters_online", "Exporters online", registry=self.registry)
        self.registry.register(_PassCounter(scheduler))
        self.pending.set_function(lambda: scheduler.stats["pending"])
        self.active.set_function(lambda: scheduler.stats["active"])
        self.online.set_function(lambda: scheduler.stats["online"])
        scheduler.on_event = self.event

    def event(self, kind: str, lease: Lease) -> None:
        self.leases.labels(kind).inc()
        if kind == "granted" and lease.effective_begin is not None:
            self.wait.observe(max(0.0, lease.effective_begin - lease.created))

    def serve(self, address: str) -> MetricsServer:
        return start_http(self.registry, address)


class _PassCounter:
    """`jumpstarter_scheduler_passes_total`: the scheduler counts its passes, this exposes the count."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "jumpstarter_scheduler_passes",
            "Scheduler passes since start",
            value=self.scheduler.stats["passes"],
        )
