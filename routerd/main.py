"""`jumpstarter-routerd`: splice the client's and the exporter's RouterService streams.

    jumpstarter-routerd --config /etc/jumpstarter/routerd.yaml [--check] [--create-key]

SIGTERM/SIGINT: stop accepting calls, end the running streams, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

from routerd.config import DEFAULT_CONFIG, RouterConfig, load_config

if TYPE_CHECKING:
    import grpc

    from routerd.workers import WorkerSpec

PROG = "jumpstarter-routerd"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Jumpstarter router: pairs the two callers of a router token and forwards their frames.",
        epilog="Signals: SIGTERM/SIGINT stop (running streams end with UNAVAILABLE).",
    )
    parser.add_argument("--config", metavar="FILE", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    parser.add_argument("--check", action="store_true", help="validate the config and key files, then exit")
    parser.add_argument(
        "--create-key",
        action="store_true",
        help="create router_key_file if it is missing (normally the controller's key is copied there)",
    )
    # A worker of `workers: N` (routerd/workers.py starts these).
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    from jumpstarter.log import add_arguments

    add_arguments(parser)
    return parser.parse_args(argv)


def check(config: RouterConfig, create_key: bool) -> list[str]:
    """Everything `--check` verifies beyond the YAML itself; returns what it found (raises ConfigError)."""
    from jumpstarter import tls
    from jumpstarter.routertoken import load_key

    notes = []
    if os.path.exists(config.router_key_file) or not create_key:
        load_key(config.router_key_file)
        notes.append(f"router key {config.router_key_file}: ok")
    else:
        notes.append(f"router key {config.router_key_file}: missing, will be created")
    if os.path.exists(config.tls_cert) or os.path.exists(config.tls_key):
        cert_pem, _ = tls.load_or_create(config.tls_cert, config.tls_key, [])
        notes.append(
            f"tls certificate {config.tls_cert}: ok, for {', '.join(tls.certificate_names(cert_pem))}"
        )
    else:
        notes.append(
            f"tls certificate {config.tls_cert}: missing, one signed by the lab CA {config.lab_ca[0]}"
            " will be generated (the CA too if it is missing)"
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jumpstarter.errors import ConfigError
    from jumpstarter.log import configure_from, fatal

    configure_from(args)
    try:
        config = load_config(args.config)
        if args.check:
            for note in check(config, args.create_key):
                print(f"{config.source}: {note}")
            print(f"{config.source}: ok")
            return 0
        if args.worker is not None:
            from routerd.workers import WorkerSpec

            worker = WorkerSpec(args.worker, args.worker_port, args.worker_dir)
            return asyncio.run(serve(config, False, worker))
        if config.workers > 1:
            from routerd.workers import supervise

            prepare(config, args.create_key)  # once: the workers find the key and certificate
            passed = ["--config", args.config, "--log-level", args.log_level, "--log-format", args.log_format]
            return asyncio.run(supervise(config, passed))
        return asyncio.run(serve(config, args.create_key))
    except ConfigError as exc:
        return fatal(PROG, exc)
    except KeyboardInterrupt:
        return 130


def prepare(config: RouterConfig, create_key: bool) -> tuple[bytes, bytes, bytes]:
    """The router key, and the TLS certificate and key (issued by the lab CA when missing)."""
    import structlog

    from jumpstarter import tls
    from jumpstarter.routertoken import generate_key, load_key

    log = structlog.get_logger("routerd")
    if create_key and not os.path.exists(config.router_key_file):
        generate_key(config.router_key_file)
        log.warning(
            "created a new router key; the controller must use the same key file",
            path=config.router_key_file,
        )
    key = load_key(config.router_key_file)
    cert_pem, key_pem, generated = tls.load_or_issue(
        config.tls_cert, config.tls_key, config.hostnames(), *config.lab_ca
    )
    facts = tls.describe(cert_pem)
    log.info(
        "tls certificate",
        cert=config.tls_cert,
        generated=generated,
        hint="give this file to clients and exporters as their CA (tls.ca)" if facts["self_signed"] else None,
        **facts,
    )
    ca_path = config.lab_ca[0]
    if os.path.exists(ca_path) and not tls.signed_by(cert_pem, tls.trust_anchor(cert_pem, ca_path)):
        log.error(
            "the lab CA does not sign this certificate; clients and exporters will refuse it", ca=ca_path
        )
    host = config.advertise_host
    if host and not tls.covers(cert_pem, host):
        log.warning(
            "the certificate does not name the advertised host; clients will refuse it", advertise=host
        )
    return key, cert_pem, key_pem


async def serve(config: RouterConfig, create_key: bool, worker: WorkerSpec | None = None) -> int:
    import structlog

    from jumpstarter import tls
    from jumpstarter.errors import ConfigError
    from jumpstarter.metrics import MetricsServer, new_registry, start_http
    from routerd.admission import Limits
    from routerd.relay import Claims, Workers, worker_socket
    from routerd.service import Router, RouterMetrics, build_server, build_worker_server

    log = structlog.get_logger("routerd")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=worker.index)
    key, cert_pem, key_pem = prepare(config, create_key)

    registry = new_registry()
    limits = Limits(config.max_streams, config.max_streams_per_lease, config.max_waiting_per_lease)
    claims = workers = None
    listen, metrics_address = config.listen, config.metrics
    if worker is not None:
        claims, workers = Claims(worker.directory, worker.index), Workers(worker.directory)
        listen = _join(config.listen.rpartition(":")[0].strip("[]"), worker.port)
        if metrics_address:  # one metrics port per worker: port + index
            metrics_host, _, metrics_port = metrics_address.rpartition(":")
            port_k = int(metrics_port) + worker.index if int(metrics_port) else 0  # 0: any free port
            metrics_address = f"{metrics_host}:{port_k}"
    router = Router(key, config.lone_peer_timeout, limits, RouterMetrics(registry), claims, workers)
    server = build_server(router)
    private: grpc.aio.Server | None = None
    if worker is not None:
        private = build_worker_server(router)
        private.add_insecure_port(f"unix:{worker_socket(worker.directory, worker.index)}")
        await private.start()
    try:
        port = server.add_secure_port(listen, tls.server_credentials(cert_pem, key_pem))
    except RuntimeError:  # grpc says only "Failed to bind" (and logs the reason itself)
        raise ConfigError(
            f"{config.source}: listen: cannot listen on {config.listen} (in use, or not an address of this host)"
        ) from None
    metrics: MetricsServer | None = None
    if metrics_address:
        try:
            metrics = start_http(registry, metrics_address, allow_remote=config.metrics_allow_remote)
        except OSError as exc:
            raise ConfigError(
                f"{config.source}: metrics: cannot serve on {metrics_address}: {exc.strerror or exc}"
            ) from None
        log.info("metrics", url=f"http://{_join(metrics.host, metrics.port)}/metrics")
    await server.start()
    listen_host = config.listen.rpartition(":")[0]
    log.info(
        "serving",
        listen=_join(listen_host.strip("[]"), port),
        port=port,
        advertise=config.advertise,
        lone_peer_timeout=config.lone_peer_timeout,
        max_streams=config.max_streams,
        max_streams_per_lease=config.max_streams_per_lease,
        max_waiting_per_lease=config.max_waiting_per_lease,
        pid=os.getpid(),
    )
    try:
        await stop.wait()
        log.info("stopping", waiting=len(router.waiting), active=router.active)
        router.shutdown()
        await server.stop(grace=2)
    finally:
        if private is not None:
            await private.stop(grace=None)
        if workers is not None:
            await workers.close()
        if metrics is not None:
            metrics.close()
    log.info("stopped")
    return 0


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    sys.exit(main())
