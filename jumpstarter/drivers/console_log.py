"""Console logs: one file per session (a fresh session per lease), bounded in size and in number.

Files are `<session>-<UTC time>.log` in one directory (mode 0640). Opening a new one deletes the
oldest of ours beyond `keep`; files whose names are not ours are never touched. Readers name a
session; the name is only compared with the listing, never joined into a path.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from jumpstarter.files import make_dirs

LIMIT_NOTE = b"\n[jumpstarter: console log size limit reached]\n"
READ_CHUNK = 32 * 1024
_FILE = re.compile(r"(?P<session>[A-Za-z0-9._-]{1,100})-(?P<started>\d{8}T\d{6}Z)\.log")
SESSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def safe_session(name: str) -> str:
    """The session name as it appears in file names (anything unusual becomes `_`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "_"


@dataclass(frozen=True)
class LogFile:
    session: str
    started: str  # UTC, YYYYmmddTHHMMSSZ
    path: str
    size: int
    mtime: float


class ConsoleLog:
    """Writes the current session's console output; lists and reads the kept sessions."""

    def __init__(self, directory: str, max_bytes: int, keep: int) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError("console_log_max and console_log_keep must be positive")
        self.directory = directory
        self.max_bytes = max_bytes
        self.keep = keep
        self.path: str | None = None
        self._file: BinaryIO | None = None
        self._written = 0

    def open(self, session: str) -> str:
        """Start this session's file and prune the oldest beyond `keep`; returns its path."""
        make_dirs(self.directory, 0o750)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = os.path.join(self.directory, f"{safe_session(session)}-{stamp}.log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._file = os.fdopen(fd, "ab", buffering=0)
        self._written = 0
        self.path = path
        self._prune()
        return path

    def _prune(self) -> None:
        old = [f for f in self.files() if f.path != self.path]
        for stale in old[: max(0, len(old) - (self.keep - 1))]:
            with contextlib.suppress(OSError):
                os.unlink(stale.path)

    def write(self, data: bytes) -> str | None:
        """Append console output up to the size cap; returns an error to log once, else None."""
        if self._file is None or self._written >= self.max_bytes:
            return None
        room = self.max_bytes - self._written
        try:
            self._file.write(data[:room])
            if len(data) >= room:
                self._file.write(LIMIT_NOTE)
        except OSError as exc:  # a full disk must not take the console down
            self._written = self.max_bytes
            return str(exc)
        self._written += len(data)
        return None

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def files(self) -> list[LogFile]:
        """Our log files, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _FILE.fullmatch(name)
            if match is None:
                continue
            path = os.path.join(self.directory, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            found.append(LogFile(match["session"], match["started"], path, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda f: (f.started, f.mtime))

    def find(self, session: str | None) -> LogFile:
        """The current session's file (`session` None), else the newest file of that session."""
        files = self.files()
        if session is None:
            chosen = [f for f in files if f.path == self.path]
        else:
            if not isinstance(session, str) or not SESSION.fullmatch(session):
                raise ValueError(f"not a lease name: {session!r}")
            chosen = [f for f in files if f.session == session]
        if not chosen:
            kept = ", ".join(sorted({f.session for f in files})) or "none"
            what = "this session" if session is None else f"lease {session!r}"
            raise ValueError(f"no console log for {what} (kept: {kept})")
        return chosen[-1]

    @staticmethod
    def read(log: LogFile) -> Iterator[bytes]:
        """The file's bytes as they are now, in chunks."""
        with open(log.path, "rb") as handle:
            left = os.fstat(handle.fileno()).st_size
            while left > 0 and (chunk := handle.read(min(READ_CHUNK, left))):
                left -= len(chunk)
                yield chunk
