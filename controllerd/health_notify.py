"""Tell someone when a board changes state (issue 12): an HTTPS webhook and/or a command.

Optional (`health_checks.notify` in controllerd.yaml). Each change starts a task and returns:
the scheduler and the admin call never wait for it. A webhook gets a JSON POST (TLS verified,
HTTPS only); a command runs as controllerd's own user in a new session with the change in its
environment (no shell, no inherited secrets beyond the environment of controllerd). Both are
bounded by a timeout; at most MAX_PENDING run at once (more are dropped and logged); failures
are logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import structlog

from controllerd.records import Exporter

log = structlog.get_logger("controllerd.health")
MAX_PENDING = 8
NOTIFY_TIMEOUT = 10.0  # seconds a webhook or command may take


@dataclass
class NotifySettings:
    url: str = ""  # https://… receives {"board", "namespace", "state", "previous", "reason"}
    command: list[str] = field(default_factory=list)  # argv; JUMPSTARTER_BOARD, _STATE, … in its env
    timeout: float = NOTIFY_TIMEOUT


class Notifier:
    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self.tasks: set[asyncio.Task[None]] = set()

    def state_changed(self, exporter: Exporter, previous: str) -> None:
        """Start telling about `exporter`'s new state (unless nothing is configured, or it did not change)."""
        if exporter.health == previous or not (self.settings.url or self.settings.command):
            return
        if len(self.tasks) >= MAX_PENDING:
            log.warning("board state notification dropped: too many running", exporter=exporter.name)
            return
        change = {
            "namespace": exporter.namespace,
            "board": exporter.name,
            "state": exporter.health,
            "previous": previous,
            "reason": exporter.health_reason,
        }
        task = asyncio.get_running_loop().create_task(self._send(change), name=f"notify {exporter.name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, change: dict[str, str]) -> None:
        try:
            if self.settings.url:
                await asyncio.wait_for(asyncio.to_thread(self._post, change), self.settings.timeout + 1)
            if self.settings.command:
                await self._run(change)
        except Exception as exc:  # noqa: BLE001 - a notification that fails is logged, never fatal
            log.warning("board state notification failed", exporter=change["board"], error=str(exc))

    def _post(self, change: dict[str, str]) -> None:
        request = urllib.request.Request(
            self.settings.url,
            data=json.dumps(change).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:  # noqa: S310 - https only
            response.read(4096)

    async def _run(self, change: dict[str, str]) -> None:
        env = {**os.environ, **{f"JUMPSTARTER_{k.upper()}": v for k, v in change.items()}}
        process = await asyncio.create_subprocess_exec(
            *self.settings.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            code = await asyncio.wait_for(process.wait(), self.settings.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise TimeoutError(
                f"{self.settings.command[0]} took more than {self.settings.timeout:g}s"
            ) from None
        if code != 0:
            raise RuntimeError(f"{self.settings.command[0]} exited with {code}")


def notify_settings(value: Any) -> NotifySettings:
    """Checked `health_checks.notify` values (ValueError names the problem)."""
    unknown = sorted(set(value) - {"url", "command", "timeout"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting (accepted: url, command, timeout)")
    url = value.get("url") or ""
    if url and not (isinstance(url, str) and url.startswith("https://") and len(url) <= 2048):
        raise ValueError("url: an https:// URL")
    command = value.get("command") or []
    if isinstance(command, str):
        command = [command]
    if (
        not isinstance(command, list)
        or not all(isinstance(a, str) and a for a in command)
        or len(command) > 64
    ):
        raise ValueError("command: a program and its arguments (a list of text)")
    timeout = value.get("timeout", NOTIFY_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise ValueError("timeout: seconds, more than 0 and at most 300")
    return NotifySettings(url, command, float(timeout))
