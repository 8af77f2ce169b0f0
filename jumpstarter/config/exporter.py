"""Exporter configs: the upstream `ExporterConfig` file, or one board of an inventory.

Both become a `BoardConfig`, which validates the whole driver tree at load
(`file:line: key: problem`) and builds fresh driver instances per session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from jumpstarter.config.schema import (
    EMPTY,
    OMIT,
    Field,
    Section,
    anything,
    boolean,
    choice,
    load_document,
    mapping,
    number,
    pattern,
    stringified,
    text,
    text_mapping,
)
from jumpstarter.config.yamlload import Located, Where, load_yaml
from jumpstarter.driver.base import Driver
from jumpstarter.errors import ConfigError

API_VERSION = "jumpstarter.dev/v1alpha1"
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
CHILD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
SUBST_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\}")
ON_FAILURE = ("warn", "endLease", "exit")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class HookConfig:
    script: str
    exec: str | None = None
    timeout: float = 120.0
    on_failure: str = "warn"


@dataclass
class BoardConfig:
    """Everything exporterd needs to serve one board."""

    name: str
    source: str
    export: Located
    where: Where
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    motd: str = ""
    endpoint: str | None = None
    token: str | None = None
    tls_ca: str = ""
    tls_insecure: bool = False
    hooks: dict[str, HookConfig] = field(default_factory=dict)
    health: HookConfig | None = None  # the board's health check (issue 12), run like a hook
    devices: dict[str, dict[str, str]] = field(default_factory=dict)

    def build(self) -> Driver:
        """A fresh driver tree (new instances, new uuids) rooted at a Composite."""
        return build_root(self.export, self.where, self.description, self.devices)


def _substitute(value: Any, devices: dict[str, dict[str, str]], where: Where) -> Any:
    """Replace `${device.property}` with what the inventory's `match` found."""
    if isinstance(value, str):

        def one(found: re.Match[str]) -> str:
            device, prop = found.group(1), found.group(2)
            if device not in devices:
                raise where.error(f"unknown substitution ${{{device}.{prop}}}: no matched device {device!r}")
            props = devices[device]
            if prop not in props:
                raise where.error(
                    f"unknown substitution ${{{device}.{prop}}}: device {device!r} has no property {prop!r}"
                )
            return props[prop]

        return SUBST_RE.sub(one, value)
    if isinstance(value, dict):
        out = Located({k: _substitute(v, devices, where) for k, v in value.items()})
        out.line, out.key_lines = getattr(value, "line", 0), getattr(value, "key_lines", {})
        return out
    if isinstance(value, list):
        return [_substitute(v, devices, where) for v in value]
    return value


def _log_level(value: Any, where: Where) -> str:
    if str(value).upper() not in LOG_LEVELS:
        raise where.error("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return str(value).upper()


NODE = Section(
    Field("type", text("a driver type name"), default="composite"),
    Field("description", text("text"), default=OMIT),
    Field("methods_description", text_mapping(), default=OMIT),
    Field("labels", text_mapping(), default=OMIT),
    Field("config", mapping("a mapping of settings"), default={}, unset="falsy"),
    Field("children", mapping("a mapping of names to drivers"), default={}, unset="falsy"),
    Field("ref", text("a dotted driver path"), default=OMIT),
    what="a driver (a mapping with 'type', 'children' or 'ref')",
)
DRIVER_NAME = pattern(CHILD_RE, "driver names start with a letter and use letters, digits, '_' or '-'")


def _settings(type_name: str, accepted: set[str], required: set[str], checks: dict[str, Any]) -> Section:
    """A driver's `config:` section, declared by its constructor (`Driver.config_keys`) and `SETTINGS`."""
    return Section(
        *(
            Field(key, checks.get(key, anything), missing=f"{type_name} needs the setting {key!r}")
            for key in sorted(required)
        ),
        *(Field(key, checks.get(key, anything), default=OMIT) for key in sorted(accepted - required)),
        Field("log_level", _log_level, default=OMIT),  # accepted by every driver, as upstream
        what="a mapping of settings",
        unknown=f"unknown setting for {type_name}",
    )


def _children(
    raw: Any, where: Where, devices: dict[str, dict[str, str]], refs: list[Any]
) -> dict[str, Driver]:
    children: dict[str, Driver] = {}
    for name, child in raw.items():
        here = where.child(raw, str(name))
        children[DRIVER_NAME(name, here)] = _build_node(child, here, devices, refs)
    return children


def _build_node(
    node: Any, where: Where, devices: dict[str, dict[str, str]], refs: list[tuple[Any, str, Where]]
) -> Driver:
    from jumpstarter.drivers.registry import driver_class

    node = NODE.check_keys(node, where)
    if "ref" in node and set(node) - {"ref", "description"}:
        raise where.error("a 'ref' node takes no other keys than 'description'")
    values = NODE.read(node, where)
    if "ref" in values:
        placeholder = _Placeholder()
        refs.append((placeholder, values["ref"], values.at("ref")))
        return placeholder
    base: dict[str, Any] = {"children": _children(values["children"], values.at("children"), devices, refs)}
    base.update(
        {key: values[key] for key in ("description", "methods_description", "labels") if key in values}
    )
    type_name = values["type"]
    try:
        cls = driver_class(type_name)
    except ConfigError as exc:
        raise values.at("type").error(str(exc)) from None
    config_where = values.at("config")
    accepted, required = cls.config_keys()
    accepted -= {"children", "description", "methods_description", "labels"}
    settings = _settings(type_name, accepted, required - {"children"}, cls.SETTINGS)
    config = settings.read(_substitute(values["config"], devices, config_where), config_where)
    if "log_level" in config:
        base["log_level"] = config.pop("log_level")
    try:
        return cls(**config, **base)
    except ConfigError as exc:
        raise config_where.error(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise config_where.error(f"{type_name}: {exc}") from None


class _Placeholder(Driver):
    """Stands in for a `ref:` until the whole tree exists."""


def build_root(
    export: Any, where: Where, description: str | None, devices: dict[str, dict[str, str]]
) -> Driver:
    from jumpstarter.drivers.composite import Composite, Proxy

    export = mapping("a mapping of names to drivers")(export, where)
    refs: list[tuple[Any, str, Where]] = []
    children = _children(export, where, devices, refs)
    root: Driver = Composite(children=children, description=description)
    for placeholder, path, here in refs:
        target: Driver = root
        for part in path.split("."):
            if part not in target.children:
                raise here.error(
                    f"ref {path!r}: no driver {part!r} (has: {', '.join(target.children) or 'none'})"
                )
            target = target.children[part]
        if isinstance(target, _Placeholder):
            raise here.error(f"ref {path!r} points at another ref")
        proxy = Proxy(target, description=placeholder.description)
        for node, _, _ in root.enumerate():
            for name, child in list(node.children.items()):
                if child is placeholder:
                    node.children[name] = proxy
    return root


def _hook(value: Any, where: Where) -> HookConfig:
    return HookConfig(**HOOK.read(value, where))


HOOK = Section(
    Field("script", text("a script")),
    Field("exec", text("a command"), default=None, unset="null"),
    Field("timeout", number(unit="seconds"), default=120.0),
    Field("onFailure", choice(*ON_FAILURE), attr="on_failure", default="warn"),
    what="a mapping with 'script'",
)
HEALTH = Section(
    Field("command", text("a command or script"), attr="script"),
    Field("exec", text("a command"), default=None, unset="null"),
    Field("timeout", number(unit="seconds"), default=300.0),
    what="a mapping with 'command' (run against the board, like a hook) and 'timeout'",
)


def _health(value: Any, where: Where) -> HookConfig:
    return HookConfig(**HEALTH.read(value, where))


HOOKS = Section(
    Field("beforeLease", _hook, default=OMIT),
    Field("afterLease", _hook, default=OMIT),
    what="a mapping with beforeLease/afterLease",
    unknown="unknown hook",
)
TLS = Section(
    Field("ca", stringified, attr="tls_ca", default="", unset="falsy"),
    Field("insecure", boolean, attr="tls_insecure", default=False, unset="null"),
    what="a mapping with ca (base64 PEM) and insecure",
)
LABELS = text_mapping("a mapping of label names to values")
METADATA = Section(
    Field("name", stringified, default=None, unset="falsy"),
    Field("namespace", stringified, default="default", unset="falsy"),
    what="a mapping with name/namespace",
)
# The fields a board shares between an ExporterConfig file and an inventory entry.
BOARD_FIELDS = (
    Field("export", anything, missing="missing 'export' (the driver tree)"),
    Field("labels", LABELS, default={}, unset="falsy"),
    Field("description", text(), default=None, unset="null"),
    Field("motd", stringified, default="", unset="falsy"),
    Field("endpoint", text("HOST:PORT"), default=None, unset="null"),
    Field("hooks", HOOKS, default=EMPTY, unset="falsy"),
    Field("health", _health, default=None, unset="null"),
)
EXPORTER = Section(
    Field("kind", choice("ExporterConfig"), default="ExporterConfig"),
    Field("apiVersion", choice(API_VERSION), default=API_VERSION),
    Field("metadata", METADATA, default=EMPTY, unset="falsy"),
    *BOARD_FIELDS,
    Field("token", text(), default=None, unset="null"),
    Field("tls", TLS, default=EMPTY, unset="falsy"),
    *(Field(key, anything, default=OMIT) for key in ("grpcOptions", "failureDetection", "exitOnLeaseEnd")),
    what="a mapping (an ExporterConfig document)",
)


def board_config(name: str, path: str, values: dict[str, Any], where: Where, **extra: Any) -> BoardConfig:
    """A BoardConfig from a board's checked values (`BOARD_FIELDS`), its driver tree validated now."""
    config = BoardConfig(
        name=name,
        source=path,
        export=values["export"],
        where=where,
        labels=values["labels"],
        description=values["description"],
        motd=values["motd"],
        hooks=dict(values["hooks"]),
        health=values["health"],
        **extra,
    )
    config.build()  # validate now: a bad tree fails at load, not at the first lease
    return config


def load_exporter_config(path: str) -> BoardConfig:
    """Load an upstream-style `ExporterConfig` file and validate its driver tree."""
    values = load_document(path, EXPORTER)
    metadata = values["metadata"]
    name = metadata["name"] or _stem(path)
    if not NAME_RE.match(name):
        raise values.at("metadata").error(f"invalid name {name!r}")
    return board_config(
        name,
        path,
        values,
        values.at("export"),
        namespace=metadata["namespace"],
        endpoint=values["endpoint"],
        token=values["token"],
        **values["tls"],
    )


def _stem(path: str) -> str:
    import os

    return os.path.splitext(os.path.basename(path))[0]


def load_config(path: str, board: str | None = None) -> BoardConfig:
    """An exporter config, or (with `board`, or a file with `boards:`) one board of an inventory."""
    if board is not None:
        from jumpstarter.config.inventory import load_board

        return load_board(path, board)
    doc = load_yaml(path)
    if isinstance(doc, dict) and "boards" in doc:
        from jumpstarter.config.inventory import load_inventory

        inventory = load_inventory(path)
        if len(inventory.boards) != 1:
            names = ", ".join(b.name for b in inventory.boards)
            raise ConfigError(f"{path}: an inventory with several boards: pick one with --board ({names})")
        return inventory.boards[0]
    return load_exporter_config(path)
