"""The QEMU command line of a virtual board, and the allowlist for its `extra_args`.

Extra arguments are an allowlist, never passed through blindly: QEMU options can read and
write host files (`-drive`, `-chardev`, `-device loader,file=`), run programs (`-netdev tap,script=`)
or open host devices, all as the exporter's user. Each allowed flag has a value rule.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from typing import Any

from jumpstarter.config.schema import Check
from jumpstarter.config.yamlload import Where


@dataclass(frozen=True)
class Arch:
    binary: str
    machine: tuple[str, ...]
    display: tuple[str, ...]  # a framebuffer for screendump
    console: str  # the guest's name for its first serial port
    host: str  # platform.machine() where KVM can run it


ARCHES = {
    "x86_64": Arch("qemu-system-x86_64", ("-machine", "pc"), ("-vga", "std"), "ttyS0", "x86_64"),
    "aarch64": Arch(
        "qemu-system-aarch64", ("-machine", "virt", "-cpu", "max"), ("-device", "ramfb"), "ttyAMA0", "aarch64"
    ),
}
ACCELS = ("auto", "tcg", "kvm")
INSTALL_HINT = {"x86_64": "apt-get install qemu-system-x86", "aarch64": "apt-get install qemu-system-arm"}

_OPTION = r"[A-Za-z0-9_.-]+"
_MACHINE_KEYS = (
    "accel|usb|smm|graphics|hpet|pit|vmport|kernel-irqchip|gic-version|highmem|mem-merge|dump-guest-core"
)
# Devices that reach no host resource (no files, no host devices, no programs).
DEVICES = (
    "virtio-rng-pci",
    "virtio-balloon-pci",
    "virtio-keyboard-pci",
    "virtio-mouse-pci",
    "virtio-tablet-pci",
    "virtio-gpu-pci",
    "ramfb",
    "qemu-xhci",
    "usb-ehci",
    "usb-kbd",
    "usb-mouse",
    "usb-tablet",
    "i6300esb",
    "pvpanic",
)
# Device properties that name no host resource (not romfile=, chardev=, drive=...).
_DEVICE_OPTION = r"(,(id|bus|addr|multifunction|max-bytes|period|xres|yres|max-outputs)=[A-Za-z0-9_.:-]+)*"
# flag -> rule for its value (None: the flag takes no value)
EXTRA_FLAGS: dict[str, re.Pattern[str] | None] = {
    "-cpu": re.compile(rf"{_OPTION}(,[+-]?{_OPTION}(={_OPTION})?)*"),
    "-machine": re.compile(rf"{_OPTION}(,({_MACHINE_KEYS})={_OPTION})*"),
    "-device": re.compile(rf"({'|'.join(re.escape(d) for d in DEVICES)}){_DEVICE_OPTION}"),
    "-vga": re.compile(r"std|cirrus|virtio|none"),
    "-rtc": re.compile(r"base=(utc|localtime)(,clock=(host|rt|vm))?(,driftfix=(none|slew))?"),
    "-boot": re.compile(r"(order|once|menu|strict)=[a-z0-9]+(,(order|once|menu|strict)=[a-z0-9]+)*"),
    "-watchdog-action": re.compile(r"reset|shutdown|poweroff|pause|debug|none|inject-nmi"),
    "-usb": None,
}


def extra_args_problem(args: Any) -> tuple[int, str] | None:
    """(index, problem) of the first argument the allowlist refuses, or None when all pass."""
    if not isinstance(args, (list, tuple)):
        return -1, "expected a list of arguments, e.g. [-cpu, max, -device, virtio-rng-pci]"
    i = 0
    while i < len(args):
        flag = args[i]
        if not isinstance(flag, str) or flag not in EXTRA_FLAGS:
            allowed = ", ".join(sorted(EXTRA_FLAGS))
            return i, f"{str(flag)[:40]!r} is not an allowed QEMU argument (allowed: {allowed})"
        rule = EXTRA_FLAGS[flag]
        if rule is not None:
            if i + 1 >= len(args) or not isinstance(args[i + 1], str):
                return i, f"{flag} needs a value"
            if not rule.fullmatch(args[i + 1]):
                return i + 1, f"{args[i + 1][:80]!r} is not an allowed value for {flag}"
            i += 1
        i += 1
    return None


def check_extra_args(args: Any) -> list[str]:
    problem = extra_args_problem(args)
    if problem is not None:
        raise ValueError(f"extra_args: {problem[1]}")
    return list(args)


def extra_args_setting(value: Any, where: Where) -> list[str]:
    """The `extra_args` config check: a refused item is named by its index (`extra_args.2`)."""
    problem = extra_args_problem(value)
    if problem is None:
        return list(value)
    index, text = problem
    raise (where if index < 0 else where.child(value, str(index))).error(text)


def memory_mib(value: Any) -> int:
    """`memory`: MiB as a number, or text such as 512M / 2G."""
    match = re.fullmatch(r"(\d+)\s*([MG]i?B?)?", str(value).strip(), re.IGNORECASE)
    if isinstance(value, bool) or match is None:
        raise ValueError(f"memory: expected MiB or a size like 512M or 2G, got {value!r}")
    mib = int(match.group(1)) * (1024 if (match.group(2) or "M").upper().startswith("G") else 1)
    if not 16 <= mib <= 1024 * 1024:
        raise ValueError(f"memory: {mib} MiB is out of range (16 MiB to 1 TiB)")
    return mib


def as_check(rule: Any) -> Check:
    """A `value -> value` rule raising ValueError, as a config check reporting file:line."""

    def check(value: Any, where: Where) -> Any:
        try:
            return rule(value)
        except ValueError as exc:
            raise where.error(str(exc).partition(": ")[2] or str(exc)) from None

    return check


def accelerator(accel: str, arch: Arch) -> str:
    if accel != "auto":
        return accel
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    return "kvm" if usable and platform.machine() == arch.host else "tcg"


def command_line(
    binary: str,
    arch: Arch,
    *,
    name: str,
    accel: str,
    memory: int,
    cpus: int,
    kernel: str | None,
    initrd: str | None,
    append: str | None,
    disk: str | None,
    qmp: str,
    forwards: list[tuple[int, int]],
    extra_args: list[str],
) -> list[str]:
    """The argv of one QEMU run: paused (`-S`, resumed over QMP once the console is attached)."""
    argv = [binary, "-name", name, "-nodefaults", "-no-user-config", "-S", *arch.machine]
    argv += ["-accel", accelerator(accel, arch), "-m", str(memory), "-smp", str(cpus)]
    argv += ["-display", "none", *arch.display, "-no-reboot"]
    argv += ["-chardev", "pty,id=console", "-serial", "chardev:console"]
    argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    rules = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in forwards)
    # no iPXE option ROM (romfile=): it only slows the boot
    argv += ["-netdev", f"user,id=net0{rules}", "-device", "virtio-net-pci,netdev=net0,romfile="]
    if disk is not None:
        argv += ["-drive", f"file={disk.replace(',', ',,')},format=raw,if=virtio"]
    if kernel is not None:
        argv += ["-kernel", kernel]
        if initrd is not None:
            argv += ["-initrd", initrd]
        if append:
            argv += ["-append", append]
    return argv + extra_args
