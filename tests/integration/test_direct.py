"""Direct mode: exporterd serves its session on TCP with TLS and a passphrase (PROTOCOL.md §3)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from jumpstarter.demo.lab import wait_for
from tests.integration.conftest import exporter_config, stop

EXPORT = """\
power:
  type: power.command
  config: {on: "touch {flag}", off: "rm -f {flag}"}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def direct(tmp_path):
    flag = tmp_path / "powered"
    config = tmp_path / "board.yaml"
    config.write_text(exporter_config(EXPORT.replace("{flag}", str(flag))))
    (tmp_path / "pass").write_text("open sesame\n")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporterd.main",
            "--config",
            str(config),
            "--socket",
            str(tmp_path / "b.sock"),
            "--listen",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(tmp_path / "tls.crt"),
            "--tls-key",
            str(tmp_path / "tls.key"),
            "--passphrase-file",
            str(tmp_path / "pass"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: listening(port), 15, "direct listener", process)
        yield port, tmp_path, flag
    finally:
        stop(process)


def cli(port: int, tmp_path, passphrase: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JMP_", "JUMPSTARTER_"))}
    env["JMP_GRPC_CA"] = str(tmp_path / "tls.crt")
    if passphrase is not None:
        env["JMP_GRPC_PASSPHRASE"] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "jumpstarter.cli.main", "--host", f"127.0.0.1:{port}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_right_passphrase_over_tls_drives_the_board(direct):
    port, tmp_path, flag = direct
    result = cli(port, tmp_path, "open sesame", "power", "on")
    assert result.returncode == 0, result.stderr
    assert flag.exists()


@pytest.mark.parametrize("passphrase", ["wrong", None])
def test_wrong_or_missing_passphrase_is_unauthenticated(direct, passphrase):
    port, tmp_path, flag = direct
    result = cli(port, tmp_path, passphrase, "power", "on")
    assert result.returncode == 1
    assert "missing or wrong x-jumpstarter-passphrase" in result.stderr
    assert not flag.exists()


def test_the_listener_speaks_tls_only(direct):
    port, tmp_path, _ = direct
    env = dict(os.environ, JMP_GRPC_INSECURE="1", JMP_GRPC_PASSPHRASE="open sesame")
    result = subprocess.run(
        [sys.executable, "-m", "jumpstarter.cli.main", "--host", f"127.0.0.1:{port}", "power", "on"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1


def test_listen_without_passphrase_or_tls_is_refused(tmp_path):
    config = tmp_path / "board.yaml"
    config.write_text(exporter_config("power: {type: power.mock}\n"))
    base = [sys.executable, "-m", "exporterd.main", "--config", str(config), "--listen", "127.0.0.1:1"]
    no_pass = subprocess.run([*base, "--insecure-listener"], capture_output=True, text=True, timeout=30)
    assert no_pass.returncode == 2 and "--passphrase-file" in no_pass.stderr
    no_tls = subprocess.run([*base, "--no-passphrase"], capture_output=True, text=True, timeout=30)
    assert no_tls.returncode == 2 and "--tls-cert" in no_tls.stderr
