"""Blocking plumbing between local files/sockets/terminals and a driver byte stream."""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jumpstarter.client.connection import BlockingStream

READ_CHUNK = 64 * 1024


def _copy_in(source: IO[bytes] | Any, stream: BlockingStream) -> None:
    """stdin/file -> stream, then half-close."""
    fd = source.fileno()
    try:
        while data := os.read(fd, READ_CHUNK):
            stream.send(data)
        stream.send_eof()
    except (BrokenPipeError, OSError):
        pass


def pipe_stdio(stream: BlockingStream, *, send_input: bool, output: IO[bytes] | None = None) -> int:
    """Copy the stream to stdout (or `output`) and, optionally, stdin to the stream."""
    out = output or sys.stdout.buffer
    if send_input:
        threading.Thread(target=_copy_in, args=(sys.stdin.buffer, stream), daemon=True).start()
    try:
        for data in stream:
            out.write(data)
            out.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head` closed our stdout
        return 0
    return 0


def bridge_socket(sock: socket.socket, stream: BlockingStream) -> None:
    """Copy between a local socket and a stream until both directions ended."""

    def upstream() -> None:
        try:
            while data := sock.recv(READ_CHUNK):
                stream.send(data)
        except OSError:
            pass
        finally:
            try:
                stream.send_eof()
            except OSError:
                pass

    t = threading.Thread(target=upstream, daemon=True)
    t.start()
    try:
        for data in stream:
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        t.join(timeout=5)
        stream.close()
        sock.close()
