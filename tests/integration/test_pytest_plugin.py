"""The pytest plugin, as a user meets it: an inner pytest run on a test file that only imports pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

BOOTS_AND_LOGS_IN = textwrap.dedent("""
    import pytest

    def test_board_boots_to_a_shell(board, console):
        board.power.off()
        board.power.on()
        console.expect("login:", timeout=10)
        assert "Welcome to Jumpstarter demo board!" in console.before
        console.sendline("root")
        console.expect("root@demo:~# ", timeout=10)
        console.sendline("uname -a")
        console.expect("GNU/Linux", timeout=10)
        board.power.off()
""")

WAITS_FOR_TEXT_THAT_NEVER_COMES = textwrap.dedent("""
    def test_waits_for_a_prompt_that_never_comes(board, console):
        board.power.off()
        board.power.on()
        console.expect("this text is never printed", timeout=1.5)
""")


def inner_pytest(
    directory: str, source: str, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    path = os.path.join(directory, "test_inner_board.py")
    with open(path, "w") as handle:
        handle.write(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", path, *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def inner_env(cli_env: dict[str, str]) -> dict[str, str]:
    env = dict(cli_env)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    return env


def test_board_and_console_fixtures_drive_the_board_named_by_jumpstarter_host(demo_lab, workdir, inner_env):
    result = inner_pytest(workdir, BOOTS_AND_LOGS_IN, env={**inner_env, "JUMPSTARTER_HOST": demo_lab.socket})

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_board_and_console_fixtures_drive_the_board_named_by_the_host_option(demo_lab, workdir, inner_env):
    result = inner_pytest(workdir, BOOTS_AND_LOGS_IN, "--jumpstarter-host", demo_lab.socket, env=inner_env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_expect_timeout_fails_the_test_and_shows_the_last_console_output(demo_lab, workdir, inner_env):
    result = inner_pytest(
        workdir, WAITS_FOR_TEXT_THAT_NEVER_COMES, "--jumpstarter-host", demo_lab.socket, env=inner_env
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert "'this text is never printed' not seen within 1.5s" in result.stdout
    assert "last output:" in result.stdout
    assert "demo login:" in result.stdout


def test_no_board_given_is_a_usage_error_not_a_test_failure(workdir, inner_env):
    result = inner_pytest(workdir, BOOTS_AND_LOGS_IN, env=inner_env)  # empty boards dir, no host

    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "jumpstarter: no board" in output
    assert "pytest_plugin.py" not in output  # a message for the user, not the plugin's traceback
