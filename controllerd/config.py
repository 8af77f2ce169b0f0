"""controllerd configuration (`/etc/jumpstarter/controllerd.yaml`); errors name `file:line: key: problem`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from controllerd.dial_limits import DEFAULT_DIAL_BURST, DEFAULT_DIAL_RATE, DEFAULT_MAX_PENDING_DIALS
from jumpstarter.config.schema import (
    EMPTY,
    Field,
    Section,
    got,
    list_of,
    load_document,
    number,
    path,
    text,
)
from jumpstarter.config.yamlload import Located, Where
from jumpstarter.errors import ConfigError

DEFAULT_CONFIG = "/etc/jumpstarter/controllerd.yaml"
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


def _listen(value: Any, where: Where) -> str:
    if not isinstance(value, str):
        raise where.error(f"expected text, got {got(value)}")
    if not value.rpartition(":")[2].isdigit():
        raise where.error(f"expected HOST:PORT, got {value!r}")
    return value


def _store(value: Any, where: Where) -> str:
    if not isinstance(value, str):
        raise where.error(f"expected text, got {got(value)}")
    if value.startswith(
        "kubernetes://"
    ):  # upstream's CRDs in one namespace (controllerd/store/kubernetes.py)
        from controllerd.store import kubernetes_url

        try:
            kubernetes_url(value)
        except ConfigError as exc:
            raise where.error(str(exc)) from None
        return value
    if not value.startswith("sqlite://"):
        raise where.error("expected sqlite:///PATH or kubernetes://NAMESPACE?kubeconfig=PATH&context=NAME")
    return value


def _router(value: Any, where: Where) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise where.error(f"expected a HOST:PORT router endpoint, got {got(value)}")
    return value


def _metrics(value: Any, where: Where) -> str | None:
    if value is not None and not isinstance(value, str):
        raise where.error(f"expected HOST:PORT or null, got {got(value)}")
    return value


DEFAULTS = ControllerConfig(source="")
TLS = Section(
    *(
        Field(name, path(), attr=f"tls_{name}", default=None, unset="falsy")
        for name in ("cert", "key", "ca", "ca_key")
    ),
    what="a mapping with cert, key, ca and ca_key",
)
POSITIVE = ("offline_after", "dial_ready_wait", "token_ttl_days", "dial_rate", "audit_retention_days")
WHOLE = ("max_pending_leases", "dial_burst", "max_pending_dials", "audit_max_records")
CONTROLLER = Section(
    Field("listen", _listen, default=DEFAULTS.listen),
    Field("endpoint", text(), default=""),
    Field("audiences", list_of(text("an endpoint"), "a list of endpoints"), default=[]),
    Field("tls", TLS, default=EMPTY, unset="falsy"),
    Field("state_dir", path("a directory"), default=DEFAULTS.state_dir),
    Field("store", _store, default=None),
    Field("signing_key", path(), default=None),
    Field("router_key_file", path(), default=DEFAULTS.router_key_file),
    Field("routers", list_of(_router, "a list of HOST:PORT router endpoints"), default=[]),
    *(Field(key, number(), default=getattr(DEFAULTS, key)) for key in POSITIVE),
    Field(
        "max_lease_duration",
        number(
            at_most=MAX_LEASE_DURATION_LIMIT,
            too_big=f"at most {int(MAX_LEASE_DURATION_LIMIT)} seconds (ten years)",
        ),
        default=DEFAULTS.max_lease_duration,
    ),
    *(Field(key, number(whole=True), default=getattr(DEFAULTS, key)) for key in WHOLE),
    Field("admin_socket", path("a socket path"), default=DEFAULTS.admin_socket),
    Field("metrics", _metrics, default=DEFAULTS.metrics),
    what="a mapping of controllerd settings",
)


def load_controller_config(path: str) -> ControllerConfig:
    """Read and validate controllerd.yaml; the default path may be absent (every default then)."""
    if path == DEFAULT_CONFIG and not os.path.exists(path):
        values = CONTROLLER.read(Located(), Where(path, (), 1))
    else:
        values = load_document(path, CONTROLLER, empty_ok=True)
    settings: dict[str, Any] = dict(values)
    tls = settings.pop("tls")
    state_dir = settings["state_dir"]
    if not settings["endpoint"]:
        import socket

        host, _, port = settings["listen"].rpartition(":")
        settings["endpoint"] = f"{socket.getfqdn() if host in ('', '0.0.0.0', '::') else host}:{port}"
    own = os.path.join(state_dir, "controllerd")
    cert = tls["tls_cert"] or os.path.join(own, "tls.crt")
    tls_dir = os.path.dirname(cert)  # the lab CA lives next to the certificate by default
    settings["tls_cert"] = cert
    settings["tls_key"] = tls["tls_key"] or os.path.join(own, "tls.key")
    settings["tls_ca"] = tls["tls_ca"] or os.path.join(tls_dir, "ca.crt")
    settings["tls_ca_key"] = tls["tls_ca_key"] or os.path.join(tls_dir, "ca.key")
    settings["store"] = settings["store"] or f"sqlite://{os.path.join(state_dir, 'controller.db')}"
    settings["signing_key"] = settings["signing_key"] or os.path.join(own, "signing-key.pem")
    return ControllerConfig(source=path, **settings)


load = load_controller_config  # controllerd.main and tests import the old name


def check(config: ControllerConfig) -> None:
    if not config.routers:
        raise ConfigError(f"{config.source}: routers: at least one router endpoint is needed for Dial")
