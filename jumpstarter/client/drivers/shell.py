"""Shell client: run the commands an exporter's config names, streaming their output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from jumpstarter.client.base import DriverClient
from jumpstarter.interfaces.shell import ShellChunk, ShellInterface, ShellResult

__all__ = ["ShellChunk", "ShellClient", "ShellResult"]


class ShellClient(DriverClient):
    """Commands configured on the lab host.

    `board.tools.run("flash", "image.bin")` or `board.tools.flash("image.bin")`.
    """

    interface = ShellInterface

    def methods(self) -> list[str]:
        """The command names this shell driver offers."""
        return [str(m) for m in self.call("get_methods")]

    def stream_run(self, method: str, *args: str, env: dict[str, str] | None = None) -> Iterator[ShellChunk]:
        """Yields (stdout, stderr, returncode-or-None) pieces as the command runs."""
        for item in self.streamingcall("call_method", method, env or {}, *args):
            yield ShellChunk.from_value(item)

    def run(self, method: str, *args: str, env: dict[str, str] | None = None) -> ShellResult:
        """Run a configured command to completion."""
        out: list[str] = []
        err: list[str] = []
        code = -1
        for stdout, stderr, rc in self.stream_run(method, *args, env=env):
            out.append(stdout)
            err.append(stderr)
            if rc is not None:
                code = rc
        return ShellResult("".join(out), "".join(err), code)

    def __getattr__(self, name: str) -> Any:
        # Configured commands read as methods: board.tools.flash("image.bin")
        if name.startswith("_") or name in self.__dict__.get("children", {}):
            return super().__getattr__(name)
        return lambda *args, env=None: self.run(name, *args, env=env)

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        try:
            names = self.methods()
        except Exception as exc:  # the CLI still works for other drivers
            names = []
            parser.epilog = f"(could not list commands: {exc})"
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        for name in names:
            cmd = sub.add_parser(name, help=self.method_help(name, f"run {name} on the lab host"))
            cmd.add_argument(
                "-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment"
            )
            cmd.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the command")
            cmd.set_defaults(func=lambda a, name=name: self._run_cli(name, a))

    def _run_cli(self, name: str, args: argparse.Namespace) -> int:
        env: dict[str, str] = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--env expects KEY=VALUE, got {item!r}")
            env[key] = value
        code = 0
        for stdout, stderr, rc in self.stream_run(name, *args.args, env=env):
            if stdout:
                sys.stdout.write(stdout)
                sys.stdout.flush()
            if stderr:
                sys.stderr.write(stderr)
                sys.stderr.flush()
            if rc is not None:
                code = int(rc)
        return code
