"""Network client: byte streams to a TCP/UDP/unix service near the board, and port forwarding."""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator

from jumpstarter.client.base import DriverClient
from jumpstarter.interfaces.network import NetworkInterface


class NetworkClient(DriverClient):
    """A network service near the board: forward a local port to it, or pipe stdin/stdout to it."""

    interface = NetworkInterface

    def address(self) -> str:
        """The service address as the exporter sees it, e.g. tcp://192.0.2.10:22."""
        return str(self.call("address"))

    def open(self):  # type: ignore[no-untyped-def]
        """One connection to the service as a byte stream."""
        return self.stream("connect")

    @contextlib.contextmanager
    def forward(self, local_port: int = 0, local_host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
        """Listen on a local TCP port; every connection is tunnelled to the service.

        Yields the bound (host, port); stops listening when the block ends.
        """
        from jumpstarter.client.pipes import bridge_socket

        listener = socket.create_server((local_host, local_port), reuse_port=False)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                try:
                    stream = self.open()
                except Exception as exc:
                    print(f"port-forward: cannot connect: {exc}", file=sys.stderr)
                    conn.close()
                    continue
                threading.Thread(target=bridge_socket, args=(conn, stream), daemon=True).start()

        acceptor = threading.Thread(target=accept, daemon=True, name="port-forward")
        acceptor.start()
        try:
            host, port = listener.getsockname()[:2]
            yield host, port
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            acceptor.join(timeout=5)

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        forward = sub.add_parser(
            "forward", aliases=["forward-tcp"], help="forward a local TCP port to the service"
        )
        add_forward_arguments(forward)
        forward.set_defaults(func=lambda a: run_forward(self, a))
        if self.offers("address"):  # echo/discard services have no address
            address = sub.add_parser("address", help="print the service address as seen by the exporter")
            address.set_defaults(func=lambda a: print(self.address()))
        pipe = sub.add_parser("pipe", help="connect stdin/stdout to one connection to the service")

        def run_pipe(a: argparse.Namespace) -> int:
            from jumpstarter.client.pipes import pipe_stdio

            with self.open() as stream:
                return pipe_stdio(stream, send_input=True)

        pipe.set_defaults(func=run_pipe)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range (0-65535)")
    return value


def add_forward_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "local_port", type=port_number, metavar="LOCAL_PORT", help="local TCP port (0 = pick one)"
    )
    parser.add_argument(
        "--address", default="127.0.0.1", help="local address to listen on (default 127.0.0.1)"
    )


def run_forward(client: NetworkClient, args: argparse.Namespace) -> int:
    with client.forward(args.local_port, args.address) as (host, port):
        idle = threading.Event()
        try:  # from before the port is announced: a Ctrl-C right after it still ends with 0
            print(f"forwarding {host}:{port} -> {client.path}; Ctrl-C to stop", file=sys.stderr, flush=True)
            print(port, flush=True)
            # wake often: Ctrl-C may land on a gRPC thread, and Python's handler runs only when the
            while not idle.wait(0.5):  # main thread next runs bytecode (a plain wait() never returns)
                pass
        except KeyboardInterrupt:
            pass
    return 0
