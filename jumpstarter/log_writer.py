"""exporterd's log output: INFO and DEBUG lines reach the stream together, up to `DELAY` late.

MockPower's `power on` line cost exporterd ~15 % of its unary call rate (issue 9): rendered in the
gRPC worker thread with cold caches, then one write(2) per line. Now lines written within `DELAY`
share one write, and a structlog record whose values are all plain scalars is also rendered there,
in the batch (its text cannot change any more; its timestamp is in it already). Records at WARNING
and above are written at once, after everything pending, so a failure is on the stream before the
process can die of it; `flush()` (called by `logging.shutdown` at exit) writes the rest. A SIGKILL
loses at most `DELAY` of INFO lines.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TextIO

#: How long an INFO line may wait for others to share its write.
DELAY = 0.005
#: Values that nothing can change after the call that logged them.
_FROZEN = frozenset({str, int, float, bool, type(None)})


def _frozen(record: logging.LogRecord) -> bool:
    """A structlog event dict of scalars only, no traceback: formatting it later gives the same text."""
    event = record.msg
    if type(event) is not dict or record.exc_info is not None:
        return False
    for value in event.values():  # noqa: SIM110 (a loop, not all(genexpr): it runs on every record)
        if type(value) not in _FROZEN:
            return False
    return True


class CoalescingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """`logging.StreamHandler` with the lines below WARNING written by a background thread in batches."""

    def __init__(self, stream: TextIO, delay: float = DELAY) -> None:
        super().__init__(stream)
        self.delay = delay
        self._pending: list[str | logging.LogRecord] = []  # lines, and records to format in the batch
        self._wake = threading.Event()
        self._writer_pid = 0  # the process whose writer thread runs (none after a fork)
        self._closed = False

    def emit(self, record: logging.LogRecord) -> None:  # `handle` holds self.lock
        urgent = record.levelno >= logging.WARNING or self._closed
        if urgent or not _frozen(record):
            line = self._line(record)
            if line is None:
                return
            self._pending.append(line)
        else:
            self._pending.append(record)
        if urgent:
            self._write_pending()
        elif len(self._pending) == 1:  # the first of a batch: the writer collects from now on
            self._start_writer()
            self._wake.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            self._closed = True
            self._wake.set()  # the writer sees `_closed` and ends
        super().close()

    def _line(self, record: logging.LogRecord) -> str | None:
        try:
            return self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return None

    def _write_pending(self) -> None:  # with self.lock held: batches stay in order with WARNINGs
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        text = "".join(item if type(item) is str else (self._line(item) or "") for item in pending)  # type: ignore[arg-type]
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stream closed or broken (shutdown): nowhere left to write
            pass

    def _start_writer(self) -> None:
        if self._writer_pid != os.getpid():
            self._writer_pid = os.getpid()
            threading.Thread(target=self._writer, name="log-writer", daemon=True).start()

    def _writer(self) -> None:
        while not self._closed:
            self._wake.wait()
            time.sleep(self.delay)  # not a wait for a condition: the window in which lines join the batch
            with self.lock:  # type: ignore[union-attr]
                self._wake.clear()  # under the lock: a line emitted after this wakes us again
                self._write_pending()
