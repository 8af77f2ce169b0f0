"""The systemd units, the udev rule and supervisord.conf as shipped (and as scripts/install renders them)."""

from __future__ import annotations

import configparser
import fnmatch
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("*.service"))
LAB_UNIT = ROOT / "systemd/jumpstarter-lab.service"
CENTRAL_UNITS = [
    ROOT / "systemd/jumpstarter-controllerd.service",
    ROOT / "systemd/jumpstarter-routerd.service",
]
RULE = ROOT / "udev/99-jumpstarter.rules"


def load_installer() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("jumpstarter_install", str(ROOT / "scripts/install"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


installer = load_installer()


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (systemd allows repeated keys)."""
    entries, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(path: Path, key: str) -> list[str]:
    return [v for _, k, v in unit_entries(path.read_text()) if k == key]


def one(path: Path, key: str) -> str:
    found = values(path, key)
    assert len(found) == 1, f"{path.name}: expected one {key}=, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is missing: install Debian's systemd package "
            "(sudo apt-get install systemd; scripts/test does it when run as root)"
        )
    return path


def render_for_verify(tmp_path: Path, units: list[Path]) -> list[Path]:
    """The units as installed with --prefix pointing at a tree whose programs exist (verify checks that)."""
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    rendered = []
    for unit in units:
        text = installer.render_shipped(str(unit.relative_to(ROOT)), str(prefix)).decode()
        for _, key, value in unit_entries(text):
            if key.startswith("Exec"):
                program = value.lstrip("-@+!:").split()[0]
                if program.startswith(str(prefix)) and not os.path.exists(program):
                    Path(program).write_text("#!/bin/sh\nexit 0\n")
                    os.chmod(program, 0o755)
        (tmp_path / unit.name).write_text(text)
        rendered.append(tmp_path / unit.name)
    return rendered


def verify(systemd_analyze: str, units: list[Path]) -> subprocess.CompletedProcess[str]:
    # --man=no: no man pages in a container; it runs fine without systemd as PID 1.
    return subprocess.run(
        [systemd_analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_PAGER": ""},
        timeout=60,
    )


def test_every_unit_passes_systemd_analyze_verify_without_a_warning(
    systemd_analyze: str, tmp_path: Path
) -> None:
    assert {u.name for u in UNITS} == {
        "jumpstarter-lab.service",
        "jumpstarter-controllerd.service",
        "jumpstarter-routerd.service",
    }
    result = verify(systemd_analyze, render_for_verify(tmp_path, UNITS))
    assert result.returncode == 0 and result.stderr.strip() == "" and result.stdout.strip() == "", (
        result.stdout + result.stderr
    )


def test_verify_reports_a_misspelt_key_and_a_missing_program(systemd_analyze: str, tmp_path: Path) -> None:
    # Proves the check above is not vacuous here: verify sees our mistakes.
    (unit,) = render_for_verify(tmp_path, [LAB_UNIT])
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    result = verify(systemd_analyze, [unit])
    assert "Unknown key" in result.stderr and "ProtectHomes" in result.stderr
    (tmp_path / "prefix/bin/supervisord").unlink()
    result = verify(systemd_analyze, [unit])
    assert result.returncode != 0 and "supervisord" in result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_hardened(unit: Path) -> None:
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "ProtectSystem") == "strict"
    assert one(unit, "ProtectHome") == "yes"
    assert one(unit, "PrivateTmp") == "yes"
    assert one(unit, "StateDirectory").startswith("jumpstarter")
    assert one(unit, "RuntimeDirectory").split()[0].startswith("jumpstarter")
    assert one(unit, "Restart") in ("on-failure", "always")
    assert one(unit, "StartLimitIntervalSec") == "0"  # never gives up restarting
    assert one(unit, "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(unit, "After")


def test_lab_unit_runs_supervisord_with_rendered_boards() -> None:
    assert one(LAB_UNIT, "ExecStartPre") == (
        "/opt/jumpstarter/bin/jumpstarter lab render --inventory /etc/jumpstarter/inventory.yaml"
        " --output /run/jumpstarter/supervisor.d/boards.conf"
    )
    assert one(LAB_UNIT, "ExecStart") == (
        "/opt/jumpstarter/bin/supervisord --nodaemon --configuration /etc/jumpstarter/supervisord.conf"
    )
    # supervisord stays root (it switches each exporterd to the `jumpstarter` user, whose own
    # groups give device access): no device groups for supervisord itself.
    assert values(LAB_UNIT, "User") == [] and values(LAB_UNIT, "SupplementaryGroups") == []
    assert one(LAB_UNIT, "Group") == "jumpstarter"  # supervisord's logs are readable by board users
    assert set(one(LAB_UNIT, "RuntimeDirectory").split()) >= {
        "jumpstarter",
        "jumpstarter/boards",
        "jumpstarter/supervisor.d",
    }
    assert one(LAB_UNIT, "RuntimeDirectoryPreserve") == "restart"
    assert "PATH=/opt/jumpstarter/bin:" in values(LAB_UNIT, "Environment")[0]  # hooks run `jumpstarter ...`
    # Anything that closes /dev (or /sys) would cut exporterds off hot-plugged devices and uhubctl.
    for key in ("PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock", "ProtectKernelTunables"):
        assert values(LAB_UNIT, key) == [], key
    assert one(LAB_UNIT, "KillMode") == "mixed"  # supervisord stops its exporterds itself


@pytest.mark.parametrize("unit", CENTRAL_UNITS, ids=lambda u: u.name)
def test_central_units_run_unprivileged_with_their_config(unit: Path) -> None:
    daemon = unit.name.removeprefix("jumpstarter-").removesuffix(".service")
    assert (
        one(unit, "ExecStart")
        == f"/opt/jumpstarter/bin/jumpstarter-{daemon} --config /etc/jumpstarter/{daemon}.yaml"
    )
    assert one(unit, "User") == "jumpstarter" and one(unit, "Group") == "jumpstarter"
    assert one(unit, "PrivateDevices") == "yes"
    assert one(unit, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(unit, "StateDirectory") == "jumpstarter"  # /var/lib/jumpstarter/controller.db, keys/
    assert one(unit, "UMask") == "0077"  # keys and the database are the daemon's alone


def test_install_renders_another_prefix_into_units_and_rule() -> None:
    for source in [*(str(u.relative_to(ROOT)) for u in UNITS), "udev/99-jumpstarter.rules"]:
        text = installer.render_shipped(source, "/srv/js").decode()
        assert "/opt/jumpstarter" not in text, source
        # the rule runs no program of ours (hotplug's rules are rendered with the venv's path)
        assert "/srv/js/bin/" in text or source.endswith(".rules"), source
    assert installer.render_shipped("udev/99-jumpstarter.rules", "/opt/jumpstarter") == RULE.read_bytes()


def test_every_shipped_unit_and_config_belongs_to_an_install_role() -> None:
    shipped = {item.source for role in installer.ROLES.values() for item in role.files}
    assert all((ROOT / source).is_file() for source in shipped)
    assert {str(u.relative_to(ROOT)) for u in UNITS} <= shipped
    assert "udev/99-jumpstarter.rules" in shipped
    for role in installer.ROLES.values():
        units = {Path(item.target).name for item in role.files if item.target.startswith("/etc/systemd/")}
        assert units == set(role.units)


def test_supervisord_conf_keeps_the_contract_with_the_lab_commands() -> None:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(ROOT / "etc/supervisord.conf")
    assert dict(conf["unix_http_server"]) == {
        "file": "/run/jumpstarter/supervisor.sock",
        "chmod": "0700",  # root's alone: whoever reaches it can stop every board
        "chown": "root:root",
    }
    assert conf["supervisord"]["nodaemon"] == "true"
    assert conf["supervisord"]["logfile"].startswith("/var/log/jumpstarter/")
    assert conf["rpcinterface:supervisor"]["supervisor.rpcinterface_factory"] == (
        "supervisor.rpcinterface:make_main_rpcinterface"
    )
    assert conf["supervisorctl"]["serverurl"] == "unix:///run/jumpstarter/supervisor.sock"
    assert conf["include"]["files"] == "/run/jumpstarter/supervisor.d/*.conf"
    assert not [s for s in conf.sections() if s.startswith("program:")]  # boards are rendered, not listed


@pytest.mark.parametrize("name", ["controllerd.yaml", "routerd.yaml"])
def test_central_example_configs_keep_state_in_the_state_directory(name: str) -> None:
    config = yaml.safe_load((ROOT / "etc" / name).read_text())
    assert config["tls"]["cert"].startswith("/var/lib/jumpstarter/")
    assert config["tls"]["key"].startswith("/var/lib/jumpstarter/")
    if name == "controllerd.yaml":
        from controllerd.config import load

        assert config["store"] == "sqlite:///var/lib/jumpstarter/controller.db"
        loaded = load(str(ROOT / "etc" / name))  # the real loader accepts the example
        assert loaded.router_key_file.startswith("/var/lib/jumpstarter/keys/")
        assert loaded.signing_key.startswith("/var/lib/jumpstarter/keys/")


# -- the udev rule, evaluated the way udev does for the keys it uses ----------------------------

RULE_KEY = re.compile(r'([A-Z]+(?:\{(\w+)\})?)\s*(==|!=|\+=|=)\s*"([^"]*)"')


def udev_run(rules: str, event: dict[str, str]) -> list[str]:
    """The RUN programs `rules` gives for `event` (ACTION, SUBSYSTEM, DEVPATH, DEVTYPE ...)."""
    lines = [line.strip() for line in rules.splitlines() if line.strip() and not line.strip().startswith("#")]
    labels = {
        m.group(4): i
        for i, line in enumerate(lines)
        for m in RULE_KEY.finditer(line)
        if m.group(1) == "LABEL"
    }
    programs, index = [], 0
    while index < len(lines):
        keys = RULE_KEY.findall(lines[index])
        assert keys, f"unparsed rule line: {lines[index]}"
        matched = True
        for key, env, op, value in keys:
            if op in ("==", "!="):
                assert key in ("ACTION", "SUBSYSTEM", "DEVPATH", "KERNEL", "DRIVER") or key.startswith(
                    ("ENV{", "ATTR{")
                ), key
                actual = event.get(key if key.startswith("ATTR{") else env or key, "")
                hit = any(fnmatch.fnmatchcase(actual, alternative) for alternative in value.split("|"))
                matched = matched and hit == (op == "==")
        index += 1
        if not matched:
            continue
        for key, _, _, value in keys:
            if key == "RUN":
                programs.append(value)
            elif key == "GOTO":
                index = labels[value]
    return programs


USB_TTY = "/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0"


@pytest.mark.parametrize(
    ("event", "runs"),
    [
        ({"ACTION": "add", "SUBSYSTEM": "tty", "DEVPATH": USB_TTY}, True),
        ({"ACTION": "remove", "SUBSYSTEM": "tty", "DEVPATH": USB_TTY}, True),
        ({"ACTION": "change", "SUBSYSTEM": "tty", "DEVPATH": USB_TTY}, False),
        (
            {
                "ACTION": "add",
                "SUBSYSTEM": "tty",
                "DEVPATH": "/devices/platform/soc/fe201000.serial/tty/ttyAMA0",
            },
            True,
        ),
        ({"ACTION": "add", "SUBSYSTEM": "tty", "DEVPATH": "/devices/virtual/tty/ptmx"}, False),
        ({"ACTION": "add", "SUBSYSTEM": "tty", "DEVPATH": "/devices/virtual/tty/tty3"}, False),
        (
            {
                "ACTION": "add",
                "SUBSYSTEM": "block",
                "DEVTYPE": "disk",
                "DEVPATH": "/devices/pci0/usb2/2-1/host0/block/sda",
            },
            True,
        ),
        (
            {
                "ACTION": "remove",
                "SUBSYSTEM": "block",
                "DEVTYPE": "disk",
                "DEVPATH": "/devices/x/mmc0/block/mmcblk0",
            },
            True,
        ),
        (
            {
                "ACTION": "add",
                "SUBSYSTEM": "block",
                "DEVTYPE": "partition",
                "DEVPATH": "/devices/x/block/sda/sda1",
            },
            False,
        ),
        (
            {
                "ACTION": "add",
                "SUBSYSTEM": "block",
                "DEVTYPE": "disk",
                "DEVPATH": "/devices/virtual/block/loop0",
            },
            False,
        ),
        (
            {
                "ACTION": "add",
                "SUBSYSTEM": "usb",
                "DEVTYPE": "usb_device",
                "DEVPATH": "/devices/pci0/usb1/1-1",
            },
            True,
        ),
        (
            {
                "ACTION": "remove",
                "SUBSYSTEM": "usb",
                "DEVTYPE": "usb_device",
                "DEVPATH": "/devices/pci0/usb1/1-1",
            },
            True,
        ),
        (
            {
                "ACTION": "add",
                "SUBSYSTEM": "usb",
                "DEVTYPE": "usb_interface",
                "DEVPATH": "/devices/pci0/usb1/1-1/1-1:1.0",
            },
            False,
        ),
        (
            {
                "ACTION": "bind",
                "SUBSYSTEM": "usb",
                "DEVTYPE": "usb_device",
                "DEVPATH": "/devices/pci0/usb1/1-1",
            },
            False,
        ),
        ({"ACTION": "add", "SUBSYSTEM": "net", "DEVPATH": "/devices/pci0/net/eth1"}, False),
    ],
)
def test_the_shipped_udev_rule_runs_no_hotplug_for_any_device(event: dict[str, str], runs: bool) -> None:
    # jumpstarter-hotplug's rules are rendered from the inventory (tests/unit/test_lab_udev_rules.py),
    # so that devices no board matches start nothing; `runs` was the catch-all rule's answer.
    assert udev_run(RULE.read_text(), event) == []
    assert "jumpstarter-hotplug" not in RULE.read_text().split("# Device access")[1]


def test_udev_rule_gives_usb_hub_port_power_to_plugdev_for_uhubctl() -> None:
    hub = {
        "ACTION": "bind",
        "SUBSYSTEM": "usb",
        "DEVTYPE": "usb_interface",
        "DRIVER": "hub",
        "DEVPATH": "/devices/pci0/usb1/1-1/1-1:1.0",
    }
    (program,) = udev_run(RULE.read_text(), hub)
    assert "chgrp -f plugdev /sys%p/*-port*/disable" in program
    text = RULE.read_text()
    assert 'SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"' in text
