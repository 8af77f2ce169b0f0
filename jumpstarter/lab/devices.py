"""Devices as udev describes them, and the record of which devices each board got.

jumpstarter-hotplug writes `device_dir/NAME.json` (under a lock, atomically)
with the devices it matched for board NAME: their udev properties (plus
`devnode` and `syspath`) and their ancestors' properties. exporterd reads it
(`load_board`) before looking devices up with pyudev, so a board is served with
exactly the devices its udev events announced, even ones udev's database cannot
be asked about (early at boot, in containers, the pty "devices" of the tests).
A record is used only while its rules still match and its device node exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import structlog

from jumpstarter.config.inventory import matches
from jumpstarter.files import write_atomic

UDEV_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
# In the environment of a hand-run hotplug, but never udev properties; ACTION/SEQNUM describe the event.
NOT_PROPERTIES = {
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "LANG",
    "TERM",
    "SHELL",
    "USER",
    "LOGNAME",
    "ACTION",
    "SEQNUM",
    "MAIL",
    "HOSTNAME",
    "TMPDIR",
    "TZ",
}
NOT_PREFIXES = ("JUMPSTARTER_", "PYTHON", "LC_", "SSH_", "XDG_", "VIRTUAL_ENV", "SUPERVISOR_")


class Device:
    """One device: its udev properties (with `devnode`, `syspath`) and, lazily, its ancestors'."""

    def __init__(
        self,
        properties: Mapping[str, str],
        ancestors: list[dict[str, str]] | None = None,
        load_ancestors: Callable[[], list[dict[str, str]]] | None = None,
    ) -> None:
        self.properties = dict(properties)
        self._ancestors = ancestors
        self._load_ancestors = load_ancestors

    @property
    def devnode(self) -> str:
        return self.properties.get("devnode", "")

    @property
    def syspath(self) -> str:
        return self.properties.get("syspath", "")

    @property
    def ancestors(self) -> list[dict[str, str]]:
        if self._ancestors is None:
            self._ancestors = self._load_ancestors() if self._load_ancestors else []
        return self._ancestors

    def matches(self, rules: dict[str, str]) -> bool:
        """All rules match; ancestors are only looked at for `@KEY` rules the device itself fails."""
        if any(self.properties.get(k) != v for k, v in rules.items() if not k.startswith("@")):
            return False
        return matches(rules, self.properties, []) or matches(rules, self.properties, self.ancestors)

    def is_same(self, other: Device) -> bool:
        return bool(
            (self.syspath and self.syspath == other.syspath)
            or (self.devnode and self.devnode == other.devnode)
        )

    def to_json(self) -> dict[str, object]:
        return {"properties": self.properties, "ancestors": self.ancestors}

    @classmethod
    def from_json(cls, data: object) -> Device | None:
        if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
            return None
        ancestors = data.get("ancestors")
        return cls(
            {str(k): str(v) for k, v in data["properties"].items()},
            [{str(k): str(v) for k, v in a.items()} for a in ancestors if isinstance(a, dict)]
            if isinstance(ancestors, list)
            else [],
        )

    @classmethod
    def from_event(cls, env: Mapping[str, str], lookup: DeviceLookup | None = None) -> Device:
        """The device of a udev event, from the environment udev gives a `RUN+=` program."""
        props = {
            k: v
            for k, v in env.items()
            if UDEV_KEY.match(k) and k not in NOT_PROPERTIES and not k.startswith(NOT_PREFIXES)
        }
        devname = props.get("DEVNAME", "")
        if devname and not devname.startswith("/"):
            devname = "/dev/" + devname
        props["devnode"] = devname
        props["syspath"] = "/sys" + props["DEVPATH"] if props.get("DEVPATH") else ""
        device = cls(props)
        if lookup is not None:
            device._load_ancestors = lambda: lookup.ancestors(device)
        return device


class DeviceLookup(Protocol):
    """Where hotplug and coldplug ask about devices other than the event's (pyudev, or a test's list)."""

    def ancestors(self, device: Device) -> list[dict[str, str]]: ...

    def present(self) -> Iterator[Device]: ...


class UdevLookup:
    """The devices udev knows now, through pyudev (sysfs and the udev database)."""

    def __init__(self) -> None:
        import pyudev

        self.pyudev = pyudev
        self.context = pyudev.Context()

    def ancestors(self, device: Device) -> list[dict[str, str]]:
        """The ancestors' properties while the device still exists in sysfs; [] once it is gone."""
        if not device.syspath or not os.path.exists(device.syspath):
            return []
        try:
            found = self.pyudev.Devices.from_sys_path(self.context, device.syspath)
            return [dict(a.properties) for a in found.ancestors]
        except (self.pyudev.DeviceNotFoundError, OSError):
            return []

    def present(self) -> Iterator[Device]:
        for found in self.context.list_devices():
            props = {**dict(found.properties), "devnode": found.device_node or "", "syspath": found.sys_path}
            yield Device(props, load_ancestors=functools.partial(_ancestor_properties, found))


def _ancestor_properties(device: Any) -> list[dict[str, str]]:
    return [dict(a.properties) for a in device.ancestors]


class ListLookup:
    """A fixed list of devices (tests, or a host without udev)."""

    def __init__(self, devices: list[Device] | None = None) -> None:
        self.devices = list(devices or [])

    def ancestors(self, device: Device) -> list[dict[str, str]]:
        return []

    def present(self) -> Iterator[Device]:
        return iter(self.devices)


def default_lookup() -> DeviceLookup:
    """pyudev when it works here, else an empty list (no udev: only the events themselves count)."""
    try:
        return UdevLookup()
    except Exception:  # ImportError off Linux, or no /sys in a container
        return ListLookup()


# -- the record of each board's devices ---------------------------------------------------------


def state_path(device_dir: str, board: str) -> str:
    return os.path.join(device_dir, f"{board}.json")


def usable(device: Device, rules: dict[str, str]) -> bool:
    """A recorded device still counts: the rules still match it and its node still exists."""
    return device.matches(rules) and (not device.devnode or os.path.exists(device.devnode))


def read_devices(device_dir: str, board: str) -> dict[str, Device]:
    try:
        with open(state_path(device_dir, board)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, dict):
        return {}
    found = {str(name): Device.from_json(raw) for name, raw in devices.items()}
    return {name: device for name, device in found.items() if device is not None}


def recorded_devices(device_dir: str, board: str, rules: dict[str, dict[str, str]]) -> dict[str, Device]:
    """The recorded devices of `board` that still count for its current `match` rules."""
    recorded = read_devices(device_dir, board)
    return {name: d for name, d in recorded.items() if name in rules and usable(d, rules[name])}


def write_devices(device_dir: str, board: str, devices: dict[str, Device]) -> None:
    """Replace the record atomically (readers see the old or the new file); none left: no file."""
    path = state_path(device_dir, board)
    if not devices:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    data = {"board": board, "devices": {name: d.to_json() for name, d in sorted(devices.items())}}
    # 0644: exporterd may run as another user; device properties are not secret
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode(), 0o644)


@contextlib.contextmanager
def locked(device_dir: str, timeout: float = 0.5) -> Iterator[None]:
    """One hotplug at a time reads-and-writes the records (udev runs events in parallel).

    Never waits more than `timeout`: a hotplug must not block udev, and the
    records are replaced atomically, so going on unlocked risks at worst a
    lost record (the next event or coldplug writes it again), never a torn file.
    """
    os.makedirs(device_dir, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(device_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    structlog.get_logger("hotplug").warning("device records busy; going on unlocked")
                    break
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)
