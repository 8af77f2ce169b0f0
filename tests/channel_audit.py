"""Every gRPC channel a piece of code creates, and whether it was closed (not left to the GC).

A channel finalized by the garbage collector closes itself in `__del__`, which waits for
gRPC's own (daemon) threads; at interpreter shutdown those are frozen and the process
hangs. `audit()` records the sync and asyncio channels created while it is active:

    with audit() as channels:
        ...
    assert channels.unclosed() == []

Also runnable as a wrapper around the CLI (used by the integration tests):
`python tests/channel_audit.py ARGS…` runs `jumpstarter ARGS…`, then prints one JSON line
with the unclosed channels and the threads still alive, and exits with the CLI's code.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

import grpc._channel
import grpc.aio._channel


class Audit:
    def __init__(self) -> None:
        self.created: list[Any] = []  # strong references: a channel is judged, not collected, here
        self.closed: set[int] = set()

    def unclosed(self) -> list[str]:
        gc.collect()
        return [f"{type(c).__module__}.{type(c).__name__}" for c in self.created if id(c) not in self.closed]


@contextlib.contextmanager
def audit() -> Iterator[Audit]:
    record = Audit()
    patched: list[tuple[type, str, Any]] = []
    for cls in (grpc._channel.Channel, grpc.aio._channel.Channel):
        init, close = cls.__init__, cls.close

        def tracked_init(self: Any, *args: Any, _init: Any = init, **kwargs: Any) -> None:
            _init(self, *args, **kwargs)
            record.created.append(self)

        if cls is grpc.aio._channel.Channel:

            async def tracked_close(self: Any, *args: Any, _close: Any = close, **kwargs: Any) -> Any:
                record.closed.add(id(self))
                return await _close(self, *args, **kwargs)
        else:

            def tracked_close(self: Any, *args: Any, _close: Any = close, **kwargs: Any) -> Any:  # type: ignore[misc]
                record.closed.add(id(self))
                return _close(self, *args, **kwargs)

        patched += [(cls, "__init__", init), (cls, "close", close)]
        cls.__init__ = tracked_init  # type: ignore[method-assign]
        cls.close = tracked_close  # type: ignore[method-assign]
    try:
        yield record
    finally:
        for cls, name, original in patched:
            setattr(cls, name, original)


def _main(argv: list[str]) -> int:
    from jumpstarter.cli.main import main

    with audit() as record:
        code = main(argv)
        unclosed = record.unclosed()
    threads = [
        {"name": t.name, "daemon": t.daemon}
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive()
    ]
    print(json.dumps({"unclosed": unclosed, "threads": threads}), file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
