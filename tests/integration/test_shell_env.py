"""The shell driver's client environment is an allowlist, through a real exporterd over gRPC.

The attack: `git -C repo status` is a harmless configured command, but a client that may set
GIT_CONFIG_* turns it into `core.fsmonitor=<any command>`, run on the lab host.
"""

from __future__ import annotations

import os
import subprocess

import pytest

import jumpstarter

from .conftest import exporter_config

GIT_ATTACK = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor"}


def git_repo(directory: str) -> str:
    repo = os.path.join(directory, "repo")
    subprocess.run(["git", "init", "-q", repo], check=True)
    return repo


@pytest.fixture
def git_board(exporterd, workdir):
    """A board whose only command is the short (upstream) form `git -C repo status`."""
    repo = git_repo(workdir)
    config = f"tools:\n  type: shell\n  config:\n    methods:\n      status: git -C {repo} status --short\n"
    return exporterd.start(exporter_config(config), name="git")


@pytest.fixture
def board(exporterd, workdir):
    repo = git_repo(workdir)
    return exporterd.start(
        exporter_config(
            f"""
            tools:
              type: shell
              config:
                methods:
                  status: git -C {repo} status --short
                  deploy:
                    script: 'echo "build=$BUILD_ID arg=$1"'
                    env_from_client: [BUILD_ID]
                  upstream:
                    command: 'echo "upstream form $1"'
                    description: upstream's mapping form
                    timeout: 30
            """
        )
    )


def test_git_config_from_the_client_cannot_run_a_command_on_the_lab_host(git_board, workdir):
    owned = os.path.join(workdir, "owned")
    env = {**GIT_ATTACK, "GIT_CONFIG_VALUE_0": f"id > {owned}"}
    with jumpstarter.connect(git_board.socket) as client:
        with pytest.raises(ValueError) as refused:
            client.tools.run("status", env=env)
        assert client.tools.run("status").returncode == 0  # the method itself still works

    assert not os.path.exists(owned), "the client's GIT_CONFIG_* ran a command on the lab host"
    message = str(refused.value)
    assert "'status'" in message and "GIT_CONFIG_" in message and "env_from_client" in message


@pytest.mark.parametrize(
    "name",
    ["SHELLOPTS", "http_proxy", "OPENSSL_CONF", "GLIBC_TUNABLES", "JAVA_TOOL_OPTIONS", "GIT_SSH_COMMAND"],
)
def test_variables_the_method_does_not_name_are_refused(git_board, name):
    with jumpstarter.connect(git_board.socket) as client, pytest.raises(ValueError, match=name):
        client.tools.run("status", env={name: "1"})


def test_a_variable_named_in_env_from_client_reaches_the_script(board):
    with jumpstarter.connect(board.socket) as client:
        result = client.tools.run("deploy", "a b", env={"BUILD_ID": "1234"})
        assert (result.stdout, result.returncode) == ("build=1234 arg=a b\n", 0)
        with pytest.raises(ValueError, match="BUILD_ID"):  # allowed for deploy, not for status
            client.tools.run("status", env={"BUILD_ID": "1234"})
        with pytest.raises(ValueError, match="NUL"):
            client.tools.run("deploy", env={"BUILD_ID": "a\0b"})
        with pytest.raises(ValueError, match="longer than"):
            client.tools.run("deploy", env={"BUILD_ID": "x" * 5000})


def test_upstream_mapping_form_loads_and_runs(board):
    with jumpstarter.connect(board.socket) as client:
        assert client.tools.run("upstream", "hi").stdout == "upstream form hi\n"
        assert client.tools.method_help("upstream", "") == "upstream's mapping form"


def test_argument_count_and_size_are_bounded(board):
    with jumpstarter.connect(board.socket) as client:
        with pytest.raises(ValueError, match="at most 256 arguments"):
            client.tools.run("deploy", *["a"] * 257)
        with pytest.raises(ValueError, match="in all"):
            client.tools.run("deploy", *["a" * 60000] * 20)
        with pytest.raises(ValueError, match="NUL"):
            client.tools.run("deploy", "a\0b")
