"""Shell driver: named commands from the exporter config, run on the lab host.

Clients can only run the commands the config names (never arbitrary ones);
their arguments arrive as `$1…` and the command name as `$0`. The environment
is rebuilt from scratch: a fixed base, the config's `env`, then the caller's
variables minus dangerous ones (`LD_*`, `PATH`, `HOME`, `IFS`, `BASH_ENV`, ...).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter.driver import Driver, export

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BLOCKED = re.compile(
    r"^(LD_.*|DYLD_.*|PATH|HOME|SHELL|IFS|ENV|BASH_ENV|BASH_FUNC_.*|PYTHON.*|PERL5.*|RUBY.*|NODE_OPTIONS|PS4|GCONV_PATH)$"
)
MAX_ENV = 64
MAX_VALUE = 4096
MAX_ARGS = 256
MAX_ARG = 64 * 1024
CHUNK = 16 * 1024


class Shell(Driver):
    """Configured commands run on the lab host.

    Config: `methods` (name -> script, or upstream's {command, description, timeout}),
    `shell` (["bash", "-c"]), `timeout` (300 s), `cwd`, `env`.
    """

    client = "jumpstarter_driver_shell.client.ShellClient"
    kind = "shell"

    def __init__(
        self,
        *,
        methods: dict[str, str],
        shell: list[str] | None = None,
        timeout: float = 300.0,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if not isinstance(methods, dict) or not methods:
            raise ValueError("methods: expected a mapping of command name to script")
        self.methods: dict[str, str] = {}
        self.method_timeouts: dict[str, float] = {}
        for name, spec in methods.items():
            if isinstance(spec, dict):  # upstream form: {command, description?, timeout?}
                if set(spec) - {"command", "description", "timeout"} or not isinstance(
                    spec.get("command"), str
                ):
                    raise ValueError(
                        f"methods: {name}: expected a script or {{command, description, timeout}}"
                    )
                if "description" in spec:
                    self.methods_description.setdefault(str(name), str(spec["description"]))
                if "timeout" in spec:
                    self.method_timeouts[str(name)] = float(spec["timeout"])
                spec = spec["command"]
            if not isinstance(spec, str):
                raise ValueError(f"methods: {name}: expected a script (text)")
            self.methods[str(name)] = spec
        self.shell = list(shell or ["bash", "-c"])
        self.timeout = float(timeout)
        self.cwd = cwd
        self.env = {str(k): str(v) for k, v in (env or {}).items()}

    def _environment(self, extra: dict[str, Any]) -> dict[str, str]:
        if not isinstance(extra, dict):
            raise ValueError("env must be a mapping of variable names to values")
        if len(extra) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} environment variables")
        env = {
            "PATH": BASE_PATH,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": os.environ.get("HOME", "/"),
        }
        env.update(self.env)
        for key, value in extra.items():
            if not NAME_RE.match(key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if BLOCKED.match(key):
                raise ValueError(f"environment variable {key} may not be set by a client")
            text = str(value)
            if len(text) > MAX_VALUE or "\0" in text:
                raise ValueError(f"environment variable {key} is too long or contains NUL")
            env[key] = text
        return env

    @export
    async def get_methods(self) -> list[str]:
        """The names of the configured commands."""
        return list(self.methods)

    @export
    async def call_method(self, method: str, env: dict[str, Any], *args: str) -> AsyncIterator[list[Any]]:
        """Run a configured command; yields [stdout, stderr, None] pieces, then [.., .., exit code]."""
        script = self.methods.get(method)
        if script is None:
            raise ValueError(f"no command {method!r} (available: {', '.join(self.methods)})")
        if len(args) > MAX_ARGS or any(len(str(a)) > MAX_ARG or "\0" in str(a) for a in args):
            raise ValueError("too many or too long arguments")
        environment = self._environment(env or {})
        self.log.info("running command", operation=method)
        process = await asyncio.create_subprocess_exec(
            *self.shell,
            script,
            method,
            *[str(a) for a in args],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            cwd=self.cwd,
            start_new_session=True,
        )
        queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()

        async def read(index: int, pipe: asyncio.StreamReader) -> None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            try:
                while data := await pipe.read(CHUNK):
                    await queue.put((index, decoder.decode(data)))
                await queue.put((index, decoder.decode(b"", final=True)))
            finally:
                await queue.put(None)

        assert process.stdout is not None and process.stderr is not None
        readers = [asyncio.create_task(read(0, process.stdout)), asyncio.create_task(read(1, process.stderr))]
        loop = asyncio.get_running_loop()
        timeout = self.method_timeouts.get(method, self.timeout)
        deadline = loop.time() + timeout
        try:
            open_pipes = 2
            while open_pipes:
                item = await asyncio.wait_for(queue.get(), deadline - loop.time())
                if item is None:
                    open_pipes -= 1
                elif item[1]:
                    yield [item[1], "", None] if item[0] == 0 else ["", item[1], None]
            code = await asyncio.wait_for(process.wait(), max(0.1, deadline - loop.time()))
            yield ["", "", code]
        except TimeoutError:
            raise TimeoutError(f"command {method!r} did not finish within {timeout:g}s") from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
