"""The CLI's command tables: every row has help and a named handler, and `--help` of every command works."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter.cli.builder import Arg, Command, OneOf, add_commands, arg, one_of
from jumpstarter.cli.main import BOARD_COMMANDS, STATIC_COMMANDS, full_parser, main
from jumpstarter.cli.remote_commands import REMOTE_SHELL_COMMANDS


def rows(table: tuple[Command, ...], path: tuple[str, ...] = ()) -> Iterator[tuple[str, Command]]:
    for row in table:
        here = (*path, row.name)
        yield " ".join(here), row
        yield from rows(row.commands, here)


def options(row: Command) -> Iterator[Arg]:
    for spec in row.args:
        yield from spec.args if isinstance(spec, OneOf) else (spec,)


TABLE_ROWS = [*rows(STATIC_COMMANDS), *rows(BOARD_COMMANDS)]
#: `shell`/`run` on a leased board: the same names as the board's own, so kept apart from TABLE_ROWS.
REMOTE_SHELL_ROWS = [(f"{path} -l", row) for path, row in rows(REMOTE_SHELL_COMMANDS)]


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """(path, its help in the parent's list, its parser) for every subcommand of the built parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), helps.get(name, ""), sub
                yield from subcommands(sub, (*path, name))


BUILT = list(subcommands(full_parser(None, "")))


ALL_ROWS = [*TABLE_ROWS, *REMOTE_SHELL_ROWS]


@pytest.mark.parametrize(("path", "row"), ALL_ROWS, ids=[p for p, _ in ALL_ROWS])
def test_every_table_row_has_help_a_named_handler_and_helped_options(path, row):
    assert row.help.strip(), path
    if row.commands:
        assert row.handler is None, f"{path}: a group runs its subcommands"
    else:
        assert callable(row.handler), path
        assert row.handler.__name__ != "<lambda>", f"{path}: handlers are named functions"
    for spec in options(row):
        assert str(spec.options.get("help", "")).strip(), f"{path} {spec.flags}: option without help"


def test_the_remote_commands_are_table_rows():
    described = dict(TABLE_ROWS)
    for path in ("login", "config client create", "get exporters", "lease create", "lease release"):
        assert callable(described[path].handler), path
    assert [path for path, _ in REMOTE_SHELL_ROWS] == ["shell -l", "run -l"]


@pytest.mark.parametrize(("path", "helptext", "parser"), BUILT, ids=[" ".join(p) for p, _, _ in BUILT])
def test_every_built_subcommand_is_listed_with_help_and_runs_something(path, helptext, parser):
    assert helptext.strip(), f"{' '.join(path)} is listed without help"
    assert callable(parser.get_default("func")), f"{' '.join(path)} has no handler"


def test_a_row_without_help_or_handler_is_refused_when_the_table_is_written():
    with pytest.raises(ValueError, match="no help"):
        Command("broken", " ", print)
    with pytest.raises(ValueError, match="handler or subcommands"):
        Command("broken", "does nothing")


def test_builder_sets_the_handler_and_env_defaults_at_build_time(monkeypatch):
    def handler(args: argparse.Namespace) -> int:
        return 7

    table = (
        Command(
            "probe",
            "a probe",
            handler,
            args=(arg("--where", default_from=lambda: os.environ["PROBE_AT"], help="h"),),
        ),
    )
    parser = argparse.ArgumentParser(prog="t")
    monkeypatch.setenv("PROBE_AT", "here")
    add_commands(parser.add_subparsers(), table)
    args = parser.parse_args(["probe"])
    assert (args.func(args), args.where) == (7, "here")


def test_one_of_makes_options_that_exclude_each_other(capsys):
    table = (
        Command(
            "probe",
            "a probe",
            print,
            args=(one_of(arg("--ca", help="h"), arg("--insecure", action="store_true", help="h")),),
        ),
    )
    parser = argparse.ArgumentParser(prog="t")
    add_commands(parser.add_subparsers(), table)
    assert parser.parse_args(["probe", "--insecure"]).insecure is True
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["probe", "--ca", "x", "--insecure"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["login"], ["config", "client", "create", "alice"]])
def test_login_and_config_create_refuse_a_ca_together_with_insecure(command, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JMP_CLIENT_CONFIG_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as exc:
        main([*command, "--token", "t", "--ca", "ca.pem", "--insecure"])
    assert exc.value.code == 2
    assert "--insecure: not allowed with argument --ca" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize(
    "group", [["admin"], ["admin", "policy"], ["lab"], ["lease"], ["get"], ["config"], ["config", "client"]]
)
def test_a_group_alone_prints_its_help_and_exits_2(group, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JUMPSTARTER_BOARDS_DIR", str(tmp_path))
    assert main(group) == 2
    assert f"usage: jumpstarter {' '.join(group)}" in capsys.readouterr().err


def run_help(*words: str, boards: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JUMPSTARTER_BOARDS_DIR=boards, COLUMNS="100")
    env.pop("JUMPSTARTER_HOST", None)
    return subprocess.run(
        [sys.executable, "-m", "jumpstarter.cli.main", *words, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def flat(text: str) -> str:
    """Text without whitespace: argparse wraps lines at spaces and after hyphens (`controller-issued`)."""
    return "".join(text.split())


DESCRIBED = dict(TABLE_ROWS)


@pytest.mark.parametrize(
    "path", [(), *(p for p, _, _ in BUILT)], ids=["jumpstarter", *(" ".join(p) for p, _, _ in BUILT)]
)
def test_help_of_every_command_exits_0_and_shows_its_description(path, tmp_path):
    result = run_help(*path, boards=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert flat(f"usage: jumpstarter {' '.join(path)}") in flat(result.stdout)
    row = DESCRIBED.get(" ".join(path))
    if row is not None:
        assert flat(row.description or row.help) in flat(result.stdout)


BOARD = textwrap.dedent("""\
    apiVersion: jumpstarter.dev/v1alpha1
    kind: ExporterConfig
    metadata: {namespace: test, name: test}
    export:
      echo: {type: network.echo, description: a loopback service}
""")


@pytest.mark.parametrize("path", [row.name for row in BOARD_COMMANDS])
def test_help_of_every_board_command_exits_0_and_shows_its_description(path, tmp_path):
    config = tmp_path / "board.yaml"
    config.write_text(BOARD)
    result = run_help("--config", str(config), path, boards=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert flat(DESCRIBED[path].help) in flat(result.stdout)


@pytest.mark.parametrize(("path", "row"), REMOTE_SHELL_ROWS, ids=[p for p, _ in REMOTE_SHELL_ROWS])
def test_help_of_shell_and_run_on_a_leased_board_shows_their_description(path, row, tmp_path):
    result = run_help(row.name, "-l", "board=x", boards=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert flat(f"usage: jumpstarter {row.name}") in flat(result.stdout)
    assert flat(row.description or row.help) in flat(result.stdout)
    assert "--acquisition-timeout" in result.stdout


def test_only_cli_output_pads_table_columns():
    package = Path(__file__).resolve().parents[2] / "jumpstarter"
    padders = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if ".ljust(" in path.read_text() and path != package / "cli" / "output.py"
    ]
    assert padders == [], "use jumpstarter.cli.output.table / format_table"
