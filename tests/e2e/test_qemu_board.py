"""The QEMU test board booting Linux, end to end: served by a real exporterd, then through controllerd + routerd.

Each test runs tests/e2e/board_flow.py (flash the compressed image with the CLI, power on, wait for the
prompt with `console.expect`, run `uname -r`, fetch a page from the guest through `port-forward`, take a
screenshot, power off) and checks what it saw against the image it flashed, then reads the console log.
"""

from __future__ import annotations

import doctest
import json
import os
import signal
import struct
import subprocess
import sys

import pytest
import yaml

from tests.e2e.conftest import kernel_release, qemu_export
from tests.integration.central import close_central, free_port, start_central, wait_until
from tests.integration.conftest import exporter_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-m", "jumpstarter.cli.main"]
PNG = b"\x89PNG\r\n\x1a\n"


def run_flow(image: str, out_dir: str, env: dict[str, str], prefix: tuple[str, ...] = ()) -> dict[str, str]:
    flow = [sys.executable, "-m", "tests.e2e.board_flow", image, out_dir]
    done = subprocess.run(
        [*prefix, *flow],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"board flow failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def check_what_the_flow_saw(seen: dict[str, str], marker: str, boot_files: str) -> None:
    assert f"disk marker: {marker}" in seen["scrollback"], "the board did not boot the image just flashed"
    assert seen["uname"] == kernel_release(boot_files)
    assert seen["page"] == f"page-{seen['token']}\n", "the guest's web server was not reached"
    shot = bytes.fromhex(seen["screenshot"])
    width, height = struct.unpack(">II", shot[16:24])
    assert shot.startswith(PNG) and width > 0 and height > 0
    log = seen["console_log"]
    assert f"disk marker: {marker}" in log and seen["uname"] in log and f"page-{seen['token']}" in log


def target_env(socket: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}
    return {**env, "JUMPSTARTER_HOST": socket, "PYTHONPATH": ROOT}


@pytest.mark.timeout(900)
def test_flash_boot_console_port_forward_screenshot_and_console_log_through_exporterd(
    exporterd, boot_files, gz_image, tmp_path
):
    image, marker = gz_image
    board = exporterd.start(exporter_config(yaml.safe_dump(qemu_export(boot_files, str(tmp_path)))))

    seen = run_flow(image, str(tmp_path), target_env(board.socket))

    assert "bytes" in seen["flash"] or seen["flash"] is not None
    check_what_the_flow_saw(seen, marker, boot_files)
    with open(tmp_path / "disk.img", "rb") as disk:
        assert disk.read(len(marker)) == marker.encode(), "the disk does not hold the flashed image"


@pytest.mark.timeout(300)
def test_flashing_a_running_board_is_refused_and_leaves_its_disk_alone(
    exporterd, boot_files, gz_image, tmp_path
):
    image, marker = gz_image
    board = exporterd.start(exporter_config(yaml.safe_dump(qemu_export(boot_files, str(tmp_path)))))
    env = target_env(board.socket)
    cli = lambda *args: subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)  # noqa: E731
    (tmp_path / "disk.img").write_bytes(b"OLD-DISK\n" + bytes(4096))

    assert cli("power", "on").returncode == 0
    refused = cli("storage", "flash", image)
    assert cli("power", "off").returncode == 0

    assert refused.returncode != 0
    assert "power it off before flashing" in refused.stderr
    assert (tmp_path / "disk.img").read_bytes().startswith(b"OLD-DISK\n")
    flashed = cli("storage", "flash", image)
    assert flashed.returncode == 0, flashed.stderr
    assert (tmp_path / "disk.img").read_bytes().startswith(marker.encode())


@pytest.mark.timeout(900)
def test_the_same_flow_through_controllerd_and_routerd_with_shell_l(boot_files, gz_image, tmp_path):
    image, marker = gz_image
    central = start_central(prefix="jsq-", router_settings={"metrics": f"127.0.0.1:{free_port()}"})
    try:
        client = central.create("client", "lab", "alice")
        exporter = central.create("exporter", "lab", "qemu1", board="qemu")
        folder = os.path.join(central.directory, "b")  # short: QEMU's sockets live below it
        os.mkdir(folder)
        process = central.spawn_exporterd(
            "exporterd", exporter.config, qemu_export(boot_files, folder), f"{folder}/e.sock"
        )
        wait_until(
            lambda: "registered" in central.log("exporterd") or process.poll() is not None,
            60,
            "exporterd registers",
        )
        assert process.poll() is None, central.log("exporterd")[-3000:]
        env = target_env("")
        del env["JUMPSTARTER_HOST"]
        env["JMP_CLIENT_CONFIG_HOME"] = str(tmp_path / "config")
        shell = (*CLI, "shell", "--client", client.config, "-l", "board=qemu", "--")

        seen = run_flow(image, str(tmp_path), env, prefix=shell)

        check_what_the_flow_saw(seen, marker, boot_files)
        forwarded = central.router_metric("jumpstarter_router_forwarded_bytes_total")
        assert forwarded > os.path.getsize(image), "the board was not driven through routerd"
    finally:
        close_central(central)


@pytest.mark.timeout(600)
def test_the_qemu_driver_docstring_example_boots_the_board_over_real_grpc(boot_files):
    from jumpstarter.drivers.qemu import Qemu

    tests = [t for t in doctest.DocTestFinder(recurse=False).find(Qemu, "Qemu") if t.examples]
    assert tests, "the Qemu driver lost its runnable example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        output: list[str] = []
        result = runner.run(test, out=output.append)
        assert result.failed == 0, "".join(output)


ENV_FILE = """
from jumpstarter.drivers.composite import Composite, Proxy
from jumpstarter.drivers.qemu import Qemu

qemu = Qemu(**{config!r})
board = Composite(children={{"qemu": qemu, **{{n: Proxy(qemu.children[n]) for n in ("power", "serial", "storage", "network")}}}})
"""


@pytest.mark.timeout(900)
def test_the_same_flow_on_a_board_from_an_env_python_file(boot_files, gz_image, tmp_path):
    image, marker = gz_image
    config = qemu_export(boot_files, str(tmp_path))["qemu"]["config"]
    env_file = tmp_path / "board.py"
    env_file.write_text(ENV_FILE.format(config=config))
    env = target_env("")
    del env["JUMPSTARTER_HOST"]

    seen = run_flow(image, str(tmp_path), env, prefix=(*CLI, "--env", str(env_file), "shell", "--"))

    check_what_the_flow_saw(seen, marker, boot_files)


def qemu_processes(state_dir: str) -> list[int]:
    """Pids of QEMU processes whose command line names `state_dir` (its QMP socket lives there)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and any(state_dir.encode() in a for a in argv):
            found.append(int(pid))
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_qemu_does_not_outlive_its_exporterd(exporterd, boot_files, tmp_path, sig):
    board = exporterd.start(exporter_config(yaml.safe_dump(qemu_export(boot_files, str(tmp_path)))))
    state_dir = str(tmp_path / "qemu")
    on = subprocess.run(
        [*CLI, "power", "on"], env=target_env(board.socket), capture_output=True, text=True, timeout=120
    )
    assert on.returncode == 0, on.stderr
    assert qemu_processes(state_dir), "QEMU did not start"

    board.process.send_signal(sig)
    board.process.wait(timeout=60)

    wait_until(lambda: not qemu_processes(state_dir), 60, "QEMU to exit after its exporterd")


def test_a_board_that_cannot_start_says_why_and_stays_off(tmp_path):
    from jumpstarter.driver.serve import serve
    from jumpstarter.drivers.qemu import Qemu
    from jumpstarter.errors import DriverError

    missing = str(tmp_path / "no-such-vmlinuz")
    with serve(Qemu(kernel=missing, state_dir=str(tmp_path / "state"))) as board:
        with pytest.raises(
            DriverError, match=f"(?s)QEMU exited with 1: .*could not open kernel file .{missing}"
        ):
            board.power.on()
        assert board.power.call("is_on") is False
        with pytest.raises(DriverError, match="powered off"):
            board.screenshot()
