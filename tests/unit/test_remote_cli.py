"""The remote CLI commands that need no controller: client configs, login without a check, usage errors."""

from __future__ import annotations

import base64
import os
import stat

import jwt
import pytest

from jumpstarter.cli.main import main
from jumpstarter.cli.remote import wants_remote
from jumpstarter.config.client import current_client, load_client_config

KEY = "k" * 32


def token(sub: str = "client:lab:alice:0b9c", aud: str | list[str] | None = "controller.lab:8082") -> str:
    claims: dict[str, object] = {"sub": sub, "iss": "https://controller.lab:8082", "exp": 4102444800}
    if aud is not None:
        claims["aud"] = aud
    return jwt.encode(claims, KEY, algorithm="HS256")


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("JMP_CLIENT_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("JMP_CLIENT_CONFIG", raising=False)
    monkeypatch.delenv("JUMPSTARTER_HOST", raising=False)
    monkeypatch.setenv("JUMPSTARTER_BOARDS_DIR", str(tmp_path / "no-boards"))
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("rest", "remote"),
    [
        (["-l", "board=x"], True),
        (["-lboard=x", "--", "ls"], True),
        (["--selector=board=x"], True),
        (["--lease", "L1"], True),
        (["--exporter", "b1", "--", "true"], True),
        (["--client", "alice"], True),
        (["--acquisition-timeout", "1h", "-l", "board=x"], True),
        (["--duration", "1h", "-l", "board=x"], True),
        (["--debug", "-l", "board=x"], True),
        ([], False),
        (["--", "ls", "-l"], False),
        (["pytest", "-l"], False),
        (["sh", "-c", "exit 7"], False),
    ],
)
def test_shell_and_run_are_remote_only_when_their_own_options_say_so(rest, remote):
    assert wants_remote(rest) is remote


def test_login_takes_endpoint_namespace_and_name_from_the_token(config_home, capsys):
    assert main(["login", "--token", token(), "--no-check"]) == 0

    path = config_home / "clients" / "default.yaml"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = load_client_config(str(path))
    assert (config.endpoint, config.namespace, config.name, config.ca, config.insecure) == (
        "controller.lab:8082",
        "lab",
        "alice",
        "",
        False,
    )
    assert current_client() == "default"
    assert "logged in to controller.lab:8082 as lab/alice" in capsys.readouterr().out


def test_login_with_an_endpoint_a_ca_and_an_alias(config_home, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    args = ["login", "other.lab:443", "--token", token(aud=["a:1", "b:2"]), "--ca", str(ca), "--name", "lab2"]
    assert main([*args, "--no-check"]) == 0

    config = load_client_config(str(config_home / "clients" / "lab2.yaml"))
    assert config.endpoint == "other.lab:443"
    assert base64.b64decode(config.ca) == ca.read_bytes()
    assert current_client() == "lab2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", token(aud=None)], "the token names no endpoint"),
        (["--token", token(sub="system:serviceaccount:lab:ci")], "pass --namespace and --client-name"),
        (["--token", "not-a-jwt"], "not a JWT token"),
        ([], "--token is required"),
    ],
)
def test_login_usage_problems_exit_2_with_one_line(args, message, capsys):
    assert main(["login", *args, "--no-check"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_service_account_token_needs_an_explicit_identity(config_home):
    sa = token(sub="system:serviceaccount:lab:ci")
    args = ["login", "--token", sa, "--namespace", "lab", "--client-name", "ci", "--no-check"]
    assert main(args) == 0
    assert load_client_config(str(config_home / "clients" / "default.yaml")).name == "ci"


def test_config_client_create_use_list_delete(config_home, tmp_path, capsys):
    assert main(["config", "client", "create", "alice", "--token", token()]) == 0
    assert current_client() == "alice"  # the first one becomes current
    source = tmp_path / "bob.yaml"
    source.write_text(
        "apiVersion: jumpstarter.dev/v1alpha1\nkind: ClientConfig\nmetadata: {namespace: lab, name: bob}\n"
        f"endpoint: c.lab:8082\ntoken: {token(sub='client:lab:bob:1')}\n"
    )
    assert main(["config", "client", "create", "bob", "--from", str(source)]) == 0
    assert current_client() == "alice"
    assert main(["config", "client", "create", "bob", "--from", str(source)]) == 2

    assert main(["config", "client", "use", "bob"]) == 0
    assert current_client() == "bob"
    capsys.readouterr()
    assert main(["config", "client", "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        ["CURRENT", "NAME", "ENDPOINT", "CLIENT"],
        ["alice", "controller.lab:8082", "lab/alice"],
        ["*", "bob", "c.lab:8082", "lab/bob"],
    ]

    assert main(["config", "client", "delete", "bob"]) == 0
    assert current_client() == "alice"
    assert not (config_home / "clients" / "bob.yaml").exists()
    assert main(["config", "client", "use", "bob"]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lease", "create", "--duration", "30m"], "needs -l SELECTOR or --exporter NAME"),
        (["run", "-l", "board=x"], "run needs a command"),
        (["shell", "--client", "alice"], "shell needs -l SELECTOR"),
        (["shell", "-l", "board in (x", "--", "true"], "ends early"),
        (["shell", "-l", "board=x", "--duration", "soon", "--", "true"], "invalid duration 'soon'"),
        (["get", "exporters"], "no client config: run `jumpstarter login --token TOKEN`"),
    ],
)
def test_remote_usage_errors_exit_2_before_contacting_anything(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
