"""Exporter configs: the upstream `ExporterConfig` file, or one board of an inventory.

Both become a `BoardConfig`, which validates the whole driver tree at load
(`file:line: key: problem`) and builds fresh driver instances per session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from jumpstarter.config.yamlload import Located, Where, load_yaml
from jumpstarter.driver.base import Driver
from jumpstarter.errors import ConfigError

API_VERSION = "jumpstarter.dev/v1alpha1"
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
CHILD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
SUBST_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\}")
NODE_KEYS = {"type", "description", "methods_description", "config", "children", "ref", "labels"}
HOOK_KEYS = {"script", "exec", "timeout", "onFailure"}
ON_FAILURE = ("warn", "endLease", "exit")


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
    devices: dict[str, dict[str, str]] = field(default_factory=dict)

    def build(self) -> Driver:
        """A fresh driver tree (new instances, new uuids) rooted at a Composite."""
        return build_root(self.export, self.where, self.description, self.devices)


def _expect(where: Where, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        raise where.error(f"expected {what}, got {type(value).__name__}")
    return value


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


def _build_node(
    node: Any, where: Where, devices: dict[str, dict[str, str]], refs: list[tuple[Any, str, Where]]
) -> Driver:
    from jumpstarter.drivers.registry import driver_class

    node = _expect(where, node, dict, "a driver (a mapping with 'type', 'children' or 'ref')")
    unknown = sorted(set(node) - NODE_KEYS)
    if unknown:
        raise where.child(node, unknown[0]).error(f"unknown key (accepted: {', '.join(sorted(NODE_KEYS))})")
    if "ref" in node:
        if set(node) - {"ref", "description"}:
            raise where.error("a 'ref' node takes no other keys than 'description'")
        ref = _expect(where.child(node, "ref"), node["ref"], str, "a dotted driver path")
        placeholder = _Placeholder()
        refs.append((placeholder, ref, where.child(node, "ref")))
        return placeholder
    children: dict[str, Driver] = {}
    raw_children = node.get("children") or {}
    child_where = where.child(node, "children")
    _expect(child_where, raw_children, dict, "a mapping of names to drivers")
    for name, child in raw_children.items():
        here = child_where.child(raw_children, str(name))
        if not isinstance(name, str) or not CHILD_RE.match(name):
            raise here.error("driver names start with a letter and use letters, digits, '_' or '-'")
        children[name] = _build_node(child, here, devices, refs)
    base: dict[str, Any] = {"children": children}
    for key in ("description",):
        if key in node:
            base[key] = _expect(where.child(node, key), node[key], str, "text")
    if "methods_description" in node:
        md = _expect(where.child(node, "methods_description"), node["methods_description"], dict, "a mapping")
        base["methods_description"] = {str(k): str(v) for k, v in md.items()}
    if "labels" in node:
        lb = _expect(where.child(node, "labels"), node["labels"], dict, "a mapping")
        base["labels"] = {str(k): str(v) for k, v in lb.items()}
    type_where = where.child(node, "type")
    type_name = node.get("type", "composite")
    _expect(type_where, type_name, str, "a driver type name")
    try:
        cls = driver_class(type_name)
    except ConfigError as exc:
        raise type_where.error(str(exc)) from None
    config_where = where.child(node, "config")
    config = _expect(config_where, node.get("config") or {}, dict, "a mapping of settings")
    config = _substitute(config, devices, config_where)
    accepted, required = cls.config_keys()
    accepted -= {"children", "description", "methods_description", "labels"}
    if "log_level" in config:  # accepted by every driver, as upstream
        level = config.pop("log_level")
        if str(level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise config_where.child(config, "log_level").error(
                "expected DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        base["log_level"] = str(level).upper()
    for key in config:
        if key not in accepted:
            raise config_where.child(config, str(key)).error(
                f"unknown setting for {type_name} (accepted: {', '.join(sorted(accepted)) or 'none'})"
            )
    for key in sorted(required - set(config) - {"children"}):
        raise config_where.error(f"{type_name} needs the setting {key!r}")
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

    export = _expect(where, export, dict, "a mapping of names to drivers")
    refs: list[tuple[Any, str, Where]] = []
    children: dict[str, Driver] = {}
    for name, node in export.items():
        here = where.child(export, str(name))
        if not isinstance(name, str) or not CHILD_RE.match(name):
            raise here.error("driver names start with a letter and use letters, digits, '_' or '-'")
        children[name] = _build_node(node, here, devices, refs)
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


def _hooks(doc: Located, where: Where) -> dict[str, HookConfig]:
    hooks: dict[str, HookConfig] = {}
    raw = doc.get("hooks") or {}
    hw = where.child(doc, "hooks")
    _expect(hw, raw, dict, "a mapping with beforeLease/afterLease")
    for key, value in raw.items():
        here = hw.child(raw, str(key))
        if key not in ("beforeLease", "afterLease"):
            raise here.error("unknown hook (beforeLease or afterLease)")
        _expect(here, value, dict, "a mapping with 'script'")
        unknown = sorted(set(value) - HOOK_KEYS)
        if unknown:
            raise here.child(value, unknown[0]).error(
                f"unknown key (accepted: {', '.join(sorted(HOOK_KEYS))})"
            )
        script = _expect(here.child(value, "script"), value.get("script"), str, "a script")
        timeout = value.get("timeout", 120)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise here.child(value, "timeout").error("expected a positive number of seconds")
        on_failure = value.get("onFailure", "warn")
        if on_failure not in ON_FAILURE:
            raise here.child(value, "onFailure").error(f"expected one of {', '.join(ON_FAILURE)}")
        hooks[key] = HookConfig(
            script=script, exec=value.get("exec"), timeout=float(timeout), on_failure=on_failure
        )
    return hooks


def _labels(doc: Located, where: Where) -> dict[str, str]:
    raw = doc.get("labels") or {}
    _expect(where.child(doc, "labels"), raw, dict, "a mapping of label names to values")
    return {str(k): str(v) for k, v in raw.items()}


def load_exporter_config(path: str) -> BoardConfig:
    """Load an upstream-style `ExporterConfig` file and validate its driver tree."""
    doc = load_yaml(path)
    where = Where(path, (), getattr(doc, "line", 1))
    _expect(where, doc, dict, "a mapping (an ExporterConfig document)")
    if doc.get("kind", "ExporterConfig") != "ExporterConfig":
        raise where.child(doc, "kind").error(f"expected ExporterConfig, got {doc.get('kind')!r}")
    if doc.get("apiVersion", API_VERSION) != API_VERSION:
        raise where.child(doc, "apiVersion").error(f"expected {API_VERSION}")
    known = {
        "apiVersion",
        "kind",
        "metadata",
        "endpoint",
        "token",
        "tls",
        "grpcOptions",
        "description",
        "motd",
        "export",
        "hooks",
        "failureDetection",
        "exitOnLeaseEnd",
        "labels",
    }
    unknown = sorted(set(doc) - known)
    if unknown:
        raise where.child(doc, unknown[0]).error("unknown key")
    metadata = doc.get("metadata") or Located()
    _expect(where.child(doc, "metadata"), metadata, dict, "a mapping with name/namespace")
    name = str(metadata.get("name") or _stem(path))
    if not NAME_RE.match(name):
        raise where.child(doc, "metadata").error(f"invalid name {name!r}")
    if "export" not in doc:
        raise where.error("missing 'export' (the driver tree)")
    tls = doc.get("tls") or {}
    config = BoardConfig(
        name=name,
        source=path,
        export=doc["export"],
        where=where.child(doc, "export"),
        namespace=str(metadata.get("namespace") or "default"),
        labels=_labels(doc, where),
        description=doc.get("description"),
        motd=str(doc.get("motd") or ""),
        endpoint=doc.get("endpoint"),
        token=doc.get("token"),
        tls_ca=str(tls.get("ca") or ""),
        tls_insecure=bool(tls.get("insecure", False)),
        hooks=_hooks(doc, where),
    )
    config.build()  # validate now: a bad tree fails at load, not at the first lease
    return config


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
