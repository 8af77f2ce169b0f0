"""The QEMU board's settings: the extra-argument allowlist, config errors with file:line, its command line."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest

from jumpstarter.config.exporter import load_exporter_config
from jumpstarter.drivers.qemu import Qemu
from jumpstarter.drivers.qemu_args import ARCHES, command_line, extra_args_problem, memory_mib
from jumpstarter.errors import ConfigError
from jumpstarter.pnm import ppm_to_png

ETC = Path(__file__).resolve().parents[2] / "etc"

HOST_REACHING_ARGUMENTS = [
    ["-drive", "file=/etc/shadow,format=raw"],  # reads or writes any file of the exporter's user
    ["-chardev", "file,id=x,path=/tmp/owned"],
    ["-device", "loader,file=/etc/shadow,addr=0x1000"],  # a host file into guest memory
    ["-device", "virtio-rng-pci,romfile=/etc/shadow"],  # an allowed device with a file property
    ["-device", "vfio-pci,host=01:00.0"],  # a host PCI device
    ["-netdev", "tap,id=n,script=/tmp/owned.sh"],  # runs a program
    ["-machine", "pc,dtb=/etc/shadow"],
    ["-monitor", "tcp:0.0.0.0:4444,server"],  # the monitor on the network
    ["-qmp", "tcp:0.0.0.0:4444,server"],
    ["-cpu", "max", "-L", "/tmp"],  # a second flag outside the list
    ["-cpu"],  # a flag without its value
    ["-cpu", "max;id"],
    "-cpu max",  # not a list
]


@pytest.mark.parametrize(
    "args", HOST_REACHING_ARGUMENTS, ids=lambda a: " ".join(a) if isinstance(a, list) else a
)
def test_extra_arguments_that_reach_the_host_are_refused(args):
    assert extra_args_problem(args) is not None
    with pytest.raises(ValueError, match="extra_args"):
        Qemu(extra_args=args)  # the same rule for an --env Python file as for a config


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-cpu", "max"],
        ["-cpu", "qemu64,+ssse3,-pdpe1gb"],
        ["-machine", "q35,smm=off"],
        ["-device", "virtio-rng-pci", "-device", "usb-tablet,bus=usb-bus.0", "-usb"],
        ["-rtc", "base=utc,clock=vm"],
        ["-watchdog-action", "poweroff"],
    ],
)
def test_ordinary_extra_arguments_are_accepted(args):
    assert extra_args_problem(args) is None


def write(tmp_path: Path, config: str) -> str:
    path = tmp_path / "exporter.yaml"
    path.write_text(f"export:\n  qemu:\n    type: qemu\n    config:\n{config}")
    return str(path)


def test_a_refused_extra_argument_is_reported_with_file_line_and_its_index(tmp_path):
    path = write(
        tmp_path, "      memory: 128\n      extra_args:\n        - -cpu\n        - max\n        - -drive\n"
    )
    with pytest.raises(ConfigError) as info:
        load_exporter_config(path)
    assert f"{path}:6: export.qemu.config.extra_args.2: '-drive' is not an allowed QEMU argument" in str(
        info.value
    )


@pytest.mark.parametrize(
    "config, message",
    [
        ("      arch: sparc\n", ":5: export.qemu.config.arch: expected one of x86_64, aarch64"),
        ("      memory: lots\n", ":5: export.qemu.config.memory: expected MiB or a size like 512M"),
        ("      cpus: 0\n", ":5: export.qemu.config.cpus: expected a positive whole number"),
        ("      forward: {power: 22}\n", ":4: export.qemu.config: qemu: forward: 'power' is not a usable"),
        ("      forward: {ssh: 70000}\n", ":4: export.qemu.config: qemu: forward: ssh: expected a TCP port"),
        ("      initrd: /boot/initrd.img\n", ":4: export.qemu.config: qemu: initrd: needs a kernel"),
        ("      colour: red\n", ":5: export.qemu.config.colour: unknown setting for qemu"),
    ],
)
def test_mistakes_in_the_board_settings_name_file_and_line(tmp_path, config, message):
    path = write(tmp_path, config)
    with pytest.raises(ConfigError) as info:
        load_exporter_config(path)
    assert f"{path}{message}" in str(info.value), str(info.value)


def test_the_example_config_loads_and_names_the_usual_drivers():
    board = load_exporter_config(str(ETC / "exporter-qemu.yaml")).build()
    qemu = board.children["qemu"]
    assert isinstance(qemu, Qemu) and qemu.memory == 512 and qemu.forward == {"network": 22}
    assert set(board.children) == {"qemu", "power", "serial", "storage", "network"}


def test_loading_a_config_creates_no_state_directory(tmp_path):
    path = write(tmp_path, f"      state_dir: {tmp_path}/state\n")
    load_exporter_config(path).build()
    assert not (tmp_path / "state").exists()


def test_the_command_line_forwards_to_loopback_only_and_starts_paused():
    argv = command_line(
        "qemu-system-x86_64", ARCHES["x86_64"], name="jumpstarter-t", accel="tcg", memory=256, cpus=1,
        kernel="/k", initrd="/i", append="console=ttyS0", disk="/d,x.img", qmp="/s/qmp.sock",
        forwards=[(40001, 22)], extra_args=["-cpu", "max"],
    )  # fmt: skip
    line = " ".join(argv)
    assert "hostfwd=tcp:127.0.0.1:40001-:22" in line and "0.0.0.0" not in line
    assert "-S" in argv and argv[-2:] == ["-cpu", "max"]
    assert "file=/d,,x.img,format=raw" in line  # a comma in the path cannot add drive options


def test_memory_sizes():
    assert [memory_mib(v) for v in (256, "512M", "2G", "1GiB")] == [256, 512, 2048, 1024]
    for bad in (True, "0", "1T", 8):
        with pytest.raises(ValueError):
            memory_mib(bad)


def test_a_screendump_becomes_a_png_with_the_same_pixels():
    width, height = 3, 2
    pixels = bytes(range(width * height * 3))
    png = ppm_to_png(b"P6\n# qemu\n3 2\n255\n" + pixels)

    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (width, height)
    idat = re.search(rb"IDAT(.*)", png, re.S)
    assert idat is not None
    rows = zlib.decompressobj().decompress(idat.group(1))
    assert rows == b"".join(b"\0" + pixels[y * 9 : (y + 1) * 9] for y in range(height))
    with pytest.raises(ValueError):
        ppm_to_png(b"P6\n3 2\n255\n" + pixels[:-1])
