"""Shell driver: named commands from the exporter config, run on the lab host.

Clients can only run the commands the config names (never arbitrary ones);
their arguments arrive as `$1…` and the command name as `$0`. The environment
is built from scratch: a fixed base (`PATH`, `LANG`, `HOME`), the config's
`env`, then only those client variables the method lists in `env_from_client`.
Any other client variable is refused: `GIT_CONFIG_*`, `SHELLOPTS`,
`http_proxy`, `OPENSSL_CONF`, `GLIBC_TUNABLES`... each turn a harmless command
into code execution on the lab host, and no denylist can name them all.

Writing methods safely (the script runs as the exporterd's user on the lab host):

    methods:
      status: git -C /srv/repo status            # short form: no client variables
      deploy:
        script: ./deploy.sh --board "$1" -- "$2"  # quote "$1"...: arguments are untrusted text
        env_from_client: [BUILD_ID]              # the only variable a client may set here
        description: Deploy a build
        timeout: 600

- quote every `"$1"` / `"$@"`; never `eval` them or paste them into `sh -c`;
- put `--` before client arguments of commands that take options;
- list in `env_from_client` only variables the script reads as data, never ones
  that configure a program (`GIT_*`, `*_proxy`, `LD_*`, `PYTHON*`...).

Upstream's `{command, description, timeout}` form loads as is (`command` and
`script` are the same key); upstream ignores `env_from_client`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from jumpstarter.driver import Driver, export
from jumpstarter.interfaces.shell import ShellChunk, ShellInterface

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Even the config may not hand these to clients: they reconfigure bash or the loader itself.
NEVER_FROM_CLIENT = re.compile(
    r"^(LD_.*|BASH_FUNC_.*|PATH|IFS|ENV|BASH_ENV|SHELLOPTS|BASHOPTS|PS4|GLIBC_TUNABLES|GCONV_PATH)$"
)
METHOD_KEYS = {"command", "script", "description", "timeout", "env_from_client"}
MAX_ENV = 64
MAX_VALUE = 4096
MAX_ARGS = 256
MAX_ARG = 64 * 1024
MAX_ARGS_TOTAL = 1024 * 1024  # well under the kernel's ARG_MAX
MAX_SCRIPT = 64 * 1024
CHUNK = 16 * 1024


@dataclass(frozen=True)
class Method:
    script: str
    timeout: float | None = None
    env_from_client: frozenset[str] = frozenset()


def _text(value: Any, what: str, limit: int) -> str:
    """A bounded, NUL-free string from config or client input."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{what}: expected text, got {type(value).__name__}")
    text = str(value)
    if len(text) > limit:
        raise ValueError(f"{what}: longer than {limit} characters")
    if "\0" in text:
        raise ValueError(f"{what}: contains a NUL character")
    return text


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"{what}: {value!r} is not a valid environment variable name")
    return value


def parse_method(name: str, spec: Any) -> tuple[Method, str | None]:
    """A method and its description from the short form (a script) or the mapping form."""
    if isinstance(spec, str):
        return Method(_text(spec, f"methods: {name}", MAX_SCRIPT)), None
    if not isinstance(spec, dict):
        raise ValueError(f"methods: {name}: expected a script or {{script, env_from_client, ...}}")
    unknown = set(spec) - METHOD_KEYS
    if unknown:
        raise ValueError(
            f"methods: {name}: unknown keys {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(METHOD_KEYS))})"
        )
    scripts = [spec[key] for key in ("script", "command") if key in spec]
    if len(scripts) != 1 or not isinstance(scripts[0], str):
        raise ValueError(f"methods: {name}: give the script as text in exactly one of `script`/`command`")
    timeout = None
    if "timeout" in spec:
        if isinstance(spec["timeout"], bool) or not isinstance(spec["timeout"], (int, float)):
            raise ValueError(f"methods: {name}: timeout: expected seconds")
        timeout = float(spec["timeout"])
        if timeout <= 0:
            raise ValueError(f"methods: {name}: timeout: must be positive")
    allowed = spec.get("env_from_client", [])
    if not isinstance(allowed, list) or len(allowed) > MAX_ENV:
        raise ValueError(f"methods: {name}: env_from_client: expected a list of at most {MAX_ENV} names")
    names = frozenset(_name(v, f"methods: {name}: env_from_client") for v in allowed)
    for variable in sorted(names):
        if NEVER_FROM_CLIENT.match(variable):
            raise ValueError(
                f"methods: {name}: env_from_client: {variable} changes how the shell or the loader "
                "runs, not just the script: it cannot come from a client"
            )
    description = str(spec["description"]) if "description" in spec else None
    return Method(_text(scripts[0], f"methods: {name}", MAX_SCRIPT), timeout, names), description


class Shell(ShellInterface, Driver):
    """Configured commands run on the lab host (see the module docstring for writing them safely).

    Config: `methods` (name -> script, or {script|command, env_from_client, description,
    timeout}), `shell` (["bash", "-c"]), `timeout` (300 s), `cwd`, `env` (fixed variables).
    """

    def __init__(
        self,
        *,
        methods: dict[str, Any],
        shell: list[str] | None = None,
        timeout: float = 300.0,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if not isinstance(methods, dict) or not methods:
            raise ValueError("methods: expected a mapping of command name to script")
        self.methods: dict[str, Method] = {}
        for name, spec in methods.items():
            method, description = parse_method(str(name), spec)
            self.methods[str(name)] = method
            if description is not None:
                self.methods_description.setdefault(str(name), description)
        self.shell = list(shell or ["bash", "-c"])
        self.timeout = float(timeout)
        self.cwd = cwd
        if not isinstance(env or {}, dict):
            raise ValueError("env: expected a mapping of variable names to values")
        self.env = {_name(k, "env"): _text(v, f"env: {k}", MAX_VALUE) for k, v in (env or {}).items()}

    def _environment(self, name: str, method: Method, extra: Any) -> dict[str, str]:
        """The command's environment; a client variable the method does not allow is refused."""
        if not isinstance(extra, Mapping):
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
            if key not in method.env_from_client:
                allowed = ", ".join(sorted(method.env_from_client)) or "none"
                raise ValueError(
                    f"command {name!r} does not take the environment variable {str(key)[:128]!r} "
                    f"from clients (it takes: {allowed}); an admin can allow it in the exporter "
                    f"config: methods: {{{name}: {{script: ..., env_from_client: [{str(key)[:128]}]}}}}"
                )
            env[key] = _text(value, f"environment variable {key}", MAX_VALUE)
        return env

    @staticmethod
    def _arguments(args: tuple[Any, ...]) -> list[str]:
        if len(args) > MAX_ARGS:
            raise ValueError(f"at most {MAX_ARGS} arguments")
        texts = [_text(a, f"argument {i + 1}", MAX_ARG) for i, a in enumerate(args)]
        if sum(len(t) for t in texts) > MAX_ARGS_TOTAL:
            raise ValueError(f"arguments longer than {MAX_ARGS_TOTAL} characters in all")
        return texts

    @export
    def get_methods(self) -> list[str]:  # never waits: answered in the gRPC worker thread
        """The names of the configured commands."""
        return list(self.methods)

    @export
    async def call_method(self, method: str, env: dict[str, Any], *args: str) -> AsyncIterator[ShellChunk]:
        """Run a configured command; yields [stdout, stderr, None] pieces, then [.., .., exit code]."""
        spec = self.methods.get(method)
        if spec is None:
            raise ValueError(f"no command {method!r} (available: {', '.join(self.methods)})")
        arguments = self._arguments(args)
        environment = self._environment(method, spec, env or {})
        self.log.info("running command", operation=method)
        process = await asyncio.create_subprocess_exec(
            *self.shell,
            spec.script,
            method,
            *arguments,
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
        timeout = spec.timeout or self.timeout
        deadline = loop.time() + timeout
        try:
            open_pipes = 2
            while open_pipes:
                item = await asyncio.wait_for(queue.get(), deadline - loop.time())
                if item is None:
                    open_pipes -= 1
                elif item[1]:
                    yield ShellChunk(item[1], "", None) if item[0] == 0 else ShellChunk("", item[1], None)
            code = await asyncio.wait_for(process.wait(), max(0.1, deadline - loop.time()))
            yield ShellChunk("", "", code)
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
