"""controllerd configuration (`/etc/jumpstarter/controllerd.yaml`); errors name `file:line: key: problem`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from controllerd.dial_limits import DEFAULT_DIAL_BURST, DEFAULT_DIAL_RATE, DEFAULT_MAX_PENDING_DIALS
from jumpstarter.config.yamlload import Located, Where, load_yaml
from jumpstarter.errors import ConfigError

DEFAULT_CONFIG = "/etc/jumpstarter/controllerd.yaml"
TOP_KEYS = {
    "listen",
    "endpoint",
    "audiences",
    "tls",
    "state_dir",
    "store",
    "signing_key",
    "router_key_file",
    "routers",
    "offline_after",
    "admin_socket",
    "metrics",
    "token_ttl_days",
    "dial_ready_wait",
    "max_lease_duration",
    "max_pending_leases",
    "dial_rate",
    "dial_burst",
    "max_pending_dials",
    "audit_retention_days",
    "audit_max_records",
}
MAX_LEASE_DURATION_LIMIT = 3650 * 86400.0  # ten years: times stay representable in every message


@dataclass
class ControllerConfig:
    source: str
    listen: str = "0.0.0.0:8082"
    endpoint: str = ""
    audiences: list[str] = field(default_factory=list)
    state_dir: str = "/var/lib/jumpstarter"
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # the CA written into issued configs; the lab CA when certificates are generated
    tls_ca_key: str = ""  # the lab CA's key: signs generated certificates
    store: str = ""
    signing_key: str = ""
    router_key_file: str = "/etc/jumpstarter/router.key"
    routers: list[str] = field(default_factory=list)
    offline_after: float = 30.0  # seconds of silence before an exporter is offline
    admin_socket: str = "/run/jumpstarter-controllerd/admin.sock"
    metrics: str | None = "127.0.0.1:9102"
    token_ttl_days: float = 365.0
    dial_ready_wait: float = 30.0
    max_lease_duration: float = 7 * 86400.0  # seconds; policies may set shorter ones
    max_pending_leases: int = 20
    dial_rate: float = DEFAULT_DIAL_RATE
    dial_burst: int = DEFAULT_DIAL_BURST
    max_pending_dials: int = DEFAULT_MAX_PENDING_DIALS
    audit_retention_days: float = 90.0
    audit_max_records: int = 1_000_000  # bounds the table even if something floods it


def load(path: str) -> ControllerConfig:
    doc = load_yaml(path) if os.path.exists(path) or path != DEFAULT_CONFIG else Located()
    doc = doc if doc is not None else Located()
    where = Where(path, (), getattr(doc, "line", 1))
    if not isinstance(doc, dict):
        raise where.error("expected a mapping")
    for key in doc:
        if key not in TOP_KEYS:
            raise where.child(doc, str(key)).error(f"unknown key (accepted: {', '.join(sorted(TOP_KEYS))})")
    base = os.path.dirname(os.path.abspath(path))

    def rel(value: str) -> str:
        return value if os.path.isabs(value) else os.path.join(base, value)

    def text(key: str, default: str) -> str:
        value = doc.get(key, default)
        if not isinstance(value, str):
            raise where.child(doc, key).error("expected text")
        return value

    def number(key: str, default: float) -> float:
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise where.child(doc, key).error("expected a positive number")
        return float(value)

    config = ControllerConfig(source=path)
    config.listen = text("listen", config.listen)
    config.state_dir = rel(text("state_dir", config.state_dir))
    host, _, port = config.listen.rpartition(":")
    if not port.isdigit():
        raise where.child(doc, "listen").error(f"expected HOST:PORT, got {config.listen!r}")
    config.endpoint = text("endpoint", "")
    if not config.endpoint:
        import socket

        config.endpoint = f"{socket.getfqdn() if host in ('', '0.0.0.0', '::') else host}:{port}"
    audiences = doc.get("audiences", [])
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise where.child(doc, "audiences").error("expected a list of endpoints")
    config.audiences = audiences
    tls = doc.get("tls") or {}
    if not isinstance(tls, dict) or set(tls) - {"cert", "key", "ca", "ca_key"}:
        raise where.child(doc, "tls").error("expected {cert: FILE, key: FILE, ca: FILE, ca_key: FILE}")
    config.tls_cert = rel(str(tls.get("cert") or os.path.join(config.state_dir, "controllerd", "tls.crt")))
    config.tls_key = rel(str(tls.get("key") or os.path.join(config.state_dir, "controllerd", "tls.key")))
    tls_dir = os.path.dirname(config.tls_cert)  # the lab CA lives next to the certificate by default
    config.tls_ca = rel(str(tls.get("ca") or os.path.join(tls_dir, "ca.crt")))
    config.tls_ca_key = rel(str(tls.get("ca_key") or os.path.join(tls_dir, "ca.key")))
    config.store = text("store", f"sqlite://{os.path.join(config.state_dir, 'controller.db')}")
    if not config.store.startswith("sqlite://"):
        raise where.child(doc, "store").error(
            "expected sqlite:///PATH (the Kubernetes store is not available yet)"
        )
    config.signing_key = rel(
        text("signing_key", os.path.join(config.state_dir, "controllerd", "signing-key.pem"))
    )
    config.router_key_file = rel(text("router_key_file", config.router_key_file))
    routers = doc.get("routers", [])
    if not isinstance(routers, list) or not all(isinstance(r, str) and ":" in r for r in routers):
        raise where.child(doc, "routers").error("expected a list of HOST:PORT router endpoints")
    config.routers = routers
    config.offline_after = number("offline_after", config.offline_after)
    config.dial_ready_wait = number("dial_ready_wait", config.dial_ready_wait)
    config.token_ttl_days = number("token_ttl_days", config.token_ttl_days)
    config.max_lease_duration = number("max_lease_duration", config.max_lease_duration)
    if config.max_lease_duration > MAX_LEASE_DURATION_LIMIT:
        raise where.child(doc, "max_lease_duration").error(
            f"at most {int(MAX_LEASE_DURATION_LIMIT)} seconds (ten years)"
        )
    config.dial_rate = number("dial_rate", config.dial_rate)
    config.audit_retention_days = number("audit_retention_days", config.audit_retention_days)
    for key in ("max_pending_leases", "dial_burst", "max_pending_dials", "audit_max_records"):
        value = doc.get(key, getattr(config, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise where.child(doc, key).error("expected a positive whole number")
        setattr(config, key, value)
    config.admin_socket = rel(text("admin_socket", config.admin_socket))
    metrics = doc.get("metrics", config.metrics)
    if metrics is not None and not isinstance(metrics, str):
        raise where.child(doc, "metrics").error("expected HOST:PORT or null")
    config.metrics = metrics
    return config


def check(config: ControllerConfig) -> None:
    if not config.routers:
        raise ConfigError(f"{config.source}: routers: at least one router endpoint is needed for Dial")
