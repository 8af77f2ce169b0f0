"""scripts/install into a temporary root (--destdir): files, modes, accounts, idempotence, uninstall.

The first lab-host install is the real path (python -m venv, then pip install of the checkout, from
the configured package index); the other installs reuse that venv by copying it into their root
first, which the installer then finds up to date (same sources, same prefix) and leaves alone.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness.sandbox import runnable_python

REPO = Path(__file__).resolve().parents[2]
PREFIX = "opt/jumpstarter"
LAB_FILES = [
    "etc/systemd/system/jumpstarter-lab.service",
    "etc/udev/rules.d/99-jumpstarter.rules",
    "etc/jumpstarter/inventory.yaml",
    "etc/jumpstarter/supervisord.conf",
    "usr/local/share/bash-completion/completions/jumpstarter",
    "usr/local/share/zsh/site-functions/_jumpstarter",
]
CENTRAL_FILES = [
    "etc/systemd/system/jumpstarter-controllerd.service",
    "etc/systemd/system/jumpstarter-routerd.service",
    "etc/jumpstarter/controllerd.yaml",
    "etc/jumpstarter/routerd.yaml",
]
SOURCES = {  # installed file -> its source in the checkout
    "etc/systemd/system/": "systemd/",
    "etc/udev/rules.d/": "udev/",
    "etc/jumpstarter/": "etc/",
    "usr/local/share/bash-completion/completions/jumpstarter": "completion/jumpstarter.bash",
    "usr/local/share/zsh/site-functions/": "completion/",
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of this checkout: edits made meanwhile in the work tree cannot change the sources."""
    copy = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy2(REPO / name, copy / name)
    for name in [
        "scripts",
        "systemd",
        "udev",
        "etc",
        "completion",
        "jumpstarter",
        "exporterd",
        "controllerd",
        "routerd",
    ]:
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    return copy


def run_install(checkout: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(checkout / "scripts/install"), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def new_root(base: Path) -> Path:
    """A target root with the accounts files of a Debian system and files that are not ours."""
    root = Path(tempfile.mkdtemp(dir=base))
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\nplugdev:x:46:\nnogroup:x:65534:\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/systemd/system/someone-else.service").write_text("[Service]\nExecStart=/bin/true\n")
    return root


def snapshot(root: Path, times: bool = False) -> dict[str, tuple]:
    """Every path under root: kind, mode, content hash or link target (and mtimes, if asked)."""
    tree: dict[str, tuple] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            what = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            what = ("dir",)
        else:
            what = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        tree[str(path.relative_to(root))] = (
            *what,
            stat.S_IMODE(info.st_mode),
            *((info.st_mtime_ns,) if times else ()),
        )
    return tree


@pytest.fixture(scope="module")
def lab(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A lab-host install through the real path (venv + pip): the root and the installer's output."""
    root = new_root(tmp_path_factory.mktemp("lab"))
    started = time.monotonic()
    result = run_install(checkout, "--lab-host", "--destdir", str(root))
    print(f"lab-host install with a fresh venv: {time.monotonic() - started:.1f} s")
    return root, result.stdout


def seed_venv(lab_root: Path, root: Path) -> None:
    """Put a copy of the lab install's venv (hard links: fast) at root's prefix, as a build would leave it."""
    shutil.copytree(
        lab_root / PREFIX,
        root / PREFIX,
        symlinks=True,
        ignore=shutil.ignore_patterns("install-manifest.json"),
        copy_function=os.link,
    )


@pytest.fixture
def seeded_root(lab: tuple[Path, str], tmp_path: Path) -> Path:
    """A fresh root whose snapshot (taken before seeding) is its pristine state, with a venv seeded."""
    root = new_root(tmp_path)
    seed_venv(lab[0], root)
    return root


def snapshot_without_venv(root: Path) -> dict[str, tuple]:
    stash = root.parent / f"{root.name}-venv"
    (root / PREFIX).rename(stash)
    try:
        return snapshot(root)
    finally:
        stash.rename(root / PREFIX)


def group_line(root: Path) -> list[str]:
    return [line for line in (root / "etc/group").read_text().splitlines() if line.startswith("jumpstarter:")]


def test_lab_host_install_puts_venv_units_rule_configs_and_group_under_destdir(
    lab: tuple[Path, str], checkout: Path
) -> None:
    root, output = lab
    for name in LAB_FILES:
        path = root / name
        source = next(src + name[len(dst) :] for dst, src in SOURCES.items() if name.startswith(dst))
        assert path.read_bytes() == (checkout / source).read_bytes(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, name
        assert f"installed  /{name}" in output
    assert stat.S_IMODE((root / "etc/jumpstarter").stat().st_mode) == 0o755
    for name in CENTRAL_FILES:
        assert not (root / name).exists()
    (line,) = group_line(root)
    assert line.startswith("jumpstarter:x:") and 100 <= int(line.split(":")[2]) <= 999
    gid = int(line.split(":")[2])
    # The exporterds' user: unprivileged, in every device group (missing ones created).
    (user,) = [u for u in (root / "etc/passwd").read_text().splitlines() if u.startswith("jumpstarter:")]
    uid = int(user.split(":")[2])
    assert uid != 0 and user.endswith(":/var/lib/jumpstarter:/usr/sbin/nologin")
    groups = {g.split(":")[0]: g.split(":") for g in (root / "etc/group").read_text().splitlines()}
    for name in ("dialout", "plugdev", "gpio"):
        assert groups[name][3].split(",") == ["jumpstarter"], groups[name]
    assert "jumpstarter" not in groups.get("disk", ["", "", "", ""])[3].split(","), (
        "disk = every block device"
    )
    assert groups["dialout"][2] == "20" and groups["root"][3] == ""  # existing groups kept, root untouched
    for target, owner, mode in [
        ("etc/jumpstarter/tokens", (uid, gid), 0o700),
        ("var/lib/jumpstarter", (uid, gid), 0o750),
        ("var/log/jumpstarter", (0, gid), 0o750),
    ]:
        info = (root / target).stat()
        assert ((info.st_uid, info.st_gid), stat.S_IMODE(info.st_mode)) == (owner, mode), target
    assert os.readlink(root / "usr/local/bin/jumpstarter") == "/opt/jumpstarter/bin/jumpstarter"
    # The venv: its scripts point at the prefix they will live at, and the packages import.
    bin_dir = root / PREFIX / "bin"
    for script in ["jumpstarter", "jumpstarter-exporterd", "jumpstarter-hotplug", "supervisord"]:
        assert (bin_dir / script).read_text().startswith("#!/opt/jumpstarter/bin/python"), script
    probe = subprocess.run(
        [
            str(bin_dir / "python"),
            "-I",  # isolated: not the work tree (the current directory)
            "-B",
            "-c",
            "import jumpstarter, exporterd, supervisor; print(jumpstarter.__file__)",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(str(root / PREFIX / "lib")), probe.stdout  # not the work tree
    # Nothing ran against this machine: the commands are left to the target.
    tail = output.split("to run on the target system (not run with --destdir):\n", 1)[1].split()
    assert " ".join(tail) == (
        "systemctl daemon-reload systemctl enable jumpstarter-lab.service udevadm control --reload"
    )


def test_second_install_changes_nothing_and_says_unchanged(lab: tuple[Path, str], checkout: Path) -> None:
    root = lab[0]
    before = snapshot(root, times=True)
    result = run_install(checkout, "--lab-host", "--destdir", str(root))
    assert snapshot(root, times=True) == before
    lines = result.stdout.splitlines()[1:]  # after "installing under ..."
    # venv, group, user, 3 device groups (never disk), 3 directories, files, link; no commands
    assert len(lines) == 1 + 1 + 1 + 3 + 3 + len(LAB_FILES) + 1, result.stdout
    assert all(line.startswith("unchanged  ") for line in lines), result.stdout
    assert result.stderr == ""


def test_installed_supervisord_conf_serves_rendered_programs_on_its_socket(lab: tuple[Path, str]) -> None:
    root = lab[0]
    work = Path(tempfile.mkdtemp(prefix="js-sv-"))  # short: unix socket paths are limited
    os.chmod(work, 0o755)  # only the socket's own mode may keep others out
    try:
        (work / "run/supervisor.d").mkdir(parents=True)
        (work / "log").mkdir()
        me, my_group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        conf = (root / "etc/jumpstarter/supervisord.conf").read_text()
        conf = conf.replace("/run/jumpstarter", str(work / "run")).replace(
            "/var/log/jumpstarter", str(work / "log")
        )
        conf = conf.replace("chown=root:root", f"chown={me}:{my_group}")
        if os.geteuid() != 0:
            conf = conf.replace("\nuser=root\n", "\n")
        (work / "supervisord.conf").write_text(conf)
        (work / "run/supervisor.d/boards.conf").write_text(
            "[program:board-demo]\ncommand=/bin/sleep 600\nstartsecs=0\nstopsignal=KILL\n"
        )
        python, bin_dir = str(root / PREFIX / "bin/python"), root / PREFIX / "bin"
        assert (bin_dir / "supervisord").exists(), "supervisor must be a dependency in pyproject.toml"
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        daemon = subprocess.Popen(
            [python, str(bin_dir / "supervisord"), "-c", str(work / "supervisord.conf")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            status = ""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and "RUNNING" not in status and daemon.poll() is None:
                time.sleep(0.2)
                status = subprocess.run(
                    [python, str(bin_dir / "supervisorctl"), "-c", str(work / "supervisord.conf"), "status"],
                    capture_output=True,
                    text=True,
                    env=env,
                ).stdout
            assert "board-demo" in status and "RUNNING" in status, status
            control = (work / "run/supervisor.sock").stat()
            assert (stat.S_IMODE(control.st_mode), control.st_uid) == (0o700, os.getuid())
            if os.geteuid() == 0:  # a board user, even one in the socket's group, cannot reach it
                attempt = subprocess.run(
                    [
                        runnable_python("nobody"),
                        "-c",
                        f"import socket; socket.socket(socket.AF_UNIX).connect('{work}/run/supervisor.sock')",
                    ],
                    capture_output=True,
                    text=True,
                    user=65534,
                    group=65534,
                    extra_groups=[control.st_gid],
                    cwd="/",
                )
                assert "PermissionError" in attempt.stderr, attempt.stderr
            assert (work / "log/supervisord.log").exists()
        finally:
            daemon.terminate()
            output = daemon.communicate(timeout=20)[0].decode()
        assert "Privileges were not dropped" not in output, output  # `user=root` says root is meant
    finally:
        shutil.rmtree(work)


def test_central_install_adds_daemon_user_units_and_configs_then_uninstall_restores_the_root(
    seeded_root: Path, checkout: Path
) -> None:
    root = seeded_root
    before = snapshot_without_venv(root)
    result = run_install(checkout, "--central", "--destdir", str(root))
    assert "unchanged  /opt/jumpstarter (venv)" in result.stdout
    for name in CENTRAL_FILES:
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o644
    for name in LAB_FILES:
        assert not (root / name).exists()
    (group,) = group_line(root)
    gid = group.split(":")[2]
    users = [
        line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("jumpstarter:")
    ]
    assert users == [f"jumpstarter:x:{gid}:{gid}:Jumpstarter daemons:/var/lib/jumpstarter:/usr/sbin/nologin"]
    assert "systemctl enable jumpstarter-controllerd.service jumpstarter-routerd.service" in result.stdout

    result = run_install(checkout, "--uninstall", "--destdir", str(root))
    assert snapshot(root) == before, result.stdout
    assert "systemctl disable jumpstarter-controllerd.service jumpstarter-routerd.service" in result.stdout


def test_lab_uninstall_leaves_exactly_what_was_not_ours(seeded_root: Path, checkout: Path) -> None:
    root = seeded_root
    (root / "etc/jumpstarter").mkdir()
    (root / "etc/jumpstarter/inventory.yaml").write_text("boards: []  # mine, from before\n")
    (root / "etc/udev/rules.d").mkdir(parents=True)
    (root / "etc/udev/rules.d/50-mine.rules").write_text('SUBSYSTEM=="tty", MODE="0660"\n')
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/jumpstarter").write_text("#!/bin/sh\n# a pip install --user, say\n")
    before = snapshot_without_venv(root)

    result = run_install(checkout, "--lab-host", "--destdir", str(root))
    assert "kept       /etc/jumpstarter/inventory.yaml (not installed by us" in result.stdout
    assert "kept       /usr/local/bin/jumpstarter (not ours" in result.stdout
    assert (root / "etc/jumpstarter/inventory.yaml").read_text() == "boards: []  # mine, from before\n"
    result = run_install(checkout, "--uninstall", "--destdir", str(root))
    assert snapshot(root) == before, result.stdout
    assert not (root / PREFIX).exists()


def test_edited_config_survives_reinstall_and_uninstall_unless_purged(
    seeded_root: Path, checkout: Path, lab: tuple[Path, str]
) -> None:
    root = seeded_root
    run_install(checkout, "--lab-host", "--destdir", str(root))
    inventory = root / "etc/jumpstarter/inventory.yaml"
    edited = inventory.read_text() + "  - name: my-board\n"
    inventory.write_text(edited)

    result = run_install(checkout, "--lab-host", "--destdir", str(root))
    assert "kept       /etc/jumpstarter/inventory.yaml (edited" in result.stdout
    assert inventory.read_text() == edited
    result = run_install(checkout, "--uninstall", "--destdir", str(root))
    assert "kept       /etc/jumpstarter/inventory.yaml (edited; --purge removes it)" in result.stdout
    assert inventory.read_text() == edited
    assert sorted(p.name for p in (root / "etc/jumpstarter").iterdir()) == ["inventory.yaml"]
    assert not (root / "etc/systemd/system/jumpstarter-lab.service").exists()
    assert group_line(root) == []

    inventory.unlink()
    seed_venv(lab[0], root)
    run_install(checkout, "--lab-host", "--destdir", str(root))
    inventory.write_text(edited)
    result = run_install(checkout, "--uninstall", "--purge", "--destdir", str(root))
    assert "removed    /etc/jumpstarter/inventory.yaml" in result.stdout
    assert list((root / "etc/jumpstarter").iterdir()) == []  # the directory was there before this install


def test_pristine_config_follows_a_new_example_but_an_edited_one_stays(
    seeded_root: Path, checkout: Path
) -> None:
    root = seeded_root
    run_install(checkout, "--lab-host", "--destdir", str(root))
    example = checkout / "etc/supervisord.conf"
    original = example.read_text()
    try:
        example.write_text(original + "; a newer example\n")
        result = run_install(checkout, "--lab-host", "--destdir", str(root))
        assert "updated    /etc/jumpstarter/supervisord.conf" in result.stdout
        assert (root / "etc/jumpstarter/supervisord.conf").read_text().endswith("; a newer example\n")
    finally:
        example.write_text(original)
    (root / "etc/jumpstarter/supervisord.conf").write_text(original + "; my change\n")
    result = run_install(checkout, "--lab-host", "--destdir", str(root))
    assert "kept       /etc/jumpstarter/supervisord.conf (edited" in result.stdout


def test_dry_run_says_what_it_would_do_and_writes_nothing(tmp_path: Path, checkout: Path) -> None:
    root = new_root(tmp_path)
    before = snapshot(root, times=True)
    result = run_install(checkout, "--lab-host", "--central", "--dry-run", "--destdir", str(root))
    assert snapshot(root, times=True) == before
    assert "would install /opt/jumpstarter (venv" in result.stdout
    assert "would install /etc/systemd/system/jumpstarter-routerd.service" in result.stdout
    assert "would create group jumpstarter" in result.stdout


def test_refuses_unclear_requests(tmp_path: Path, checkout: Path) -> None:
    assert run_install(checkout, "--destdir", str(tmp_path), check=False).returncode == 2
    assert run_install(checkout, "--uninstall", "--lab-host", check=False).returncode == 2
    result = run_install(checkout, "--uninstall", "--destdir", str(tmp_path))
    assert "nothing to uninstall" in result.stdout
    (tmp_path / PREFIX).mkdir(parents=True)
    (tmp_path / PREFIX / "somebody-elses-file").write_text("")
    result = run_install(checkout, "--lab-host", "--destdir", str(tmp_path), check=False)
    assert result.returncode == 1 and "is not a venv" in result.stderr


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_missing_destdir_is_refused_at_once(tmp_path: Path, checkout: Path, dry_run: bool) -> None:
    missing = tmp_path / "not" / "there"
    args = ["--lab-host", "--destdir", str(missing)] + (["--dry-run"] if dry_run else [])
    result = run_install(checkout, *args, check=False)
    assert result.returncode == 2
    assert f"--destdir {missing}: no such directory" in result.stderr
    assert not missing.parent.exists()
