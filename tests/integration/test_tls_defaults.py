"""The certificates of a fresh central install, and TLS failures that are named at once.

A fresh install: controllerd and routerd each generate their pair on first start; the
lab CA (made by whichever starts first) signs both, and `jumpstarter admin create`
writes that CA into configs, so `shell -l`/`run -l` through the router just work.
A config whose CA does not sign the controller's or a router's certificate makes the
CLI exit non-zero within seconds with one line naming the endpoint; an exporterd with
such a config logs one error line and keeps retrying (no flood, no crash loop).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jumpstarter import channels, tls
from jumpstarter.client.remote import ControllerClient, short_name
from jumpstarter.config.client import load_client_config

from .central import Central, close_central, free_port, start_central, wait_until

pytestmark = pytest.mark.timeout(300)

PY = sys.executable
CLI = [PY, "-m", "jumpstarter.cli.main"]
BIN = os.path.dirname(PY)
BOUND = 90  # seconds: far above a working session, far below the 300 s the old client waited


def other_ca() -> str:
    """A CA that signs nothing here, base64 as configs carry it."""
    return base64.b64encode(tls.generate_ca()[0]).decode()


def with_ca(path: str, ca_b64: str, out: str) -> str:
    document = yaml.safe_load(Path(path).read_text())
    document["tls"]["ca"] = ca_b64
    Path(out).write_text(yaml.safe_dump(document))
    return out


def env_for(directory: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["JMP_CLIENT_CONFIG_HOME"] = os.path.join(directory, "config-home")
    env["JUMPSTARTER_BOARDS_DIR"] = os.path.join(directory, "no-boards")
    return env


def jmp(central: Central, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env_for(central.directory),
        capture_output=True,
        text=True,
        timeout=BOUND,
        stdin=subprocess.DEVNULL,
    )


def admin_config(central: Central, kind: str, name: str, *labels: str) -> str:
    """The config `jumpstarter admin create KIND NAME -o FILE` writes, as is."""
    path = os.path.join(central.directory, f"{kind}-{name}.yaml")
    central.admin("default", "create", kind, name, *[f"-l{label}" for label in labels], "-o", path)
    return path


def spawn_exporter(central: Central, name: str, config: str, *extra: str) -> subprocess.Popen[bytes]:
    power = {"power": {"type": "power.command", "config": {"on": "true", "off": "true"}}}
    socket = os.path.join(central.directory, f"{name}.sock")
    return central.spawn_exporterd(name, config, power, socket, *extra)


def records(central: Central, name: str) -> list[dict[str, Any]]:
    out = []
    for line in central.log(name).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"event": line, "level": "raw"})
    return out


def controller(client: str) -> ControllerClient:
    return ControllerClient(load_client_config(client))


def wait_online(client: str, exporter: str) -> None:
    with controller(client) as c:

        def available() -> bool:
            return any(
                e.name.endswith(f"/{exporter}") and e.online and e.status == 2 for e in c.list_exporters()
            )

        wait_until(available, 60, f"exporter {exporter} online and available", interval=0.2)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def fresh() -> Iterator[Central]:
    """controllerd + routerd that each made their own certificate on first start, and a board."""
    central = start_central("jstls-", own_certs=True)
    try:
        exporter = admin_config(central, "exporter", "board1", "board=tls")
        spawn_exporter(central, "exporterd-board1", exporter)
        client = admin_config(central, "client", "alice")
        wait_online(client, "board1")
        yield central
    finally:
        close_central(central)


def test_fresh_install_issues_both_certificates_from_one_lab_ca_whose_key_is_private(fresh: Central):
    controller = Path(fresh.tls_cert).read_bytes()
    router = Path(fresh.router_cert).read_bytes()
    assert controller != router  # each daemon generated its own pair
    ca = Path(fresh.lab_ca).read_bytes()
    assert tls.signed_by(controller, ca) and tls.signed_by(router, ca)
    key = os.path.join(os.path.dirname(fresh.lab_ca), "ca.key")
    assert os.stat(key).st_mode & 0o777 == 0o600
    document = yaml.safe_load(Path(admin_config(fresh, "client", "carol")).read_text())
    assert base64.b64decode(document["tls"]["ca"]) == ca


def test_admin_written_client_config_runs_shell_and_run_through_the_router(fresh: Central):
    client = os.path.join(fresh.directory, "client-alice.yaml")
    shell = jmp(fresh, "shell", "--client", client, "-l", "board=tls", "--", "jumpstarter", "power", "on")
    assert shell.returncode == 0, shell.stderr
    run = jmp(fresh, "run", "--client", client, "-l", "board=tls", "--", "jumpstarter", "power", "off")
    assert run.returncode == 0, run.stderr
    assert "CERTIFICATE_VERIFY_FAILED" not in shell.stderr + run.stderr


def test_client_config_with_a_wrong_ca_fails_fast_naming_the_controller(fresh: Central):
    client = with_ca(
        os.path.join(fresh.directory, "client-alice.yaml"),
        other_ca(),
        os.path.join(fresh.directory, "wrong-ca.yaml"),
    )
    result = jmp(fresh, "run", "--client", client, "-l", "board=tls", "--", "true")
    line = one_error_line(result)
    assert line.startswith(f"jumpstarter: error: TLS to {fresh.endpoint} failed: certificate verify failed")
    assert "does not sign this server's certificate" in line


def test_exporterd_with_a_wrong_ca_logs_one_error_line_and_keeps_retrying(fresh: Central):
    config = with_ca(
        admin_config(fresh, "exporter", "wrongca"),
        other_ca(),
        os.path.join(fresh.directory, "exporter-wrongca-bad.yaml"),
    )
    process = spawn_exporter(fresh, "exporterd-wrongca", config, "--log-level", "debug")
    problem = f"TLS to {fresh.endpoint} failed: certificate verify failed"

    def retried() -> bool:  # the first failure logged as an error, then at least three retries
        return sum(problem in str(r.get("event")) for r in records(fresh, "exporterd-wrongca")) >= 4

    wait_until(retried, 60, "exporterd to retry the controller three times", interval=0.2)
    assert process.poll() is None, fresh.log("exporterd-wrongca")[-3000:]
    logged = records(fresh, "exporterd-wrongca")
    errors = [r for r in logged if r.get("level") == "error"]
    assert [problem in str(r["event"]) for r in errors] == [True], errors
    assert "does not sign this server's certificate" in errors[0]["event"]
    assert not [r for r in logged if r.get("level") == "warning" and "retrying" in str(r.get("event"))]


@pytest.fixture(scope="module")
def mixed() -> Iterator[Central]:
    """A router whose certificate is not from the lab CA (self-signed, as every daemon made before)."""
    central = start_central("jstlm-", router=False, own_certs=True)
    try:
        key = central.router_cert[: -len(".crt")] + ".key"
        tls.load_or_create(central.router_cert, key, ["127.0.0.1"])
        central.start_router()
        exporter = admin_config(central, "exporter", "board2", "board=mixed")
        spawn_exporter(central, "exporterd-board2", exporter)
        client = admin_config(central, "client", "bob")
        wait_online(client, "board2")
        yield central
    finally:
        close_central(central)


def test_a_router_whose_certificate_the_ca_does_not_sign_fails_fast_naming_the_router(mixed: Central):
    client = os.path.join(mixed.directory, "client-bob.yaml")
    result = jmp(mixed, "shell", "--client", client, "-l", "board=mixed", "--", "true")
    line = one_error_line(result)
    assert line.startswith(
        f"jumpstarter: error: TLS to {mixed.router_endpoint} failed: certificate verify failed"
    ), line
    assert "does not sign this server's certificate" in line
    with controller(client) as c:
        assert list(c.list_leases()) == []  # released on the way out


def test_a_router_on_another_host_gets_a_lab_ca_certificate_from_the_admin_command(fresh: Central):
    out = os.path.join(fresh.directory, "router2")
    fresh.admin(
        "default", "issue-router-cert", "--host", "router2.lab.example", "--host", "127.0.0.1", "--out", out
    )
    assert os.stat(os.path.join(out, "router.key")).st_mode & 0o777 == 0o600
    assert Path(out, "ca.crt").read_bytes() == Path(fresh.lab_ca).read_bytes()
    port = free_port()
    config = os.path.join(out, "routerd.yaml")
    Path(config).write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "tls": {"cert": "router.crt", "key": "router.key"},
                "router_key_file": fresh.router_key,
                "metrics": None,
            }
        )
    )
    process = fresh._spawn("routerd2", [PY, "-m", "routerd.main", "--config", config, "--log-format", "json"])
    fresh.extra.append(process)
    fresh._wait_listening("routerd2", process, port)
    ca = base64.b64encode(Path(fresh.lab_ca).read_bytes()).decode()
    assert channels.tls_failure(f"127.0.0.1:{port}", ca) is None  # a client config's CA trusts it
    assert "router2.lab.example" in tls.certificate_names(Path(out, "router.crt").read_bytes())
    assert not [r for r in records(fresh, "routerd2") if r.get("level") == "error"]

    bad = subprocess.run(
        [
            *CLI,
            "admin",
            "--admin-socket",
            fresh.admin_socket,
            "issue-router-cert",
            "--host",
            "a b",
            "--out",
            out + "x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "invalid host 'a b'" in bad.stderr and not os.path.exists(out + "x")


def test_exporterd_names_a_router_whose_certificate_its_ca_does_not_sign(mixed: Central):
    config = admin_config(mixed, "exporter", "board3", "board=mixed3")
    spawn_exporter(mixed, "exporterd-board3", config, "--tunnel-wait", "2", "--log-level", "debug")
    client = os.path.join(mixed.directory, "client-bob.yaml")
    wait_online(client, "board3")
    problem = f"TLS to {mixed.router_endpoint} failed: certificate verify failed"

    def errors() -> list[dict[str, Any]]:
        return [r for r in records(mixed, "exporterd-board3") if r.get("level") == "error"]

    with controller(client) as c:
        name = short_name(c.acquire("board=mixed3", timeout=60).name)
        try:
            for _ in range(2):  # each Dial sends the exporter to the router; the cause is named once
                assert c.dial(name, timeout=60)[0] == mixed.router_endpoint
            wait_until(lambda: bool(errors()), 60, "exporterd to name the router's TLS failure", interval=0.2)
            wait_until(
                lambda: mixed.log("exporterd-board3").count("TLS to") >= 2,
                60,
                "the second tunnel",
                interval=0.2,
            )
        finally:
            c.release(name)
    logged = errors()
    assert [problem in str(r["event"]) for r in logged] == [True], logged
    assert "does not sign this server's certificate" in logged[0]["event"]
