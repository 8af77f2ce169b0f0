"""Shell: commands named in the exporter config, run on the lab host, their output streamed."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from jumpstarter.driver.decorators import export
from jumpstarter.driver.interface import Interface, wire_number


class ShellChunk(NamedTuple):
    """One piece of a running command's output; on the wire `[stdout, stderr, returncode|null]`.

    `returncode` is None until the last piece.
    """

    stdout: str
    stderr: str
    returncode: int | None

    def to_value(self) -> list[Any]:
        return [self.stdout, self.stderr, self.returncode]

    @classmethod
    def from_value(cls, value: Any) -> ShellChunk:
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"shell output: expected [stdout, stderr, returncode], got {value!r}")
        stdout, stderr, code = value
        if not isinstance(stdout or "", str) or not isinstance(stderr or "", str):
            raise ValueError(f"shell output: expected text, got {value!r}")
        return cls(stdout or "", stderr or "", None if code is None else int(wire_number(code, "returncode")))


@dataclass
class ShellResult:
    """A finished command: all its output and its exit code."""

    stdout: str
    stderr: str
    returncode: int


class ShellInterface(Interface):
    """Configured commands: `get_methods()` -> names, `call_method(method, env, *args)` streaming ShellChunks.

    Serve a shell with one command and run it:

    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.shell import Shell
    >>> with serve(Shell(methods={"greet": 'echo "hello $1"'})) as shell:
    ...     shell.methods()
    ...     shell.run("greet", "world")
    ['greet']
    ShellResult(stdout='hello world\\n', stderr='', returncode=0)
    """

    client = "jumpstarter_driver_shell.client.ShellClient"
    client_class = "jumpstarter.client.drivers.shell:ShellClient"
    also_drives = ("jumpstarter.client.drivers.shell.ShellClient",)
    kind = "shell"

    @export
    @abstractmethod
    async def get_methods(self) -> list[str]:
        """The names of the configured commands."""

    @export
    @abstractmethod
    async def call_method(self, method: str, env: dict[str, Any], *args: str) -> AsyncIterator[ShellChunk]:
        """Run a configured command; yields [stdout, stderr, None] pieces, then [.., .., exit code]."""
        raise NotImplementedError
        yield ShellChunk("", "", None)  # pragma: no cover (an async generator, like its implementations)
