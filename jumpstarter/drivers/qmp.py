"""A QEMU Machine Protocol client: JSON lines over QEMU's unix socket (stdlib only).

QEMU greets, we answer `qmp_capabilities`, then each `execute()` sends one command
and reads lines until its reply (asynchronous events in between are skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

LINE_LIMIT = 1024 * 1024  # a reply is one line; query results are small


class QmpError(RuntimeError):
    """QEMU refused a command (its `error.desc`), or the connection broke."""


class Qmp:
    """One negotiated QMP connection; commands are sent one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: str, timeout: float = 10.0) -> Qmp:
        """Connect to the socket at `path` and negotiate capabilities."""
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=LINE_LIMIT), timeout)
        qmp = cls(reader, writer)
        try:
            greeting = await qmp._message(timeout)
            if "QMP" not in greeting:
                raise QmpError(f"not a QMP greeting: {str(greeting)[:200]}")
            await qmp.execute("qmp_capabilities", timeout=timeout)
        except BaseException:
            await qmp.close()
            raise
        return qmp

    async def _message(self, timeout: float) -> dict[str, Any]:
        line = await asyncio.wait_for(self._reader.readline(), timeout)
        if not line:
            raise QmpError("QEMU closed its QMP socket")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"unexpected QMP message: {line[:200]!r}")
        return message

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        """Run `command`; its `return` value, or QmpError with QEMU's description."""
        async with self._lock:
            ident = next(self._ids)
            request: dict[str, Any] = {"execute": command, "id": ident}
            if arguments:
                request["arguments"] = arguments
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
            while True:
                message = await self._message(timeout)
                if message.get("id") != ident:
                    continue  # an event, or a reply to nothing we are waiting for
                if "error" in message:
                    error = message["error"]
                    raise QmpError(f"QEMU refused {command}: {error.get('desc', error)}")
                return message.get("return")

    def abort(self) -> None:
        """Close the socket now, without waiting (from synchronous cleanup)."""
        self._writer.close()

    async def close(self) -> None:
        self.abort()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
