"""controllerd configuration (`/etc/jumpstarter/controllerd.yaml`); errors name `file:line: key: problem`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from controllerd.dial_limits import DEFAULT_DIAL_BURST, DEFAULT_DIAL_RATE, DEFAULT_MAX_PENDING_DIALS
from controllerd.health_notify import NotifySettings, notify_settings
from jumpstarter.config.schema import (
    EMPTY,
    OMIT,
    Field,
    Section,
    boolean,
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
class HealthSettings:
    """When controllerd runs the boards' health checks (issue 12); 0 turns a trigger off."""

    interval: float = 0.0  # seconds between scheduled checks of each board
    every_leases: int = 0  # check a board after this many leases of it
    after_offline: bool = True  # check a board when it comes back online
    acquire_wait: float = 600.0  # seconds a check waits for a busy board
    lease_duration: float = 3600.0  # the check's own lease (released when the check ends)
    notify: NotifySettings = field(default_factory=NotifySettings)  # told when a board changes state


@dataclass
class DashboardSettings:
    """The read-only web dashboard (controllerd/dashboard): HTTPS with the controller's own TLS pair."""

    listen: str
    anonymous: bool = False  # True: anyone who reaches the port sees the lab, no token asked
    session_hours: float = 12.0  # a login lasts this long at most (never past its token's expiry)
    max_sessions: int = 256
    max_connections: int = 64
    max_subscribers: int = 32  # live (server-sent events) pages at once


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
    router_key_file: str = ""  # default: STATE_DIR/keys/router.key, where routerd looks by default
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
    health_checks: HealthSettings = field(default_factory=HealthSettings)
    dashboard: DashboardSettings | None = None  # off unless configured
    # ServiceAccount tokens through TokenReview (controllerd/kube_identity.py): on with the Kubernetes store
    kubernetes_identities: bool = False
    kubernetes_identity_cache_seconds: float = 30.0  # a reviewed token's answer is reused this long at most


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


def _zero_or(check: Any) -> Any:
    """`check`, or 0 (off)."""
    return lambda value, where: 0 if value == 0 and not isinstance(value, bool) else check(value, where)


def _notify(value: Any, where: Where) -> NotifySettings:
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping with url, command and timeout, got {got(value)}")
    try:
        return notify_settings(value)
    except (TypeError, ValueError) as exc:
        raise where.error(str(exc)) from None


HEALTH_CHECKS = Section(
    Field("interval", _zero_or(number(unit="seconds")), default=0.0),
    Field("every_leases", _zero_or(number(whole=True)), default=0),
    Field("after_offline", boolean, default=True),
    Field("acquire_wait", number(unit="seconds"), default=600.0),
    Field("lease_duration", number(unit="seconds"), default=3600.0),
    Field("notify", _notify, default=OMIT),
    what="a mapping with interval, every_leases, after_offline, acquire_wait, lease_duration, notify",
)
DASHBOARD_DEFAULTS = DashboardSettings(listen="")
DASHBOARD = Section(
    Field("listen", _listen),
    Field("anonymous", boolean, default=False),
    Field(
        "session_hours",
        number(at_most=24 * 30.0, too_big="at most 720 hours (30 days)"),
        default=DASHBOARD_DEFAULTS.session_hours,
    ),
    *(
        Field(key, number(whole=True, at_most=10_000), default=getattr(DASHBOARD_DEFAULTS, key))
        for key in ("max_sessions", "max_connections", "max_subscribers")
    ),
    what="a mapping with listen (HOST:PORT) and optional anonymous, session_hours, max_sessions,"
    " max_connections, max_subscribers",
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
    Field("router_key_file", path(), default=None),
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
    Field("health_checks", HEALTH_CHECKS, default=EMPTY, unset="null"),
    Field("dashboard", DASHBOARD, default=None, unset="null"),
    Field("kubernetes_identities", boolean, default=None, unset="null"),
    Field(
        "kubernetes_identity_cache_seconds",
        number(
            unit="seconds",
            at_most=30.0,
            too_big="at most 30 seconds (a deleted ServiceAccount's token must stop working soon)",
        ),
        default=DEFAULTS.kubernetes_identity_cache_seconds,
    ),
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
    settings["health_checks"] = HealthSettings(**settings["health_checks"])
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
    kubernetes = settings["store"].startswith("kubernetes://")
    if settings["kubernetes_identities"] and not kubernetes:
        raise values.at("kubernetes_identities").error(
            "ServiceAccount tokens (TokenReview) need the Kubernetes store (store: kubernetes://NAMESPACE)"
        )
    if settings["kubernetes_identities"] is None:  # default: on with the Kubernetes store
        settings["kubernetes_identities"] = kubernetes
    settings["signing_key"] = settings["signing_key"] or os.path.join(own, "signing-key.pem")
    settings["router_key_file"] = settings["router_key_file"] or os.path.join(state_dir, "keys", "router.key")
    if settings["dashboard"] is not None:
        settings["dashboard"] = DashboardSettings(**settings["dashboard"])
    return ControllerConfig(source=path, **settings)


load = load_controller_config  # controllerd.main and tests import the old name


def check(config: ControllerConfig) -> None:
    if not config.routers:
        raise ConfigError(f"{config.source}: routers: at least one router endpoint is needed for Dial")
