"""The CLI's rough edges with a controller (issue 12 §3): exit codes of leases, output formats,
one-line errors, and a failed beforeLease hook that says why.

Real controllerd, routerd and exporterd with TLS on loopback (the stack of test_remote.py,
one per module); every test releases what it leases.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from . import test_remote
from .test_remote import PY, Lab, Stack, jmp

# test_remote's module-scoped fixtures: this module gets its own stack.
stack, lab, lab_env = test_remote.stack, test_remote.lab, test_remote.lab_env

pytestmark = pytest.mark.timeout(300)


def test_lease_create_denied_by_a_policy_exits_1_with_the_reason(lab: Lab, lab_env):
    lab.stack.admin("policy", "set", "team-z-only", "--exporters", "board=x", "--clients", "team=z")
    try:
        result = jmp(lab_env, "lease", "create", "--client", lab.alice, "-l", "board=x", "--duration", "1m")
    finally:
        lab.stack.admin("policy", "delete", "team-z-only")

    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("jumpstarter: error: lease ") and " failed: " in line, line
    assert "failed" in result.stdout  # the table still shows the lease and its state
    lab.stack.wait_available(lab.alice_client, "board1")


def test_lease_release_of_an_unknown_lease_exits_1_saying_it_does_not_exist(lab: Lab, lab_env):
    result = jmp(lab_env, "lease", "release", "--client", lab.alice, "no-such-lease")

    assert result.returncode == 1
    assert result.stderr.strip() == "jumpstarter: error: lease no-such-lease does not exist"


def test_run_on_a_leased_board_exits_127_for_a_missing_command(lab: Lab, lab_env):
    result = jmp(lab_env, "run", "--client", lab.alice, "-l", "board=x", "--", "/nonexistent/tool")

    assert result.returncode == 127, result.stderr
    assert "jumpstarter: /nonexistent/tool: command not found" in result.stderr
    lab.stack.wait_available(lab.alice_client, "board1")


def test_get_and_lease_list_speak_yaml_and_tables_name_statuses(lab: Lab, lab_env):
    listed = jmp(lab_env, "get", "exporters", "--client", lab.alice, "-o", "yaml")
    assert listed.returncode == 0, listed.stderr
    (exporter,) = [e for e in yaml.safe_load(listed.stdout) if e["name"].endswith("/board1")]
    assert exporter["labels"]["board"] == "x"

    leases = jmp(lab_env, "lease", "list", "--client", lab.alice, "-o", "yaml")
    assert leases.returncode == 0, leases.stderr
    assert yaml.safe_load(leases.stdout) == []

    table = lab.stack.admin("get", "exporters")
    (row,) = [r for r in table.splitlines() if " board1 " in f" {r} "]
    assert " available " in f" {row} ", table  # not the raw status number


def test_admin_actions_print_a_line_for_people_and_data_for_scripts(lab: Lab):
    lab.stack.create_client("carol")
    line = lab.stack.admin("revoke", "client", "carol")
    assert line.strip() == "revoked 1 token of client carol"
    assert "{" not in line

    data = json.loads(lab.stack.admin("delete", "client", "carol", "-o", "json"))
    assert data == {"deleted": "lab/carol", "tokens_revoked": 0}

    policies = yaml.safe_load(lab.stack.admin("get", "policies", "-o", "yaml"))
    assert policies == []


def test_login_without_ca_prints_one_line_and_no_grpc_log(lab: Lab, lab_env, tmp_path: Path):
    with open(lab.alice) as handle:
        token = yaml.safe_load(handle)["token"]

    result = jmp(lab_env, "login", lab.stack.endpoint, "--token", token, timeout=90)

    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("jumpstarter: error: TLS to ") and "--ca FILE" in line, result.stderr


# -- a failing beforeLease hook ----------------------------------------------------------------


@pytest.fixture(scope="module")
def hooked(stack: Stack, lab: Lab) -> Iterator[str]:
    """An exporter (board=hooked) whose beforeLease hook prints why it fails, then runs a missing command."""
    script = "echo checking the relay board\necho relay board not found >&2\nno-such-tool-xyz --reset\n"
    export = {"power": {"type": "power.mock"}}
    config = stack.create_exporter("hooked", {"board": "hooked"}, export)
    with open(config) as handle:
        document = yaml.safe_load(handle)
    document["hooks"] = {"beforeLease": {"script": script, "timeout": 30, "onFailure": "endLease"}}
    with open(config, "w") as handle:
        yaml.safe_dump(document, handle)
    stack.spawn(
        "hooked",
        [
            PY,
            "-m",
            "exporterd.main",
            "--config",
            config,
            "--socket",
            os.path.join(stack.directory, "hooked.sock"),
            "--log-format",
            "json",
        ],
    )
    stack.wait_available(lab.alice_client, "hooked")
    return "board=hooked"


def test_a_failed_before_lease_hook_shows_its_own_last_output_once(lab: Lab, lab_env, hooked: str):
    result = jmp(lab_env, "run", "--client", lab.alice, "-l", hooked, "--", sys.executable, "-c", "pass")

    assert result.returncode == 1, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("jumpstarter: error:")]
    assert len(error) == 1, result.stderr
    assert "beforeLease hook failed: exited with 127" in error[0], result.stderr
    for said in ("relay board not found", "no-such-tool-xyz: not found", "exited with 127", "hook failed"):
        assert result.stderr.count(said) == 1, (said, result.stderr)
