"""The `jumpstarter` CLI as a subprocess against real exporterds (and in-process targets)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap

import pytest

import jumpstarter
from jumpstarter.demo.lab import wait_for

from .conftest import CLI, PipeCollector, exporter_config, read_until, stop


def command_board(workdir: str, tag: str = "board") -> str:
    """A board whose power switch creates/removes the file `<workdir>/<tag>.powered`."""
    flag = os.path.join(workdir, f"{tag}.powered")
    return exporter_config(
        f"""
        power:
          type: power.command
          description: relay of {tag}
          config:
            on: touch {flag}
            off: rm {flag}
        tools:
          type: shell
          config:
            methods:
              both: 'echo "out $1"; echo "err $1" >&2; exit 3'
              wait_for_file: 'echo waiting; while [ ! -e "$1" ]; do sleep 0.02; done; echo done'
    """,
        name=tag,
    )


@pytest.fixture
def board(exporterd, workdir):
    return exporterd.start(command_board(workdir))


def powered(workdir: str, tag: str = "board") -> bool:
    return os.path.exists(os.path.join(workdir, f"{tag}.powered"))


def test_power_on_and_off_exit_0_and_switch_the_relay(cli, board, workdir):
    on = cli("--host", board.socket, "power", "on")
    assert on.returncode == 0, on.stderr
    assert powered(workdir)

    off = cli("--host", board.socket, "power", "off")
    assert off.returncode == 0, off.stderr
    assert not powered(workdir)


def test_unknown_driver_exits_2_and_names_the_valid_drivers(cli, board):
    result = cli("--host", board.socket, "teleport", "on")

    assert result.returncode == 2
    assert "teleport" in result.stderr
    for name in ("power", "tools", "describe"):
        assert name in result.stderr


def test_unknown_command_exits_2_and_names_the_valid_commands(cli, board):
    result = cli("--host", board.socket, "power", "sideways")

    assert result.returncode == 2
    for name in ("on", "off", "cycle"):
        assert f"'{name}'" in result.stderr


def test_driver_error_exits_1_with_one_line_on_stderr_and_no_traceback(cli, board):
    result = cli("--host", board.socket, "power", "off")  # rm of a missing file fails

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "power command exited with 1" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_debug_shows_the_traceback_of_a_driver_error(cli, board):
    result = cli("--debug", "--host", board.socket, "power", "off")

    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "power command exited with 1" in result.stderr


@pytest.mark.parametrize("command", ["run", "shell"])
def test_run_and_shell_exit_with_the_command_code_and_set_jumpstarter_host(cli, board, workdir, command):
    seen = os.path.join(workdir, "seen-host")

    result = cli(
        "--host", board.socket, command, "--", "sh", "-c", f'printf %s "$JUMPSTARTER_HOST" > {seen}; exit 7'
    )

    assert result.returncode == 7, result.stderr
    with open(seen) as handle:
        assert handle.read() == board.socket


def test_run_lets_a_nested_cli_call_reach_the_board(cli, board, workdir):
    result = cli("--host", board.socket, "run", "--", *CLI, "power", "on")

    assert result.returncode == 0, result.stderr
    assert powered(workdir)


def test_describe_lists_drivers_with_their_methods(cli, board):
    result = cli("--host", board.socket, "describe")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert board.socket in out
    assert "power: PowerClient" in out
    assert "relay of board" in out
    assert "- on: Run the `on` command." in out
    assert "- off: Run the `off` command." in out
    assert "tools: ShellClient" in out
    assert "- get_methods:" in out


def test_in_process_driver_logs_go_to_stderr_never_stdout(cli, workdir):
    config = os.path.join(workdir, "local.yaml")
    with open(config, "w") as handle:
        handle.write(command_board(workdir, "local"))

    result = cli("--logs", "--config", config, "tools", "both", "x")

    assert result.returncode == 3, result.stderr
    assert result.stdout == "out x\n"
    assert "running command" in result.stderr  # the driver's log record was produced, on stderr


def test_remote_driver_logs_follow_on_stderr_and_never_reach_stdout(board, cli_env, workdir, processes):
    release = os.path.join(workdir, "release")
    process = subprocess.Popen(
        [*CLI, "--logs", "--host", board.socket, "tools", "wait_for_file", release],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=cli_env,
    )
    processes.append(process)
    stdout, stderr = PipeCollector(process.stdout), PipeCollector(process.stderr)
    wait_for(lambda: "waiting" in stdout.text, 10, "command started", process)

    def switch_until_logged() -> bool:  # another client makes the exporter log a record
        with jumpstarter.connect(board.socket) as other:
            other.power.on()
        return "power on" in stderr.text

    wait_for(switch_until_logged, 10, "the exporter's log record on stderr", process)
    open(release, "w").close()

    assert process.wait(timeout=10) == 0
    stdout.thread.join(timeout=5)
    assert stdout.text == "waiting\ndone\n"
    assert "power on" not in stdout.text


def test_shell_driver_command_streams_stdout_and_stderr_separately_and_exits_with_its_code(cli, board):
    result = cli("--host", board.socket, "tools", "both", "hello")

    assert result.returncode == 3
    assert result.stdout == "out hello\n"
    assert result.stderr == "err hello\n"


def test_shell_driver_output_arrives_while_the_command_still_runs(board, cli_env, workdir, processes):
    release = os.path.join(workdir, "release")
    process = subprocess.Popen(
        [*CLI, "--host", board.socket, "tools", "wait_for_file", release],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=cli_env,
    )
    processes.append(process)

    read_until(process.stdout, "waiting\n", timeout=10)  # printed before the command can finish
    assert process.poll() is None
    open(release, "w").close()

    assert read_until(process.stdout, "done\n", timeout=10).endswith("done\n")
    assert process.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "form", [["port-forward", "ssh", "0"], ["ssh", "forward", "0"]], ids=["port-forward", "driver-forward"]
)
def test_port_forward_tunnels_a_local_port_to_the_tcp_service(
    exporterd, echo_server, cli_env, processes, form
):
    host, port = echo_server
    exporter = exporterd.start(
        exporter_config(f"""
        ssh:
          type: network.tcp
          config: {{host: {host}, port: {port}}}
    """)
    )
    process = subprocess.Popen(
        [*CLI, "--host", exporter.socket, *form],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=cli_env,
    )
    processes.append(process)

    local_port = int(read_until(process.stdout, "\n", timeout=10).strip())
    payloads = [b"hello through the tunnel", bytes(range(256)) * 64]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", local_port), timeout=10) as conn:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        assert received == payload

    stop(process)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", local_port), timeout=2).close()


def tgkill(pid: int, tid: int, sig: int) -> None:
    """Send `sig` to one thread of `pid`: how the kernel may deliver a Ctrl-C to any thread."""
    import ctypes

    number = {"x86_64": 234, "aarch64": 131}[os.uname().machine]  # SYS_tgkill
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


def test_port_forward_ends_on_ctrl_c_even_when_a_grpc_thread_receives_it(
    exporterd, echo_server, cli_env, processes
):
    host, port = echo_server
    exporter = exporterd.start(
        exporter_config(f"""
        ssh:
          type: network.tcp
          config: {{host: {host}, port: {port}}}
    """)
    )
    process = subprocess.Popen(
        [*CLI, "--host", exporter.socket, "port-forward", "ssh", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=cli_env,
    )
    processes.append(process)
    read_until(process.stdout, "\n", timeout=10)  # listening: gRPC's threads run by now
    others = [int(t) for t in os.listdir(f"/proc/{process.pid}/task") if int(t) != process.pid]
    assert others, "port-forward runs no thread besides the main one"

    tgkill(process.pid, others[0], signal.SIGINT)

    assert process.wait(timeout=30) == 0  # the old code waited for a wake-up that never came


def test_port_forward_to_an_unknown_driver_exits_2_naming_the_drivers(cli, board):
    result = cli("--host", board.socket, "port-forward", "nosuch", "0")

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "nosuch" in result.stderr
    assert "power" in result.stderr and "tools" in result.stderr


def test_forward_to_a_port_out_of_range_exits_2_without_a_traceback(cli, exporterd):
    exporter = exporterd.start(exporter_config("echo:\n  type: network.echo\n"))

    result = cli("--host", exporter.socket, "echo", "forward", "99999")

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "99999" in result.stderr


# -- choosing the board --------------------------------------------------------


@pytest.fixture
def two_boards(exporterd, workdir):
    boards_dir = os.path.join(workdir, "boards")
    first = exporterd.spawn(command_board(workdir, "alpha"), name="alpha")
    second = exporterd.spawn(command_board(workdir, "beta"), name="beta")
    return boards_dir, exporterd.wait_ready(first), exporterd.wait_ready(second)


def test_board_option_picks_that_board_from_the_boards_dir(cli, two_boards, workdir):
    boards_dir, _, _ = two_boards

    result = cli("--board", "beta", "power", "on", env={"JUMPSTARTER_BOARDS_DIR": boards_dir})

    assert result.returncode == 0, result.stderr
    assert powered(workdir, "beta")
    assert not powered(workdir, "alpha")


def test_unknown_board_name_exits_1_naming_the_boards_there(cli, two_boards):
    boards_dir, _, _ = two_boards

    result = cli("--board", "gamma", "power", "on", env={"JUMPSTARTER_BOARDS_DIR": boards_dir})

    assert result.returncode == 1
    assert "gamma" in result.stderr and "alpha" in result.stderr and "beta" in result.stderr


def test_two_boards_and_no_target_exits_1_naming_both(cli, two_boards, workdir):
    boards_dir, _, _ = two_boards

    result = cli("power", "on", env={"JUMPSTARTER_BOARDS_DIR": boards_dir})

    assert result.returncode == 1
    assert "alpha" in result.stderr and "beta" in result.stderr
    assert "--board" in result.stderr
    assert "Traceback" not in result.stderr
    assert not powered(workdir, "alpha") and not powered(workdir, "beta")


def test_the_only_board_of_the_host_is_used_without_a_target(cli, exporterd, workdir):
    exporterd.start(command_board(workdir, "solo"), name="solo")

    result = cli("power", "on", env={"JUMPSTARTER_BOARDS_DIR": os.path.join(workdir, "boards")})

    assert result.returncode == 0, result.stderr
    assert powered(workdir, "solo")


def test_no_arguments_lists_the_boards_of_this_host(cli, two_boards):
    boards_dir, _, _ = two_boards

    result = cli(env={"JUMPSTARTER_BOARDS_DIR": boards_dir})

    assert result.returncode == 0, result.stderr
    assert boards_dir in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "ready" in lines["alpha"] and "ready" in lines["beta"]


def test_no_arguments_still_lists_boards_when_udev_is_unavailable(cli, two_boards, workdir):
    boards_dir, _, _ = two_boards
    # A pyudev that fails to import, as it does on a host without libudev.
    fake = os.path.join(workdir, "no-udev", "pyudev")
    os.makedirs(fake)
    with open(os.path.join(fake, "__init__.py"), "w") as handle:
        handle.write("raise ImportError('libudev.so.1: cannot open shared object file')\n")
    pythonpath = os.pathsep.join(filter(None, [os.path.dirname(fake), os.environ.get("PYTHONPATH")]))

    result = cli(env={"JUMPSTARTER_BOARDS_DIR": boards_dir, "PYTHONPATH": pythonpath})

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "alpha" in result.stdout and "beta" in result.stdout
    assert "detection unavailable" in result.stdout
    assert "libudev" in result.stdout


# -- in-process targets --------------------------------------------------------


def test_config_option_serves_the_board_in_process_and_cleans_up(cli, workdir):
    config = os.path.join(workdir, "local.yaml")
    with open(config, "w") as handle:
        handle.write(command_board(workdir, "local"))
    private_tmp = os.path.join(workdir, "tmp")
    os.makedirs(private_tmp)

    result = cli("--config", config, "power", "on", env={"TMPDIR": private_tmp, "XDG_RUNTIME_DIR": ""})

    assert result.returncode == 0, result.stderr
    assert powered(workdir, "local")
    assert os.listdir(private_tmp) == []


def test_config_option_with_an_invalid_config_exits_2_with_file_and_line(cli, workdir):
    config = os.path.join(workdir, "broken.yaml")
    with open(config, "w") as handle:
        handle.write(exporter_config("power:\n  type: power.teleport\n"))

    result = cli("--config", config, "power", "on")

    assert result.returncode == 2
    assert f"{config}:6: export.power.type: unknown driver type 'power.teleport'" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_option_serves_a_python_environment_file(cli, workdir):
    flag = os.path.join(workdir, "env.powered")
    env_file = os.path.join(workdir, "bench.py")
    with open(env_file, "w") as handle:
        handle.write(
            textwrap.dedent(f"""
            from jumpstarter.drivers.composite import Composite
            from jumpstarter.drivers.network import EchoNetwork
            from jumpstarter.drivers.power import CommandPower

            board = Composite(children={{
                "power": CommandPower(on="touch {flag}", off="rm {flag}"),
                "echo": EchoNetwork(description="loopback"),
            }})
        """)
        )

    on = cli("--env", env_file, "power", "on")
    described = cli("--env", env_file, "describe")

    assert on.returncode == 0, on.stderr
    assert os.path.exists(flag)
    assert described.returncode == 0, described.stderr
    assert "power: PowerClient" in described.stdout and "echo: NetworkClient" in described.stdout
