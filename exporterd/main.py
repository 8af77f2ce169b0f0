"""`jumpstarter-exporterd`: serve one board on its unix socket (the command line).

Owns the arguments, loading the config, and the socket path; builds the Daemon
from them with explicit inputs (nothing below reads the arguments).

    jumpstarter-exporterd --config /etc/jumpstarter/exporters/rpi4.yaml
    jumpstarter-exporterd --inventory /etc/jumpstarter/inventory.yaml --board rpi4-01

SIGTERM/SIGINT: stop now (socket removed, drivers closed). SIGHUP: finish the
current session, then reload the config (a bad config keeps the old one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING

from exporterd.tunnels import DEFAULT_MAX_PENDING, DEFAULT_TUNNEL_WAIT, TunnelLimits

DEFAULT_SOCKET_DIR = "/run/jumpstarter/boards"
PROG = "jumpstarter-exporterd"

if TYPE_CHECKING:
    from exporterd.direct import DirectListener


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve one board's hardware as drivers over gRPC on a unix socket.",
        epilog="Signals: SIGTERM/SIGINT stop; SIGHUP finishes the current session and reloads the config.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="an ExporterConfig YAML file (upstream format)")
    source.add_argument("--inventory", metavar="FILE", help="the lab inventory (use with --board)")
    parser.add_argument("--board", metavar="NAME", help="the inventory board to serve")
    parser.add_argument(
        "--socket", metavar="PATH", help=f"socket path (default {DEFAULT_SOCKET_DIR}/NAME.sock)"
    )
    parser.add_argument("--socket-mode", default="0660", help="socket permissions, octal (default 0660)")
    from jumpstarter.log import add_arguments

    add_arguments(parser)
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--tunnel-wait",
        type=_seconds,
        default=DEFAULT_TUNNEL_WAIT,
        metavar="SECONDS",
        help=f"give up on a router tunnel whose client has not come (default {DEFAULT_TUNNEL_WAIT:g})",
    )
    parser.add_argument(
        "--max-pending-tunnels",
        type=_count,
        default=DEFAULT_MAX_PENDING,
        metavar="N",
        help=f"router tunnels per lease waiting for their client; more push out the oldest"
        f" (default {DEFAULT_MAX_PENDING})",
    )
    direct = parser.add_argument_group("direct mode (no controller): serve the session on TCP")
    direct.add_argument("--listen", metavar="HOST:PORT", help="also serve on TCP, TLS with a passphrase")
    direct.add_argument(
        "--tls-cert", metavar="FILE", help="certificate (generated self-signed with --tls-key if missing)"
    )
    direct.add_argument("--tls-key", metavar="FILE", help="private key")
    direct.add_argument(
        "--passphrase-file", metavar="FILE", help="file holding the passphrase clients must send"
    )
    direct.add_argument("--no-passphrase", action="store_true", help="allow TCP clients without a passphrase")
    direct.add_argument(
        "--insecure-listener", action="store_true", help="plaintext TCP (only on a trusted network)"
    )
    args = parser.parse_args(argv)
    if args.inventory and not args.board:
        parser.error("--inventory needs --board NAME")
    if args.config and args.board:
        parser.error("--board goes with --inventory, not --config")
    if args.listen:
        if not args.passphrase_file and not args.no_passphrase:
            parser.error("--listen needs --passphrase-file FILE (or, knowingly, --no-passphrase)")
        if not args.insecure_listener and not (args.tls_cert and args.tls_key):
            parser.error(
                "--listen needs --tls-cert and --tls-key (created if missing), or --insecure-listener"
            )
    try:
        args.socket_mode = int(args.socket_mode, 8)
    except ValueError:
        parser.error(f"--socket-mode: not an octal mode: {args.socket_mode}")
    return args


def load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from jumpstarter.config.exporter import load_config

    return load_config(args.inventory or args.config, args.board)


def socket_path(args: argparse.Namespace, name: str) -> str:
    if args.socket:
        return str(args.socket)
    directory = os.environ.get("JUMPSTARTER_BOARDS_DIR", DEFAULT_SOCKET_DIR)
    if args.inventory:
        from jumpstarter.config.inventory import load_inventory

        directory = load_inventory(args.inventory).socket_dir
    return os.path.join(directory, f"{name}.sock")


def direct_listener(args: argparse.Namespace) -> DirectListener | None:
    """`--listen` and its TLS and passphrase options, or None without `--listen`."""
    if not args.listen:
        return None
    from exporterd.direct import DirectListener

    return DirectListener(
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        passphrase_file=args.passphrase_file,
        insecure=args.insecure_listener,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jumpstarter.errors import ConfigError
    from jumpstarter.log import configure_from, fatal

    configure_from(args)
    try:
        config = load(args)
        if args.check:
            print(f"{config.source}: board {config.name}: ok")
            return 0
        from exporterd.daemon import Daemon

        daemon = Daemon(
            config,
            socket_path(args, config.name),
            load_config=lambda: load(args),
            socket_mode=args.socket_mode,
            direct=direct_listener(args),
            limits=TunnelLimits(args.tunnel_wait, args.max_pending_tunnels),
        )
        return asyncio.run(daemon.run())
    except ConfigError as exc:
        return fatal(PROG, exc)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return fatal(PROG, exc, status=1)


if __name__ == "__main__":
    sys.exit(main())
