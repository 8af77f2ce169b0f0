"""`jumpstarter-controllerd`: leases, inventory, identities and tokens (DESIGN.md §5).

jumpstarter-controllerd --config /etc/jumpstarter/controllerd.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import structlog

from controllerd.config import DEFAULT_CONFIG, ControllerConfig

if TYPE_CHECKING:
    from jumpstarter.tls import LabCA

log = structlog.get_logger("controllerd")
PROG = "jumpstarter-controllerd"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Jumpstarter controller: exporters register, clients lease boards and dial them through routers.",
    )
    parser.add_argument("--config", default=os.environ.get("JUMPSTARTER_CONTROLLERD_CONFIG", DEFAULT_CONFIG))
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    from jumpstarter.log import add_arguments

    add_arguments(parser)
    return parser.parse_args(argv)


async def serve(config) -> int:  # type: ignore[no-untyped-def]
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

    from controllerd.admin import Admin
    from controllerd.arrival_order import ArrivalOrder
    from controllerd.audit import prune_forever
    from controllerd.auth import TokenAuthority, load_or_create_key
    from controllerd.client_service import ClientService
    from controllerd.controller_service import ControllerService
    from controllerd.dial_limits import DialLimits
    from controllerd.health_checks import HealthChecker
    from controllerd.hub import Hub
    from controllerd.leader import replicate
    from controllerd.liveness import server_keepalive_options
    from controllerd.replica import advertised_address, interceptors
    from controllerd.scheduler import LeaseScheduler
    from controllerd.store import open_store
    from jumpstarter import routertoken, tls
    from jumpstarter.channels import CONTROLLER_SERVER_OPTIONS
    from jumpstarter.client.v1 import client_pb2, client_pb2_grpc
    from jumpstarter.errors import ConfigError
    from jumpstarter.rpcinput import guarded
    from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

    host = config.endpoint.rpartition(":")[0]
    hosts = [host, *(a.rpartition(":")[0] for a in config.audiences)]
    cert_pem, key_pem, generated = tls.load_or_issue(
        config.tls_cert, config.tls_key, hosts, config.tls_ca, config.tls_ca_key
    )
    ca_pem = tls.trust_anchor(cert_pem, config.tls_ca)
    log.info(
        "tls",
        certificate=config.tls_cert,
        generated=generated,
        ca=config.tls_ca if os.path.exists(config.tls_ca) else config.tls_cert,
        note="issued client and exporter configs carry this CA",
    )
    if not tls.signed_by(cert_pem, ca_pem):
        log.error("tls: the CA does not sign the certificate; clients will refuse it", ca=config.tls_ca)
    if not tls.covers(cert_pem, host):
        log.warning(
            "tls: the certificate does not name the endpoint's host; clients will refuse it", host=host
        )
    if not os.path.exists(config.router_key_file):
        routertoken.generate_key(config.router_key_file)
        log.info("generated the router key; copy it to every routerd", path=config.router_key_file)
    router_key = routertoken.load_key(config.router_key_file)
    store = open_store(config.store)
    hub = Hub()
    scheduler = LeaseScheduler(
        store, hub, offline_after=config.offline_after, max_pending=config.max_pending_leases
    )
    auth = TokenAuthority(store, load_or_create_key(config.signing_key), config.endpoint, config.audiences)
    await auth.load()
    auth.on_revoke = lambda r: hub.exporter_changed(r.namespace, r.name) if r.kind == "Exporter" else None
    from controllerd.kube_identity import cluster_identities

    auth.cluster = cluster_identities(config, store, auth, hub)  # ServiceAccount tokens (Kubernetes store)

    # Kubernetes store: one replica schedules (leader election) and serves; the others forward to it
    elector = replicate(store, hub, scheduler, address=advertised_address(config.listen, dict(os.environ)))
    server = grpc.aio.server(
        interceptors=interceptors(elector, ca_pem, host),
        options=CONTROLLER_SERVER_OPTIONS + server_keepalive_options(config.offline_after),
    )
    # malformed requests: INVALID_ARGUMENT, no traceback in the log; calls served in arrival order
    registry = ArrivalOrder(guarded(server))
    jumpstarter_pb2_grpc.add_ControllerServiceServicer_to_server(
        ControllerService(
            store,
            hub,
            scheduler,
            auth,
            config.routers,
            router_key,
            config.dial_ready_wait,
            max_lease_duration=config.max_lease_duration,
            dial_limits=DialLimits(config.dial_rate, config.dial_burst, config.max_pending_dials),
        ),
        registry,
    )
    client_pb2_grpc.add_ClientServiceServicer_to_server(
        ClientService(store, scheduler, auth, max_lease_duration=config.max_lease_duration), registry
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry)
    services = (
        jumpstarter_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name,
        client_pb2.DESCRIPTOR.services_by_name["ClientService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    # Registered by hand: enable_server_reflection picks its sync servicer for anything but a grpc.aio.Server.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(services), registry
    )
    try:
        server.add_secure_port(config.listen, tls.server_credentials(cert_pem, key_pem))
    except RuntimeError:  # grpc says only "Failed to bind" (and logs the reason itself)
        raise ConfigError(
            f"{config.source}: listen: cannot listen on {config.listen} (in use, or not an address of this host)"
        ) from None

    credentials = _credentials(store, auth, ca_pem, config.token_ttl_days * 86400)
    checker = HealthChecker(store, scheduler, auth, ca_pem, config.health_checks)
    scheduler.watch.on_online = checker.came_online
    admin_server = grpc.aio.server()
    guarded(admin_server).add_generic_rpc_handlers(
        (
            Admin(
                store,
                scheduler,
                auth,
                ca_pem,
                config.token_ttl_days * 86400,
                lab_ca=_lab_ca(config),
                health=checker,
                dashboard_url=_dashboard_url(config),
                credentials=credentials,
            ).handler(),
        )
    )
    try:
        os.makedirs(os.path.dirname(config.admin_socket), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.admin_socket)
        old = os.umask(0o177)
        try:
            admin_server.add_insecure_port(f"unix:{config.admin_socket}")
            await admin_server.start()
        finally:
            os.umask(old)
    except (OSError, RuntimeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{config.admin_socket}: cannot serve the admin socket: {problem}") from None

    metrics_server = None
    if config.metrics:
        from controllerd.metrics import ControllerMetrics

        try:
            metrics_server = ControllerMetrics(store, scheduler).serve(config.metrics)
        except OSError as exc:
            raise ConfigError(
                f"{config.source}: metrics: cannot serve on {config.metrics}: {exc.strerror or exc}"
            ) from None

    scheduler_task: asyncio.Task[None] | None = None
    dashboard = None
    if config.dashboard is not None:  # bound before serving, like the metrics port: a clash is a config error
        from controllerd.dashboard.server import start_dashboard

        dashboard = await start_dashboard(
            config.dashboard,
            store=store,
            scheduler=scheduler,
            auth=auth,
            routers=config.routers,
            ca_pem=ca_pem,
            cert_path=config.tls_cert,
            key_path=config.tls_key,
            scheduler_task=lambda: scheduler_task,
        )

    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        listen=config.listen,
        endpoint=config.endpoint,
        store=config.store,
        admin_socket=config.admin_socket,
        routers=config.routers,
    )
    counted = scheduler.on_event  # metrics' counter (set above), then the health checks' lease count

    def on_event(kind: str, lease: Any) -> None:
        counted(kind, lease)
        checker.lease_event(kind, lease)

    scheduler.on_event = on_event
    scheduler_task = asyncio.create_task(
        elector.run(scheduler.run) if elector is not None else scheduler.run(), name="scheduler"
    )
    credentials_task = None
    if credentials is not None:  # Kubernetes store: Secrets for what kubectl creates, by the leader
        credentials.follow((lambda: elector.leading) if elector is not None else (lambda: True))
        credentials_task = asyncio.create_task(credentials.run(), name="credentials")
    revocations_task = None
    if elector is not None:  # several replicas: each takes in the revocations the others stored
        revocations_task = asyncio.create_task(auth.sync_revocations_forever(), name="revocations")
    health_task = asyncio.create_task(checker.schedule_forever(), name="health-checks")
    prune_task = asyncio.create_task(
        prune_forever(store, config.audit_retention_days, config.audit_max_records), name="audit-prune"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    scheduler_task.cancel()
    if elector is not None:
        await elector.release()  # the next replica takes over at once, not after the lease expires
    prune_task.cancel()
    health_task.cancel()
    if credentials_task is not None:
        credentials_task.cancel()
    if revocations_task is not None:
        revocations_task.cancel()
    if dashboard is not None:
        dashboard[1].cancel()
        await dashboard[0].stop()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=2)
    await admin_server.stop(grace=1)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config.admin_socket)
    if metrics_server is not None:
        metrics_server.close()
    store.close()
    return 0


def _credentials(store: Any, auth: Any, ca_pem: bytes, ttl: float) -> Any:
    """The credentials reconciler on the Kubernetes store (controllerd/credentials.py); None on SQLite."""
    kube = sys.modules.get("controllerd.store.kubernetes")  # not imported: not a Kubernetes store
    if kube is None or not isinstance(store, kube.KubernetesStore):
        return None
    from controllerd.credentials import Credentials

    return Credentials(store, auth, ca_pem, ttl)


def _dashboard_url(config: ControllerConfig) -> str:
    if config.dashboard is None:
        return ""
    from controllerd.dashboard.server import dashboard_url

    return dashboard_url(config.dashboard, config.endpoint)


def _lab_ca(config: ControllerConfig) -> LabCA | None:
    """The lab CA, when its key is here: `jumpstarter admin issue-router-cert` signs with it."""
    from jumpstarter import tls

    if not (os.path.exists(config.tls_ca) and os.path.exists(config.tls_ca_key)):
        return None
    return tls.load_or_create_ca(config.tls_ca, config.tls_ca_key)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from controllerd import config as config_module
    from jumpstarter.errors import ConfigError
    from jumpstarter.log import configure_from, fatal

    configure_from(args)
    try:
        config = config_module.load(args.config)
        config_module.check(config)
        if args.check:
            print(f"{args.config}: ok (endpoint {config.endpoint})")
            return 0
        return asyncio.run(serve(config))
    except ConfigError as exc:
        return fatal(PROG, exc)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return fatal(PROG, exc, status=1)


if __name__ == "__main__":
    sys.exit(main())
