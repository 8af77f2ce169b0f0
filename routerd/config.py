"""routerd configuration (`/etc/jumpstarter/routerd.yaml`); see etc/routerd.yaml for every key.

Errors name `file:line: key: problem`. Relative paths are relative to the config file.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from jumpstarter.config.yamlload import Located, Where, load_yaml
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
TOP_KEYS = {
    "listen",
    "advertise",
    "tls",
    "router_key_file",
    "lone_peer_timeout",
    "max_streams",
    "max_streams_per_lease",
    "max_waiting_per_lease",
    "metrics",
}
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


def load_config(path: str) -> RouterConfig:
    doc = load_yaml(path)
    if doc is None:
        doc = Located()
    where = Where(path, (), getattr(doc, "line", 1))
    if not isinstance(doc, dict):
        raise where.error("expected a mapping of routerd settings")
    unknown = sorted(set(map(str, doc)) - TOP_KEYS)
    if unknown:
        raise where.child(doc, unknown[0]).error(f"unknown key (accepted: {', '.join(sorted(TOP_KEYS))})")
    base = os.path.dirname(os.path.abspath(path))
    values: dict[str, Any] = {"source": path}

    if "listen" in doc:
        values["listen"] = _address(where.child(doc, "listen"), doc["listen"])
    if doc.get("advertise") is not None:
        values["advertise"] = _advertise(where.child(doc, "advertise"), doc["advertise"])
    if doc.get("tls") is not None:
        tw = where.child(doc, "tls")
        tls = doc["tls"]
        if not isinstance(tls, dict):
            raise tw.error("expected a mapping with 'cert' and 'key'")
        extra = sorted(set(map(str, tls)) - {"cert", "key", "ca", "ca_key"})
        if extra:
            raise tw.child(tls, extra[0]).error("unknown key (accepted: cert, key, ca, ca_key)")
        for name in ("cert", "key", "ca", "ca_key"):
            if name in tls:
                values[f"tls_{name}"] = _path(tw.child(tls, name), tls[name], base)
    if "router_key_file" in doc:
        values["router_key_file"] = _path(where.child(doc, "router_key_file"), doc["router_key_file"], base)
    if "lone_peer_timeout" in doc:
        values["lone_peer_timeout"] = _positive(
            where.child(doc, "lone_peer_timeout"), doc["lone_peer_timeout"], "seconds"
        )
    for key in ("max_streams", "max_streams_per_lease", "max_waiting_per_lease"):
        if key in doc:
            values[key] = _count(where.child(doc, key), doc[key])
    max_streams = values.get("max_streams", DEFAULT_MAX_STREAMS)
    per_lease = values.get(
        "max_streams_per_lease", min(DEFAULT_MAX_STREAMS_PER_LEASE, max(1, max_streams // 2))
    )
    values["max_streams_per_lease"] = per_lease
    values.setdefault("max_waiting_per_lease", min(DEFAULT_MAX_WAITING_PER_LEASE, per_lease))
    if max_streams > 1 and per_lease >= max_streams:
        raise where.child(doc, "max_streams_per_lease").error(
            f"must be below max_streams ({max_streams}) so that one lease cannot fill the router"
        )
    if values["max_waiting_per_lease"] > per_lease:
        raise where.child(doc, "max_waiting_per_lease").error(
            f"must not exceed max_streams_per_lease ({per_lease})"
        )
    if "metrics" in doc:
        values.update(_metrics(where.child(doc, "metrics"), doc["metrics"]))
    return RouterConfig(**values)


def _address(where: Where, value: Any) -> str:
    if not isinstance(value, str):
        raise where.error(f"expected HOST:PORT, got {value!r}")
    try:
        parse_address(value)
    except ValueError as exc:
        raise where.error(str(exc)) from None
    return value


def _advertise(where: Where, value: Any) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise where.error(f"expected the endpoint clients use, HOST or HOST:PORT, got {value!r}")
    if ":" in value and not value.endswith("]"):
        _address(where, value)
    return value


def _path(where: Where, value: Any, base: str) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(f"expected a file path, got {value!r}")
    return os.path.join(base, os.path.expanduser(value))


def _count(where: Where, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise where.error(f"expected a positive whole number, got {value!r}")
    return value


def _positive(where: Where, value: Any, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise where.error(f"expected a positive number of {unit}, got {value!r}")
    return float(value)


def _metrics(where: Where, value: Any) -> dict[str, Any]:
    """`metrics: HOST:PORT`, `metrics: null` (off), or `{listen: HOST:PORT, allow_remote: bool}`."""
    if value is None:
        return {"metrics": None}
    allow_remote = False
    if isinstance(value, dict):
        extra = sorted(set(map(str, value)) - {"listen", "allow_remote"})
        if extra:
            raise where.child(value, extra[0]).error("unknown key (accepted: listen, allow_remote)")
        remote = value.get("allow_remote", False)
        if not isinstance(remote, bool):
            raise where.child(value, "allow_remote").error(f"expected true or false, got {remote!r}")
        allow_remote = remote
        where, value = where.child(value, "listen"), value.get("listen", DEFAULT_METRICS)
    address = _address(where, value)
    if not allow_remote and not is_loopback(parse_address(address)[0]):
        raise where.error(
            f"{address} is not a loopback address; the metrics listener is plaintext and"
            " unauthenticated (use metrics: {listen: ..., allow_remote: true} to expose it anyway)"
        )
    return {"metrics": address, "metrics_allow_remote": allow_remote}
