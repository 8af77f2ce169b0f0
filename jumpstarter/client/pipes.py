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
ESCAPE = b"\x02"  # Ctrl-B, three times in a row leaves the console (as upstream)
ESCAPE_COUNT = 3


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


def console(stream: BlockingStream) -> int:
    """An interactive raw-mode console; Ctrl-B three times leaves it."""
    import termios
    import tty

    stdin_fd = sys.stdin.fileno()
    if not os.isatty(stdin_fd):
        return pipe_stdio(stream, send_input=True)
    saved = termios.tcgetattr(stdin_fd)
    done = threading.Event()
    leaving = threading.Event()  # the user detached: the stream ends because we close it

    def show() -> None:
        try:
            for data in stream:
                os.write(sys.stdout.fileno(), data)
        finally:
            done.set()
            if not leaving.is_set():
                os.write(sys.stdout.fileno(), b"\r\n[console closed by the exporter]\r\n")

    sys.stderr.write("[console attached; press Ctrl-B three times to leave]\r\n")
    sys.stderr.flush()
    tty.setraw(stdin_fd)
    shower = threading.Thread(target=show, daemon=True, name="console-show")
    shower.start()
    pressed = 0
    try:
        while not done.is_set():
            data = os.read(stdin_fd, 1024)
            if not data:
                break
            for byte in data:
                pressed = pressed + 1 if bytes([byte]) == ESCAPE else 0
            if pressed >= ESCAPE_COUNT:
                break
            stream.send(data)
    except BrokenPipeError:
        pass
    finally:
        leaving.set()
        stream.close()  # ends `show` before we return: no thread may touch gRPC at interpreter shutdown
        shower.join(timeout=5)
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        sys.stderr.write("\n[console detached]\n")
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
