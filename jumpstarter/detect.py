"""Known USB lab hardware plugged into this host, found with pyudev (Linux only, imported lazily)."""

from __future__ import annotations

from dataclasses import dataclass

# SD-card muxes recognised by USB vendor:model (storage drivers come with the storage interface).
SD_MUXES = {
    ("04e8", "6001"): "SDWire SD mux",
    ("0424", "4041"): "USB-SD-Mux (Linux Automation)",
    ("0bda", "0316"): "SDWire3 SD mux",
}


@dataclass
class Hardware:
    kind: str
    devnode: str
    description: str
    name: str
    properties: dict[str, str]


def detect_hardware() -> list[Hardware]:
    import pyudev

    context = pyudev.Context()
    found: list[Hardware] = []
    for device in context.list_devices(subsystem="tty"):
        props = dict(device.properties)
        if props.get("ID_BUS") != "usb" or not device.device_node:
            continue
        serial = props.get("ID_SERIAL_SHORT", "")
        model = props.get("ID_MODEL_FROM_DATABASE") or props.get("ID_MODEL", "")
        vendor = props.get("ID_VENDOR_FROM_DATABASE") or props.get("ID_VENDOR", "")
        port = props.get("ID_USB_INTERFACE_NUM", "")
        desc = (
            f"{vendor} {model}".strip()
            + (f" serial {serial}" if serial else "")
            + (f" if{port}" if port else "")
        )
        found.append(
            Hardware("serial", device.device_node, desc, _name(serial or device.sys_name, port), props)
        )
    for device in context.list_devices(subsystem="usb", DEVTYPE="usb_device"):
        props = dict(device.properties)
        key = (props.get("ID_VENDOR_ID", ""), props.get("ID_MODEL_ID", ""))
        if key in SD_MUXES:
            node = device.device_node or device.sys_path
            found.append(
                Hardware(
                    "sdmux", node, SD_MUXES[key], _name(props.get("ID_SERIAL_SHORT", "sdmux"), ""), props
                )
            )
    return found


def _name(base: str, port: str) -> str:
    clean = "".join(c if c.isalnum() else "_" for c in base).strip("_").lower() or "dev"
    if not clean[0].isalpha():
        clean = "d" + clean
    return f"{clean}_{port}" if port else clean


def detected_tree():  # type: ignore[no-untyped-def]
    """A board made of the detected serial adapters: `serial` (or serial_<id> when several)."""
    from jumpstarter.drivers.composite import Composite
    from jumpstarter.drivers.serial import Serial
    from jumpstarter.errors import ConfigError

    serials = [h for h in detect_hardware() if h.kind == "serial"]
    if not serials:
        raise ConfigError("--detect: no USB serial adapter found on this host")
    if len(serials) == 1:
        children = {"serial": Serial(url=serials[0].devnode, description=serials[0].description)}
    else:
        children = {f"serial_{h.name}": Serial(url=h.devnode, description=h.description) for h in serials}
    return Composite(children=children, description="USB hardware detected on this host")
