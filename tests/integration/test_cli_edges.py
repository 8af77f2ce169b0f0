"""The CLI's rough edges, tried as a new user would, against real exporterds (issue 12 §3).

Exit codes like a shell's, `call` on every driver, clear errors for a wrong --host, an empty
config or a socket of another group, `shell --help` without a board, the board named last,
bash completion, and the demo's kept shell with `jumpstarter` on PATH.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import CLI, exporter_config

REPO = Path(__file__).resolve().parents[2]


def typed_board(workdir: str, tag: str = "board") -> str:
    """power (a relay that creates `<tag>.powered`), a mock meter, echo and shell drivers."""
    flag = os.path.join(workdir, f"{tag}.powered")
    return exporter_config(
        f"""
        power:
          type: power.command
          config:
            on: touch {flag}
            off: rm -f {flag}
        meter:
          type: power.mock
        echo:
          type: network.echo
        tools:
          type: shell
          config:
            methods:
              greet: 'echo "hello $1"'
    """,
        name=tag,
    )


@pytest.fixture
def board(exporterd, workdir):
    return exporterd.start(typed_board(workdir))


# -- exit codes --------------------------------------------------------------------------------


def test_run_without_a_command_is_a_usage_error_exit_2(cli, board):
    result = cli("--host", board.socket, "run")

    assert result.returncode == 2, result.stderr
    assert "run needs a command" in result.stderr


def test_run_exits_127_for_a_missing_command_and_126_for_one_that_cannot_execute(cli, board, workdir):
    missing = cli("--host", board.socket, "run", "--", "/nonexistent/tool")
    assert missing.returncode == 127, missing.stderr
    assert missing.stderr.strip() == "jumpstarter: /nonexistent/tool: command not found"

    script = Path(workdir) / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    denied = cli("--host", board.socket, "run", "--", str(script))
    assert denied.returncode == 126, denied.stderr
    assert f"{script}: cannot execute" in denied.stderr


# -- DRIVER call METHOD ARGS... on typed drivers ---------------------------------------------


def test_call_and_stream_call_work_on_typed_drivers(cli, board, workdir):
    on = cli("--host", board.socket, "power", "call", "on")
    assert on.returncode == 0, on.stderr
    assert os.path.exists(os.path.join(workdir, "board.powered"))

    methods = cli("--host", board.socket, "tools", "call", "get_methods")
    assert methods.returncode == 0, methods.stderr
    assert json.loads(methods.stdout) == ["greet"]

    readings = cli("--host", board.socket, "meter", "stream-call", "read")
    assert readings.returncode == 0, readings.stderr
    assert json.loads(readings.stdout.splitlines()[0])["voltage"] == 5.0

    listed = cli("--host", board.socket, "echo", "--help")
    assert "call" in listed.stdout and "stream-call" in listed.stdout


def test_echo_does_not_offer_an_address_its_driver_lacks(cli, board):
    helped = cli("--host", board.socket, "echo", "--help")
    assert helped.returncode == 0
    assert "address" not in helped.stdout

    result = cli("--host", board.socket, "echo", "address")
    assert result.returncode == 2
    assert "has no unary method" not in result.stderr
    assert "invalid choice: 'address'" in result.stderr


def test_power_read_n_prints_that_many_readings_from_a_switch_that_sends_one(cli, board):
    result = cli("--host", board.socket, "meter", "read", "-n", "3", "--interval", "0.05")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["5.000 V  0.000 A  0.000 W"] * 3


# -- clear errors ------------------------------------------------------------------------------


def test_host_naming_a_regular_file_says_it_is_not_a_socket(cli, workdir):
    path = Path(workdir) / "notes.txt"
    path.write_text("not a socket\n")

    result = cli("--host", str(path), "power", "on")

    assert result.returncode == 1
    assert result.stderr.strip() == f"jumpstarter: error: {path} is a regular file, not an exporter's socket"


def test_an_empty_config_file_says_it_is_empty(cli, workdir):
    empty = Path(workdir) / "empty.yaml"
    empty.write_text("")

    board = cli("--config", str(empty), "power", "on")
    client = cli("lease", "list", env={"JMP_CLIENT_CONFIG": str(empty)})

    for result, what in ((board, "ExporterConfig"), (client, "ClientConfig")):
        assert result.returncode == 2, result.stderr
        assert f"{empty}: the file is empty" in result.stderr and what in result.stderr
        assert "NoneType" not in result.stderr and "null" not in result.stderr


def test_permission_hint_names_the_sockets_own_group(exporterd, workdir, cli_env):
    group = grp.getgrgid(20 if _has_gid(20) else os.getgid())  # dialout on Debian
    os.chmod(workdir, 0o755)
    boards = os.path.join(workdir, "boards")
    exporter = exporterd.start(typed_board(workdir))
    os.chmod(boards, 0o755)
    os.chown(exporter.socket, 0, group.gr_gid)
    os.chmod(exporter.socket, 0o660)
    nobody = pwd.getpwnam("nobody")

    result = subprocess.run(
        [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            *CLI,
            "--host",
            exporter.socket,
            "power",
            "on",
        ],
        env={**cli_env, "HOME": workdir},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )

    assert result.returncode == 1, result.stderr
    assert f"add yourself to the socket's group {group.gr_name}" in result.stderr
    assert f"usermod -aG {group.gr_name} $USER" in result.stderr


def _has_gid(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return gid != os.getgid()


def test_pytest_plugin_without_a_board_names_its_own_options(workdir, cli_env):
    (Path(workdir) / "test_inner.py").write_text("def test_x(board):\n    pass\n")
    env = {k: v for k, v in cli_env.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_inner.py"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    assert "--jumpstarter-host PATH" in output and "--jumpstarter-selector SELECTOR" in output
    assert "use --host PATH" not in output


# -- help, the board named last ---------------------------------------------------------------


def test_shell_help_without_a_board_prints_shells_help(cli):
    result = cli("shell", "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: jumpstarter shell")
    assert "-l SELECTOR" in result.stdout
    assert "Drive lab boards" not in result.stdout  # not the top-level help


def test_the_board_named_last_is_used_only_where_it_cannot_be_an_argument(exporterd, workdir, cli):
    first = exporterd.start(typed_board(workdir, "first"), name="first")
    exporterd.start(typed_board(workdir, "second"), name="second")
    env = {"JUMPSTARTER_BOARDS_DIR": os.path.dirname(first.socket)}

    on = cli("power", "on", "second", env=env)
    assert on.returncode == 0, on.stderr
    assert os.path.exists(os.path.join(workdir, "second.powered"))
    assert not os.path.exists(os.path.join(workdir, "first.powered"))

    # `greet NAME` takes a word: "second" is its argument, so the board stays unnamed.
    greet = cli("tools", "greet", "second", env=env)
    assert greet.returncode == 1
    assert "several boards on this host" in greet.stderr

    explained = cli("--board", "first", "--help", env=env)
    assert "board last:" in explained.stdout


# -- completion --------------------------------------------------------------------------------


def bash_complete(line: str, env: dict[str, str]) -> list[str]:
    """What bash offers at the end of `line`, with our completion script loaded."""
    script = textwrap.dedent(f"""
        source {REPO / "completion" / "jumpstarter.bash"}
        COMP_LINE={line!r}
        read -ra COMP_WORDS <<< "$COMP_LINE"
        [[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
        COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
        _jumpstarter
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """)
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


def test_bash_completion_offers_commands_boards_and_driver_methods(exporterd, workdir, cli_env):
    first = exporterd.start(typed_board(workdir, "rpi4-01"), name="rpi4-01")
    env = {
        **cli_env,
        "JUMPSTARTER_BOARDS_DIR": os.path.dirname(first.socket),
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }

    assert {"power", "tools", "lease", "completion"} <= set(bash_complete("jumpstarter ", env))
    assert bash_complete("jumpstarter po", env) == ["port-forward", "power"]
    assert bash_complete("jumpstarter power ", env) == ["call", "cycle", "off", "on", "read", "stream-call"]
    assert bash_complete("jumpstarter tools ", env) == ["call", "greet", "stream-call"]
    assert bash_complete("jumpstarter --board ", env) == ["rpi4-01"]
    assert bash_complete("jumpstarter power on ", env) == ["rpi4-01"]


def test_completion_scripts_in_the_checkout_are_what_the_cli_prints(cli):
    for shell, name in (("bash", "jumpstarter.bash"), ("zsh", "_jumpstarter")):
        printed = cli("completion", shell)
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout == (REPO / "completion" / name).read_text(), name


# -- the demo's kept shell ---------------------------------------------------------------------


def test_demo_keep_opens_a_shell_with_jumpstarter_on_path(cli, workdir):
    private_tmp = os.path.join(workdir, "tmp")
    os.makedirs(private_tmp)
    bare_path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if p and p != os.path.dirname(sys.executable)
    )

    result = cli(
        "demo",
        "--keep",
        env={"TMPDIR": private_tmp, "SHELL": "/bin/sh", "PATH": bare_path},
        input="command -v jumpstarter && jumpstarter power on && echo powered-from-the-kept-shell\n",
        timeout=90,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert os.path.join(os.path.dirname(sys.executable), "jumpstarter") in result.stdout
    assert "powered-from-the-kept-shell" in result.stdout
