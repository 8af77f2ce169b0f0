"""`jumpstarter lab suggest`: ready-to-paste `match:` rules for the USB devices plugged in now.

Identity, in order of preference: the adapter's serial number (ID_SERIAL_SHORT),
plus the interface number (ID_USB_INTERFACE_NUM) to tell apart the ports of a
multi-port adapter; else the physical port path (ID_PATH), which stays the same
as long as the cable goes into the same USB port.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from jumpstarter.lab.devices import Device

# The key sets tried in order; the first that the device has and no other candidate shares wins.
IDENTITIES = (("ID_SERIAL_SHORT",), ("ID_SERIAL_SHORT", "ID_USB_INTERFACE_NUM"), ("ID_PATH",))
EXPORTS = {
    "serial": 'serial: {type: serial, config: {url: "${%s.devnode}", baudrate: 115200}}',
    "storage": 'storage: {type: storage.file, config: {path: "${%s.devnode}"}}',
}


@dataclass
class Suggestion:
    device: str  # the name to use under `match:` (serial, storage)
    devnode: str
    description: str
    rules: dict[str, str]  # empty: no stable identity found


def _kind(device: Device) -> str | None:
    props = device.properties
    if not device.devnode or props.get("ID_BUS") != "usb":
        return None
    if props.get("SUBSYSTEM") == "tty":
        return "serial"
    if props.get("SUBSYSTEM") == "block" and props.get("DEVTYPE") == "disk":
        return "storage"
    return None


def _describe(device: Device) -> str:
    props = device.properties
    vendor = props.get("ID_VENDOR_FROM_DATABASE") or props.get("ID_VENDOR", "")
    model = props.get("ID_MODEL_FROM_DATABASE") or props.get("ID_MODEL", "")
    text = f"{vendor} {model}".strip().replace("_", " ") or "USB device"
    if props.get("ID_SERIAL_SHORT"):
        text += f", serial {props['ID_SERIAL_SHORT']}"
    if props.get("ID_USB_INTERFACE_NUM"):
        text += f", interface {props['ID_USB_INTERFACE_NUM']}"
    return text


def suggest(devices: Iterable[Device]) -> list[Suggestion]:
    candidates = [(kind, d) for d in devices if (kind := _kind(d))]
    candidates.sort(key=lambda item: (item[0], item[1].devnode))
    out = []
    for kind, device in candidates:
        subsystem = device.properties["SUBSYSTEM"]
        rules: dict[str, str] = {}
        for keys in IDENTITIES:
            values = {k: device.properties.get(k, "") for k in keys}
            if not all(values.values()):
                continue
            twins = [
                other
                for other_kind, other in candidates
                if other is not device
                and other_kind == kind
                and all(other.properties.get(k) == v for k, v in values.items())
            ]
            if not twins:
                rules = {"SUBSYSTEM": subsystem, **values}
                break
        out.append(Suggestion(kind, device.devnode, _describe(device), rules))
    return out


def format_suggestions(suggestions: list[Suggestion]) -> str:
    if not suggestions:
        return "# no USB serial adapter or USB block device is plugged in now"
    lines = ["# Paste each block into one board of the inventory (a device belongs to one board)."]
    for s in suggestions:
        lines += ["", f"# {s.devnode}: {s.description}"]
        if not s.rules:
            lines.append(
                "# no stable identity (no serial number, no ID_PATH): plug it into a port of its own"
            )
            continue
        quoted = ", ".join(f"{k}: {json.dumps(v)}" for k, v in s.rules.items())
        lines += ["match:", f"  {s.device}: {{{quoted}}}", "export:", "  " + EXPORTS[s.device] % s.device]
    return "\n".join(lines)
