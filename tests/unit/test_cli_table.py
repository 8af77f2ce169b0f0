"""The CLI's command tables: every row has help and a named handler, and `--help` of every command works."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from jumpstarter.cli.builder import Command, Elsewhere, add_commands, arg
from jumpstarter.cli.main import BOARD_COMMANDS, STATIC_COMMANDS, full_parser, main


def rows(table: tuple[Command | Elsewhere, ...], path: tuple[str, ...] = ()) -> Iterator[tuple[str, Command]]:
    for row in table:
        if isinstance(row, Command):
            here = (*path, row.name)
            yield " ".join(here), row
            yield from rows(row.commands, here)


TABLE_ROWS = [*rows(STATIC_COMMANDS), *rows(BOARD_COMMANDS)]


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


@pytest.mark.parametrize(("path", "row"), TABLE_ROWS, ids=[p for p, _ in TABLE_ROWS])
def test_every_table_row_has_help_a_named_handler_and_helped_options(path, row):
    assert row.help.strip(), path
    if row.commands:
        assert row.handler is None, f"{path}: a group runs its subcommands"
    else:
        assert callable(row.handler), path
        assert row.handler.__name__ != "<lambda>", f"{path}: handlers are named functions"
    for spec in row.args:
        assert str(spec.options.get("help", "")).strip(), f"{path} {spec.flags}: option without help"


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


@pytest.mark.parametrize("group", [["admin"], ["admin", "policy"], ["lab"], ["lease"], ["config", "client"]])
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
    return " ".join(text.split())


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
