"""A small udev rule evaluator, honest to udev(7) for the keys our rules use (tests and benches).

Devices are `SimDevice`s: properties (ENV), sysfs attributes, parents (nearest first).
Semantics kept from udev: every match key of a line must match, then its
assignments run; `==`/`!=` compare shell globs (`*`, `?`, `[]`) with `|` between
alternatives; an unset property compares as ""; an unreadable attribute never
matches (neither `==` nor `!=`); the parent keys of one line (ATTRS, SUBSYSTEMS,
KERNELS, DRIVERS) must all match on one same device, the device itself or a
parent; GOTO jumps forward to its LABEL; `ENV{X}="v"` sets a property, kept in
udev's database, which is all a `remove` event still has (sysfs is gone).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

KEY = re.compile(r'\s*([A-Z]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|:=|=)\s*"([^"]*)"\s*(,|$)')
PARENT_KEYS = {"ATTRS", "SUBSYSTEMS", "KERNELS", "DRIVERS"}
DEVICE_KEYS = {"ACTION", "SUBSYSTEM", "DEVPATH", "KERNEL", "DRIVER", "ENV", "ATTR"}
ASSIGN_KEYS = {"ENV", "RUN", "GOTO", "LABEL", "GROUP", "MODE", "OWNER", "TAG"}


@dataclass
class SimDevice:
    properties: dict[str, str]  # DEVPATH, SUBSYSTEM, DEVTYPE, ID_*...: what ENV{} and RUN's environment see
    attrs: dict[str, str] = field(default_factory=dict)
    parents: list[SimDevice] = field(default_factory=list)  # nearest first
    driver: str = ""

    @property
    def kernel(self) -> str:
        return self.properties.get("DEVPATH", "").rsplit("/", 1)[-1]


@dataclass
class Result:
    run: list[str]
    properties: dict[str, str]  # after the rules: what udev stores in its database


def parse(rules: str) -> list[list[tuple[str, str, str, str]]]:
    """Each rule line as (key, attribute, operator, value); a line udev would refuse raises ValueError."""
    lines = []
    for number, raw in enumerate(rules.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keys, position = [], 0
        while position < len(line):
            match = KEY.match(line, position)
            if not match:
                raise ValueError(f"line {number}: cannot parse {line[position:]!r}")
            key, attr, op, value, _ = match.groups()
            if key not in PARENT_KEYS | DEVICE_KEYS | ASSIGN_KEYS:
                raise ValueError(f"line {number}: unknown key {key}")
            keys.append((key, attr or "", op, value))
            position = match.end()
        lines.append(keys)
    return lines


def _glob(actual: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(actual, alternative) for alternative in pattern.split("|"))


def _compare(actual: str | None, op: str, pattern: str) -> bool:
    if actual is None:  # an attribute that cannot be read: no match either way
        return False
    return _glob(actual, pattern) == (op == "==")


def _device_value(device: SimDevice, props: dict[str, str], action: str, key: str, attr: str) -> str | None:
    if key == "ACTION":
        return action
    if key == "ENV":
        return props.get(attr, "")
    if key == "ATTR":
        return device.attrs.get(attr)
    if key == "KERNEL":
        return device.kernel
    if key == "DRIVER":
        return device.driver
    return props.get(key, "")


def _parent_value(device: SimDevice, key: str, attr: str) -> str | None:
    if key == "ATTRS":
        return device.attrs.get(attr)
    if key == "KERNELS":
        return device.kernel
    if key == "DRIVERS":
        return device.driver
    return device.properties.get("SUBSYSTEM", "")


def evaluate(rules: str, device: SimDevice, action: str) -> Result:
    """The RUN programs of `rules` for `action` on `device`, and its properties after the rules."""
    lines = parse(rules)
    labels = {value: i for i, keys in enumerate(lines) for key, _, _, value in keys if key == "LABEL"}
    props = dict(device.properties)
    run: list[str] = []
    chain = [] if action == "remove" else [device, *device.parents]  # remove: sysfs is gone
    index = 0
    while index < len(lines):
        keys = lines[index]
        index += 1
        matches = [k for k in keys if k[2] in ("==", "!=")]
        own = [k for k in matches if k[0] not in PARENT_KEYS]
        if not all(_compare(_device_value(device, props, action, k, a), op, v) for k, a, op, v in own):
            continue
        parent = [k for k in matches if k[0] in PARENT_KEYS]
        if parent and not any(
            all(_compare(_parent_value(d, k, a), op, v) for k, a, op, v in parent) for d in chain
        ):
            continue
        for key, attr, op, value in keys:
            if key == "ENV" and op == "=":
                props[attr] = value
            elif key == "RUN":
                run.append(value)
            elif key == "GOTO":
                index = labels[value]
    # `.NAME` properties live for this event only: neither stored nor given to RUN programs
    return Result(run, {k: v for k, v in props.items() if not k.startswith(".")})


class Udev:
    """udev's database across events: what `add` stored is what `remove` still has."""

    def __init__(self, rules: str) -> None:
        self.rules = rules
        parse(rules)  # refuse a bad file at once
        self.database: dict[str, dict[str, str]] = {}

    def event(self, action: str, device: SimDevice) -> Result:
        path = device.properties["DEVPATH"]
        if action == "remove":
            stored = self.database.pop(path, {})
            return evaluate(self.rules, SimDevice({**stored, **device.properties}), action)
        result = evaluate(self.rules, device, action)
        self.database[path] = result.properties
        return result
