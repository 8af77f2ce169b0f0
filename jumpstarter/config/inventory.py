"""The lab host inventory: every board of this host in one YAML file (DESIGN.md §4).

controller: {endpoint: ctl.lab:443, namespace: lab, token_dir: /etc/jumpstarter/tokens}
socket_dir: /run/jumpstarter/boards
boards:
  - name: rpi4-01
    labels: {board: rpi4}
    match:
      serial: {ID_SERIAL_SHORT: A10KJ3XY, SUBSYSTEM: tty}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from jumpstarter.config.exporter import (
    NAME_RE,
    BoardConfig,
    _expect,
    _hooks,
    _labels,
)
from jumpstarter.config.yamlload import Located, Where, load_yaml
from jumpstarter.errors import ConfigError

DEFAULT_SOCKET_DIR = "/run/jumpstarter/boards"
BOARD_KEYS = {"name", "labels", "description", "motd", "match", "export", "hooks", "endpoint", "token_file"}
TOP_KEYS = {"controller", "socket_dir", "boards"}


class _AnyProperty(dict):  # type: ignore[type-arg]
    """Stands in for a device that is not resolved yet, so a tree can be validated."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return f"/dev/unresolved-{self.device}-{key}"


@dataclass
class Inventory:
    path: str
    socket_dir: str
    boards: list[BoardConfig] = field(default_factory=list)
    matches: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    def board(self, name: str) -> BoardConfig:
        for board in self.boards:
            if board.name == name:
                return board
        names = ", ".join(b.name for b in self.boards) or "none"
        raise ConfigError(f"{self.path}: no board {name!r} (boards: {names})")


def load_inventory(path: str) -> Inventory:
    doc = load_yaml(path)
    where = Where(path, (), getattr(doc, "line", 1))
    _expect(where, doc, dict, "a mapping with 'boards'")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise where.child(doc, unknown[0]).error(f"unknown key (accepted: {', '.join(sorted(TOP_KEYS))})")
    controller = doc.get("controller") or {}
    _expect(where.child(doc, "controller"), controller, dict, "a mapping")
    inventory = Inventory(path=path, socket_dir=str(doc.get("socket_dir") or DEFAULT_SOCKET_DIR))
    boards = doc.get("boards")
    bw = where.child(doc, "boards")
    _expect(bw, boards, list, "a list of boards")
    seen: dict[str, int] = {}
    for index, raw in enumerate(boards):
        here = Where(path, ("boards", str(index)), getattr(raw, "line", bw.line))
        _expect(here, raw, dict, "a board (a mapping with name and export)")
        name = raw.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise here.child(raw, "name").error("each board needs a 'name' (letters, digits, '.', '_', '-')")
        here = Where(path, (f"board {name}",), raw.line)
        if name in seen:
            raise here.error(f"duplicate board name (first defined on line {seen[name]})")
        seen[name] = raw.line
        unknown = sorted(set(raw) - BOARD_KEYS)
        if unknown:
            raise here.child(raw, unknown[0]).error(
                f"unknown key (accepted: {', '.join(sorted(BOARD_KEYS))})"
            )
        if "export" not in raw:
            raise here.error("missing 'export' (the driver tree)")
        match = raw.get("match") or {}
        mw = here.child(raw, "match")
        _expect(mw, match, dict, "a mapping of device names to udev properties")
        rules: dict[str, dict[str, str]] = {}
        for device, props in match.items():
            dw = mw.child(match, str(device))
            _expect(dw, props, dict, "a mapping of udev properties to values")
            if not props:
                raise dw.error("needs at least one udev property")
            rules[str(device)] = {str(k): str(v) for k, v in props.items()}
        inventory.matches[name] = rules
        token_file = raw.get("token_file")
        if token_file is None and controller.get("token_dir"):
            token_file = os.path.join(str(controller["token_dir"]), f"{name}.token")
        board = BoardConfig(
            name=name,
            source=path,
            export=raw["export"],
            where=here.child(raw, "export"),
            namespace=str(controller.get("namespace") or "default"),
            labels=_labels(raw, here),
            description=raw.get("description"),
            motd=str(raw.get("motd") or ""),
            endpoint=raw.get("endpoint") or controller.get("endpoint"),
            token=_read_token(token_file) if token_file and os.path.exists(str(token_file)) else None,
            hooks=_hooks(raw, here),
            devices={device: _AnyProperty(device) for device in rules},
        )
        board.build()  # validate now, with placeholders for the devices
        board.devices = {}
        inventory.boards.append(board)
    return inventory


def _read_token(path: Any) -> str:
    with open(str(path)) as handle:
        return handle.read().strip()


def matches(rules: dict[str, str], properties: dict[str, str], ancestors: list[dict[str, str]]) -> bool:
    """True when every rule matches: `KEY` on the device, `@KEY` on the device or an ancestor."""
    for key, wanted in rules.items():
        if key.startswith("@"):
            name = key[1:]
            if not any(p.get(name) == wanted for p in [properties, *ancestors]):
                return False
        elif properties.get(key) != wanted:
            return False
    return True


def resolve_devices(rules: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Find each named device of a board among the devices present now (pyudev)."""
    if not rules:
        return {}
    import pyudev

    context = pyudev.Context()
    found: dict[str, dict[str, str]] = {}
    for device in context.list_devices():
        properties = dict(device.properties)
        ancestors = [dict(a.properties) for a in device.ancestors]
        for name, wanted in rules.items():
            if name not in found and matches(wanted, properties, ancestors):
                found[name] = {**properties, "devnode": device.device_node or "", "syspath": device.sys_path}
    return found


def load_board(path: str, name: str) -> BoardConfig:
    """One board of an inventory, with its matched devices resolved (it must be plugged in)."""
    inventory = load_inventory(path)
    board = inventory.board(name)
    rules = inventory.matches.get(name, {})
    devices = resolve_devices(rules)
    missing = [d for d in rules if d not in devices]
    if missing:
        raise ConfigError(
            f"{path}: board {name}: device {missing[0]!r} is not present (match: {rules[missing[0]]})"
        )
    board.devices = devices
    board.build()
    return board


__all__ = ["Inventory", "Located", "load_inventory", "load_board", "matches", "resolve_devices"]
