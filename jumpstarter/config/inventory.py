"""The lab host inventory: every board of this host in one YAML file (DESIGN.md §4).

controller: {endpoint: ctl.lab:443, namespace: lab, token_dir: /etc/jumpstarter/tokens, tls: {ca: BASE64-PEM}}
socket_dir: /run/jumpstarter/boards      # NAME.sock per board
device_dir: /run/jumpstarter/devices     # NAME.json: the devices jumpstarter-hotplug matched
log_dir: /var/log/jumpstarter            # board-NAME.log (supervisord rotates them)
user: jumpstarter                        # the unprivileged user every exporterd runs as (never root)
status_file: /run/jumpstarter/lab-status.json  # supervisord's states, readable by the lab group
boards:
  - name: rpi4-01
    labels: {board: rpi4}
    match:
      serial: {ID_SERIAL_SHORT: A10KJ3XY, SUBSYSTEM: tty}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}

Errors read `file:line: board NAME: key: problem`. Two boards whose `match` rules
could pick the same device are refused, as are duplicate names, unknown driver
types and unknown substitutions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from jumpstarter.config.exporter import BOARD_FIELDS, NAME_RE, TLS, BoardConfig, board_config
from jumpstarter.config.schema import (
    EMPTY,
    Field,
    Section,
    Values,
    anything,
    list_of,
    load_document,
    mapping,
    pattern,
    stringified,
    text,
)
from jumpstarter.config.yamlload import Located, Where
from jumpstarter.errors import ConfigError

DEFAULT_SOCKET_DIR = "/run/jumpstarter/boards"
DEFAULT_DEVICE_DIR = "/run/jumpstarter/devices"
DEFAULT_LOG_DIR = "/var/log/jumpstarter"
DEFAULT_USER = "jumpstarter"
DEFAULT_STATUS_FILE = "/run/jumpstarter/lab-status.json"
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # what useradd accepts
MAX_TOKEN_FILE = 64 * 1024  # a token is ~1 KB; never read a huge file whole
DEVICE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")  # usable in `${NAME.prop}`
PROPERTY_RE = re.compile(r"^@?[A-Za-z_][A-Za-z0-9_]*$")


class _AnyProperty(dict):  # type: ignore[type-arg]
    """Stands in for a device that is not resolved yet, so a tree can be validated."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return f"/dev/unresolved-{self.device}-{key}"


class _BoardWhere(Where):
    """Errors inside a board read `file:line: board NAME: key.path: problem`."""

    def child(self, mapping: Any, key: str) -> Where:
        child = super().child(mapping, key)
        return _BoardWhere(child.path, child.keys, child.line)

    def error(self, problem: str) -> ConfigError:
        board, *keys = self.keys
        key = ".".join(keys)
        return ConfigError(f"{self.path}:{self.line}: {board}: {key + ': ' if key else ''}{problem}")


@dataclass
class Inventory:
    path: str
    socket_dir: str
    device_dir: str = DEFAULT_DEVICE_DIR
    log_dir: str = DEFAULT_LOG_DIR
    user: str = DEFAULT_USER
    status_file: str = DEFAULT_STATUS_FILE
    boards: list[BoardConfig] = field(default_factory=list)
    matches: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # changes whenever the board's config does

    def board(self, name: str) -> BoardConfig:
        for board in self.boards:
            if board.name == name:
                return board
        names = ", ".join(b.name for b in self.boards) or "none"
        raise ConfigError(f"{self.path}: no board {name!r} (boards: {names})")

    def socket_path(self, name: str) -> str:
        return os.path.join(self.socket_dir, f"{name}.sock")


CONTROLLER = Section(
    Field("endpoint", text("HOST:PORT"), default=None, unset="null"),
    Field("namespace", stringified, default="default", unset="falsy"),
    Field("token_dir", stringified, default=None, unset="falsy"),
    Field("tls", TLS, default=EMPTY, unset="falsy"),
)
INVENTORY = Section(
    Field("controller", CONTROLLER, default=EMPTY, unset="falsy"),
    Field("socket_dir", text("a path"), default=DEFAULT_SOCKET_DIR, unset="falsy"),
    Field("device_dir", text("a path"), default=DEFAULT_DEVICE_DIR, unset="falsy"),
    Field("log_dir", text("a path"), default=DEFAULT_LOG_DIR, unset="falsy"),
    Field("status_file", text("a path"), default=DEFAULT_STATUS_FILE, unset="falsy"),
    Field(
        "user",
        pattern(USER_RE, "expected a user name (lowercase letters, digits, '_', '-')"),
        default=DEFAULT_USER,
        unset="falsy",
    ),
    Field("boards", list_of(anything, "a list of boards"), missing="missing 'boards' (a list of boards)"),
    what="a mapping with 'boards'",
)
BOARD_NAME = pattern(NAME_RE, "each board needs a 'name' (letters, digits, '.', '_', '-')")
BOARD = Section(
    Field("name", anything),  # checked first: errors inside a board name it
    *BOARD_FIELDS,
    Field("match", mapping("a mapping of device names to udev properties"), default={}, unset="falsy"),
    Field("token_file", stringified, default=None, unset="null"),
    what="a board (a mapping with name and export)",
)


def load_inventory(path: str) -> Inventory:
    """Parse and validate the whole inventory (every board's driver tree is built once)."""
    values = load_document(path, INVENTORY)
    controller = values.pop("controller")
    boards = values.pop("boards")
    inventory = Inventory(path=path, **values)
    seen: dict[str, int] = {}
    rule_places: list[tuple[str, str, dict[str, str], Where]] = []
    for index, raw in enumerate(boards):
        here: Where = values.at("boards").child(boards, str(index))
        raw = mapping(BOARD.what)(raw, here)
        name = BOARD_NAME(raw.get("name"), here.child(raw, "name"))
        here = _BoardWhere(path, (f"board {name}",), raw.line)
        if name in seen:
            raise here.error(f"duplicate board name (first defined on line {seen[name]})")
        seen[name] = raw.line
        board = BOARD.read(raw, here)
        rules = _match_rules(board, here, rule_places)
        inventory.matches[name] = rules
        inventory.digests[name] = _digest(raw, values.mapping)
        token_file = board["token_file"]
        if token_file is None and controller["token_dir"]:
            token_file = os.path.join(controller["token_dir"], f"{name}.token")
        config = board_config(
            name,
            path,
            board,
            board.at("export"),
            namespace=controller["namespace"],
            endpoint=board["endpoint"] or controller["endpoint"],
            token=_read_token(token_file) if token_file and os.path.exists(token_file) else None,
            devices={device: _AnyProperty(device) for device in rules},  # placeholders until plugged in
            **controller["tls"],
        )
        config.devices = {}
        inventory.boards.append(config)
    _refuse_shared_devices(rule_places)
    return inventory


def _match_rules(
    board: Values, here: Where, places: list[tuple[str, str, dict[str, str], Where]]
) -> dict[str, dict[str, str]]:
    match = board["match"]
    mw = board.at("match")
    rules: dict[str, dict[str, str]] = {}
    for device, props in match.items():
        dw = mw.child(match, str(device))
        if not isinstance(device, str) or not DEVICE_NAME_RE.match(device):
            raise dw.error("device names start with a letter and use letters, digits or '_'")
        mapping("a mapping of udev properties to values")(props, dw)
        if not props:
            raise dw.error("needs at least one udev property")
        for key, value in props.items():
            kw = dw.child(props, str(key))
            if not isinstance(key, str) or not PROPERTY_RE.match(key):
                raise kw.error(
                    "not a udev property name (e.g. ID_SERIAL_SHORT, or @ID_SERIAL_SHORT for an ancestor)"
                )
            if not isinstance(value, str):
                raise kw.error(
                    f"quote the value: YAML read it as {type(value).__name__} {value!r}, "
                    'and udev values are text (write "0403", not 0403)'
                )
        rules[device] = {str(k): str(v) for k, v in props.items()}
        places.append((here.keys[0][len("board ") :], device, rules[device], dw))
    return rules


def _covers(broad: dict[str, str], narrow: dict[str, str]) -> bool:
    """True when every device matching `narrow` also matches `broad` (`KEY` implies `@KEY`)."""
    for key, value in broad.items():
        if narrow.get(key) == value:
            continue
        if key.startswith("@") and narrow.get(key[1:]) == value:
            continue
        return False
    return True


def _refuse_shared_devices(places: list[tuple[str, str, dict[str, str], Where]]) -> None:
    """Two `match` rules that can pick the same device (equal, or one a subset of the other)."""
    for index, (board, _device, rules, where) in enumerate(places):
        for other_board, other_device, other_rules, other_where in places[:index]:
            if _covers(rules, other_rules) or _covers(other_rules, rules):
                owner = "this board" if other_board == board else f"board {other_board}"
                raise where.error(
                    f"matches the same device as {owner}'s match.{other_device} "
                    f"({other_where.path}:{other_where.line}); tell them apart with a property "
                    "only one of them has (ID_SERIAL_SHORT, ID_PATH, ID_USB_INTERFACE_NUM)"
                )


def _digest(raw: Located, doc: Located) -> str:
    """A fingerprint of everything that shapes this board's exporterd (its entry and the lab-wide keys)."""
    shared = {k: v for k, v in doc.items() if k != "boards"}
    text = json.dumps({"board": raw, "lab": shared}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_token(path: Any) -> str:
    try:
        with open(str(path), "rb") as handle:
            return handle.read(MAX_TOKEN_FILE).decode().strip()
    except PermissionError:
        raise ConfigError(
            f"{path}: no permission to read the token: exporterds run as the lab user, so give it "
            f"the file: sudo chown jumpstarter: {path} && sudo chmod 0600 {path}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the token file is not text") from None


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
    """One board of an inventory, with its matched devices resolved (they must be plugged in).

    The devices jumpstarter-hotplug recorded for the board (`device_dir/NAME.json`,
    from the udev events it saw) come first; whatever is not recorded there is
    looked up among the devices udev knows now (pyudev).
    """
    from jumpstarter.lab.devices import recorded_devices

    inventory = load_inventory(path)
    board = inventory.board(name)
    rules = inventory.matches.get(name, {})
    devices = {dev: d.properties for dev, d in recorded_devices(inventory.device_dir, name, rules).items()}
    unrecorded = {dev: wanted for dev, wanted in rules.items() if dev not in devices}
    if unrecorded:
        devices.update(resolve_devices(unrecorded))
    missing = [d for d in rules if d not in devices]
    if missing:
        raise ConfigError(
            f"{path}: board {name}: device {missing[0]!r} is not present (match: {rules[missing[0]]}); "
            "plug it in: jumpstarter-hotplug starts the board when all its devices are there"
        )
    board.devices = devices
    board.build()
    return board


__all__ = ["Inventory", "Located", "load_inventory", "load_board", "matches", "resolve_devices"]
