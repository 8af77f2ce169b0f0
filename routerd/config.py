"""routerd configuration (`/etc/jumpstarter/routerd.yaml`); see etc/routerd.yaml for every key.

Errors name `file:line: key: problem`. Relative paths are relative to the config file.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from jumpstarter.config.schema import (
    OMIT,
    Field,
    Section,
    anything,
    boolean,
    got,
    load_document,
    number,
    path,
)
from jumpstarter.config.yamlload import Where
from jumpstarter.metrics import is_loopback, parse_address

DEFAULT_CONFIG = "/etc/jumpstarter/routerd.yaml"
DEFAULT_LISTEN = "0.0.0.0:8083"
DEFAULT_CERT = "/var/lib/jumpstarter/tls/router.crt"
DEFAULT_KEY = "/var/lib/jumpstarter/tls/router.key"
DEFAULT_ROUTER_KEY = "/var/lib/jumpstarter/keys/router.key"  # where controllerd keeps it
DEFAULT_LONE_PEER_TIMEOUT = 300.0
DEFAULT_MAX_STREAMS = 1000
# Per lease, so that one lease alone can never fill the router (each must stay below max_streams).
DEFAULT_MAX_STREAMS_PER_LEASE = 32
DEFAULT_MAX_WAITING_PER_LEASE = 16
DEFAULT_METRICS = "127.0.0.1:9103"
MAX_WORKERS = 64
WILDCARDS = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class RouterConfig:
    source: str
    listen: str = DEFAULT_LISTEN
    advertise: str | None = None
    tls_cert: str = DEFAULT_CERT
    tls_key: str = DEFAULT_KEY
    tls_ca: str = ""  # default: ca.crt next to tls_cert (the lab CA that signs a generated certificate)
    tls_ca_key: str = ""  # default: ca.key next to tls_cert
    router_key_file: str = DEFAULT_ROUTER_KEY
    lone_peer_timeout: float = DEFAULT_LONE_PEER_TIMEOUT
    max_streams: int = DEFAULT_MAX_STREAMS
    max_streams_per_lease: int = DEFAULT_MAX_STREAMS_PER_LEASE
    max_waiting_per_lease: int = DEFAULT_MAX_WAITING_PER_LEASE
    metrics: str | None = DEFAULT_METRICS
    metrics_allow_remote: bool = False
    workers: int = 1  # processes sharing `listen` (SO_REUSEPORT); see routerd/workers.py

    @property
    def advertise_host(self) -> str | None:
        if not self.advertise:
            return None
        return parse_address(self.advertise)[0] if ":" in self.advertise else self.advertise

    @property
    def lab_ca(self) -> tuple[str, str]:
        """(CA certificate, CA key) that sign a generated certificate."""
        here = os.path.dirname(self.tls_cert)
        return self.tls_ca or os.path.join(here, "ca.crt"), self.tls_ca_key or os.path.join(here, "ca.key")

    def hostnames(self) -> list[str]:
        """Names for a generated certificate: the advertised host, a specific listen host, this host."""
        names = [self.advertise_host or ""]
        listen_host = parse_address(self.listen)[0]
        if listen_host not in WILDCARDS:
            names.append(listen_host)
        names.append(socket.gethostname())
        return [n for n in names if n]


def _address(value: Any, where: Where) -> str:
    if not isinstance(value, str):
        raise where.error(f"expected HOST:PORT, got {got(value)}")
    try:
        parse_address(value)
    except ValueError as exc:
        raise where.error(str(exc)) from None
    return value


def _advertise(value: Any, where: Where) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise where.error(f"expected the endpoint clients use, HOST or HOST:PORT, got {got(value)}")
    if ":" in value and not value.endswith("]"):
        _address(value, where)
    return value


def _metrics(value: Any, where: Where) -> tuple[str | None, bool]:
    """`metrics: HOST:PORT`, `metrics: null` (off), or `{listen: HOST:PORT, allow_remote: bool}`."""
    if value is None:
        return None, False
    allow_remote = False
    if isinstance(value, dict):
        metrics = METRICS.read(value, where)
        allow_remote = metrics["allow_remote"]
        where, value = metrics.at("listen"), metrics["listen"]
    address = _address(value, where)
    if not allow_remote and not is_loopback(parse_address(address)[0]):
        raise where.error(
            f"{address} is not a loopback address; the metrics listener is plaintext and"
            " unauthenticated (use metrics: {listen: ..., allow_remote: true} to expose it anyway)"
        )
    return address, allow_remote


TLS = Section(
    *(Field(name, path(), attr=f"tls_{name}", default=OMIT) for name in ("cert", "key", "ca", "ca_key")),
    what="a mapping with 'cert' and 'key'",
)
METRICS = Section(
    Field("listen", anything, default=DEFAULT_METRICS), Field("allow_remote", boolean, default=False)
)
ROUTER = Section(
    Field("listen", _address, default=OMIT),
    Field("advertise", _advertise, default=OMIT, unset="null"),
    Field("tls", TLS, default=OMIT, unset="null"),
    Field("router_key_file", path(), default=OMIT),
    Field("lone_peer_timeout", number(unit="seconds"), default=OMIT),
    Field("max_streams", number(whole=True), default=OMIT),
    Field("max_streams_per_lease", number(whole=True), default=OMIT),
    Field("max_waiting_per_lease", number(whole=True), default=OMIT),
    Field("metrics", _metrics, default=OMIT),
    Field("workers", number(whole=True, at_most=MAX_WORKERS), default=OMIT),
    what="a mapping of routerd settings",
)


def load_router_config(path: str) -> RouterConfig:
    """Read and validate routerd.yaml (an empty file means every default)."""
    values = load_document(path, ROUTER, empty_ok=True)
    settings: dict[str, Any] = {"source": path, **values.pop("tls", {})}
    settings.update(values)
    if "metrics" in values:
        settings["metrics"], settings["metrics_allow_remote"] = values["metrics"]
    max_streams = settings.get("max_streams", DEFAULT_MAX_STREAMS)
    per_lease = settings.setdefault(
        "max_streams_per_lease", min(DEFAULT_MAX_STREAMS_PER_LEASE, max(1, max_streams // 2))
    )
    settings.setdefault("max_waiting_per_lease", min(DEFAULT_MAX_WAITING_PER_LEASE, per_lease))
    if max_streams > 1 and per_lease >= max_streams:
        raise values.at("max_streams_per_lease").error(
            f"must be below max_streams ({max_streams}) so that one lease cannot fill the router"
        )
    if settings["max_waiting_per_lease"] > per_lease:
        raise values.at("max_waiting_per_lease").error(f"must not exceed max_streams_per_lease ({per_lease})")
    return RouterConfig(**settings)


load_config = load_router_config  # routerd.main and tests import the old name
