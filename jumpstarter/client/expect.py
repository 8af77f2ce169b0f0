"""Expect-style console matching over a byte stream: `console.expect("login:", timeout=30)`."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jumpstarter.errors import JumpstarterError

if TYPE_CHECKING:
    from jumpstarter.client.connection import BlockingStream

MAX_BUFFER = 4 * 1024 * 1024  # unmatched output kept for matching; older text is dropped


class ConsoleTimeout(JumpstarterError, TimeoutError):
    """`expect()` did not see its pattern in time; the message shows the last output."""


class ConsoleClosed(JumpstarterError, EOFError):
    """The console stream ended before the pattern appeared."""


Pattern = str | re.Pattern[str]


class Console:
    """Reads a console stream in the background; `expect()` consumes output up to a match.

    Text is decoded as UTF-8 (invalid bytes replaced). After a match, `before`
    holds the output before it, `after` the matched text and `match` the
    `re.Match` object.
    """

    def __init__(self, stream: BlockingStream, encoding: str = "utf-8") -> None:
        self.stream = stream
        self.encoding = encoding
        self.buffer = ""
        self.before = ""
        self.after = ""
        self.match: re.Match[str] | None = None
        self.log: list[str] = []
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True, name="console-reader")
        self._reader.start()

    def _read(self) -> None:
        import codecs

        decoder = codecs.getincrementaldecoder(self.encoding)(errors="replace")
        try:
            for data in self.stream:
                text = decoder.decode(data)
                with self._cond:
                    self.buffer = (self.buffer + text)[-MAX_BUFFER:]
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced by the next expect()
            self._error = exc
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def expect(self, pattern: Pattern | Sequence[Pattern], timeout: float = 30.0) -> int:
        """Wait until one of the patterns appears; returns its index. Plain strings match literally."""
        patterns = [pattern] if isinstance(pattern, (str, re.Pattern)) else list(pattern)
        compiled = [p if isinstance(p, re.Pattern) else re.compile(re.escape(p)) for p in patterns]
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                best: tuple[int, int, re.Match[str]] | None = None
                for index, regex in enumerate(compiled):
                    found = regex.search(self.buffer)
                    if found and (best is None or found.start() < best[1]):
                        best = (index, found.start(), found)
                if best is not None:
                    index, _, found = best
                    self.before = self.buffer[: found.start()]
                    self.after = found.group(0)
                    self.match = found
                    self.buffer = self.buffer[found.end() :]
                    return index
                if self._closed:
                    raise ConsoleClosed(
                        f"console closed before {self._describe(patterns)} appeared"
                    ) from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = self.buffer[-300:]
                    raise ConsoleTimeout(
                        f"{self._describe(patterns)} not seen within {timeout:g}s; last output: {tail!r}"
                    )
                self._cond.wait(remaining)

    @staticmethod
    def _describe(patterns: Sequence[Pattern]) -> str:
        return " or ".join(repr(p.pattern if isinstance(p, re.Pattern) else p) for p in patterns)

    def send(self, text: str | bytes) -> None:
        self.stream.send(text.encode(self.encoding) if isinstance(text, str) else text)

    def sendline(self, text: str = "") -> None:
        self.send(text + "\n")

    def read_available(self) -> str:
        """Everything received and not yet consumed by `expect()`."""
        with self._cond:
            text, self.buffer = self.buffer, ""
        return text

    def close(self) -> None:
        self.stream.close()
        self._reader.join(timeout=5)

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
