"""beforeLease / afterLease hooks: a script run on the lab host around every lease.

The script runs in a new process group with `JUMPSTARTER_HOST` set to the
board's own socket (so `jumpstarter power on` works in it), `LEASE_NAME` and
`CLIENT_NAME`; each output line is logged under `hook.beforeLease` /
`hook.afterLease`, which clients receive through LogStream. Failure is a
non-zero exit or the timeout (SIGTERM, then SIGKILL after 5 s); its outcome
quotes the hook's last few output lines, so the lease's failure says why.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sys

import structlog

from jumpstarter.config.exporter import HookConfig

KILL_GRACE = 5.0
TAIL_LINES = 5  # a failed hook's last output lines, quoted in its outcome (the lease's failure message)
TAIL_LINE_CHARS = 200


async def run_hook(
    which: str, hook: HookConfig, env: dict[str, str], output: collections.deque[str] | None = None
) -> tuple[bool, str]:
    """Run one hook; returns (success, one-line outcome). `output` (bounded) also keeps its lines."""
    log = structlog.get_logger(f"hook.{which}")
    script = hook.script
    if "\n" not in script.strip() and os.path.isfile(script.strip()):
        interpreter = hook.exec or (sys.executable if script.strip().endswith(".py") else "/bin/sh")
        argv = [interpreter, script.strip()]
    else:
        argv = [hook.exec or "/bin/sh", "-c", script]
    environment = {
        **os.environ,
        **env,
        "TERM": "dumb",
        "DEBIAN_FRONTEND": "noninteractive",
        "JMP_DRIVERS_ALLOW": "UNSAFE",
    }
    log.info("hook started", hook=which, timeout=hook.timeout)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment,
        start_new_session=True,
    )
    assert process.stdout is not None

    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    async def relay() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            text = line.decode("utf-8", "replace").rstrip()[:4096]
            log.info(text, hook=which)
            if output is not None:
                output.append(text)
            if text.strip():
                tail.append(text.strip()[:TAIL_LINE_CHARS])

    try:
        await asyncio.wait_for(asyncio.gather(relay(), process.wait()), hook.timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        log.warning("hook timed out", hook=which, timeout=hook.timeout)
        return False, f"{which} hook timed out after {hook.timeout:g}s" + last_output(tail)
    if process.returncode != 0:
        log.warning("hook failed", hook=which, returncode=process.returncode)
        return False, f"{which} hook failed: exited with {process.returncode}" + last_output(tail)
    log.info("hook finished", hook=which)
    return True, f"{which} hook succeeded"


def last_output(tail: collections.deque[str]) -> str:
    """`; last output: a | b`: why a hook failed, in its own words (bounded), or nothing."""
    return f"; last output: {' | '.join(tail)}" if tail else ""
