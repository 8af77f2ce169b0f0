"""Client configs (`~/.config/jumpstarter/clients/NAME.yaml`, upstream `ClientConfig` format).

    apiVersion: jumpstarter.dev/v1alpha1
    kind: ClientConfig
    metadata: {namespace: lab, name: alice}
    endpoint: controller.lab.example:8082
    token: <JWT>
    tls: {ca: <base64 PEM>, insecure: false}
    drivers: {allow: ["jumpstarter_driver_*", "jumpstarter.client.*"], unsafe: false}

Written with mode 0600 (they hold a token). `config.yaml` beside the
`clients/` folder names the current one (`config: {current-client: NAME}`).
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from jumpstarter.config.schema import (
    EMPTY,
    OMIT,
    Field,
    Section,
    anything,
    boolean,
    choice,
    list_of,
    load_document,
    stringified,
    text,
)
from jumpstarter.config.yamlload import load_yaml
from jumpstarter.errors import ConfigError

API_VERSION = "jumpstarter.dev/v1alpha1"
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DEFAULT_ALLOW = ["jumpstarter_driver_*", "jumpstarter.client.*"]


def config_home() -> str:
    base = os.environ.get("JMP_CLIENT_CONFIG_HOME") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "jumpstarter"
    )
    return base


@dataclass
class ClientConfig:
    namespace: str
    name: str
    endpoint: str
    token: str
    ca: str = ""  # base64 PEM
    insecure: bool = False
    allow: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOW))
    unsafe: bool = False
    alias: str = ""
    path: str = ""

    def ca_pem(self) -> bytes | None:
        return base64.b64decode(self.ca) if self.ca else None

    def to_document(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "ClientConfig",
            "metadata": {"namespace": self.namespace, "name": self.name},
            "endpoint": self.endpoint,
            "token": self.token,
            "tls": {"ca": self.ca, "insecure": self.insecure},
            "drivers": {"allow": self.allow, "unsafe": self.unsafe},
        }


def exporter_document(namespace: str, name: str, endpoint: str, token: str, ca: str) -> dict[str, Any]:
    """An upstream-format ExporterConfig for a new exporter (its `export:` is filled in by the lab)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ExporterConfig",
        "metadata": {"namespace": namespace, "name": name},
        "endpoint": endpoint,
        "token": token,
        "tls": {"ca": ca, "insecure": False},
        "export": {},
    }


def write_private(path: str, document: dict[str, Any]) -> None:
    """Write YAML atomically with mode 0600 (configs hold tokens)."""
    from jumpstarter.files import write_atomic

    write_atomic(path, yaml.safe_dump(document, sort_keys=False).encode(), 0o600)


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (to learn the endpoint and expiry a token is for)."""
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError) as exc:
        raise ConfigError(f"not a JWT token: {exc}") from None


METADATA = Section(
    Field("namespace", stringified, default="default", unset="falsy"),
    Field("name", stringified, default="", unset="falsy"),
    what="a mapping with namespace and name",
)
TLS = Section(
    Field("ca", stringified, default="", unset="falsy"),
    Field("insecure", boolean, default=False, unset="null"),
    what="a mapping with ca (base64 PEM) and insecure",
)
DRIVERS = Section(
    Field(
        "allow",
        list_of(text("a module pattern"), "a list of module patterns"),
        default=DEFAULT_ALLOW,
        unset="falsy",
    ),
    Field("unsafe", boolean, default=False, unset="null"),
    what="a mapping with allow and unsafe",
)
# Every key upstream's ClientConfigV1Alpha1 writes is accepted; the ones this client does not use are ignored.
CLIENT = Section(
    Field("kind", choice("ClientConfig"), missing="expected kind: ClientConfig"),
    Field("apiVersion", anything, default=OMIT),
    Field("metadata", METADATA, default=EMPTY, unset="falsy"),
    Field("endpoint", text(nonempty=True)),
    Field("token", text(nonempty=True)),
    Field("refresh_token", anything, default=OMIT),
    Field("tls", TLS, default=EMPTY, unset="falsy"),
    Field("grpcOptions", anything, default=OMIT),
    Field("drivers", DRIVERS, default=EMPTY, unset="falsy"),
    Field("shell", anything, default=OMIT),
    Field("leases", anything, default=OMIT),
    what="a ClientConfig mapping",
)


def load_client_config(path: str) -> ClientConfig:
    """Read and validate a client config; its alias is the file name without `.yaml`."""
    values = load_document(path, CLIENT)
    return ClientConfig(
        **values["metadata"],
        endpoint=values["endpoint"],
        token=values["token"],
        **values["tls"],
        **values["drivers"],
        alias=os.path.splitext(os.path.basename(path))[0],
        path=path,
    )


def client_path(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise ConfigError(f"invalid client name {alias!r}")
    return os.path.join(config_home(), "clients", f"{alias}.yaml")


def list_clients() -> list[str]:
    folder = os.path.join(config_home(), "clients")
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def current_client() -> str | None:
    path = os.path.join(config_home(), "config.yaml")
    if not os.path.exists(path):
        return None
    doc = load_yaml(path) or {}
    value = (doc.get("config") or {}).get("current-client") if isinstance(doc, dict) else None
    return str(value) if value else None


def use_client(alias: str | None) -> None:
    path = os.path.join(config_home(), "config.yaml")
    write_private(
        path, {"apiVersion": API_VERSION, "kind": "UserConfig", "config": {"current-client": alias}}
    )


def save_client(config: ClientConfig, alias: str, make_current: bool = True) -> str:
    path = client_path(alias)
    write_private(path, config.to_document())
    if make_current or current_client() is None:
        use_client(alias)
    return path


def find_client_config(explicit: str | None = None) -> ClientConfig | None:
    """The client config to use: an explicit alias or path, $JMP_CLIENT_CONFIG, or the current one."""
    choice = explicit or os.environ.get("JMP_CLIENT_CONFIG")
    if choice:
        path = choice if (os.sep in choice or choice.endswith(".yaml")) else client_path(choice)
        if not os.path.exists(path):
            raise ConfigError(f"no client config {choice!r} (have: {', '.join(list_clients()) or 'none'})")
        return load_client_config(path)
    alias = current_client()
    if alias and os.path.exists(client_path(alias)):
        return load_client_config(client_path(alias))
    return None
