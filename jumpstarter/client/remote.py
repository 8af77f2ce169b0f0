"""Boards behind a controller (PROTOCOL.md §6-7): the controller client and `jumpstarter.lease`.

    with jumpstarter.lease(selector="board=rpi4", duration="30m") as board:
        board.power.on()

`ControllerClient` is the one place that talks to the controller: TLS with the
client config's CA, the client's bearer token and identity metadata on every
call, ClientService (exporters, leases, token rotation) and ControllerService.Dial.
The life of a held lease is `jumpstarter.client.session.RemoteSession`; its router
tunnel is `jumpstarter.client.tunnel.Tunnel`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import field_mask_pb2

from jumpstarter import channels
from jumpstarter.backoff import Backoff, Deadline
from jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter.config.client import ClientConfig
from jumpstarter.errors import ConfigError, JumpstarterError
from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

if TYPE_CHECKING:
    from jumpstarter.client.base import DriverClient

DEFAULT_DURATION = 1800.0
ACQUISITION_TIMEOUT = 7200.0
DIAL_TIMEOUT = 60.0
READY_TIMEOUT = 300.0
RPC_TIMEOUT = 30.0
STOP_CHECK = 0.1  # seconds between looks at a stop event while a call is in flight
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
WaitCallback = Callable[[str, str], None]


class RemoteError(JumpstarterError):
    """A controller call failed; `code` is the gRPC status (None for client-side failures)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class TLSFailure(RemoteError):
    """TLS to the controller or a router fails (not retried: the config or the certificates must change)."""


class LeaseError(RemoteError):
    """The lease cannot be acquired or used (unsatisfiable, invalid, ended, not yours)."""


def rpc_error(exc: grpc.RpcError, what: str, endpoint: str) -> RemoteError:
    """One line that says what failed and what to do about it."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or code.name
    if code == grpc.StatusCode.UNAVAILABLE and "CERTIFICATE_VERIFY_FAILED" in details:
        hint = "set tls.ca in the client config, or log in with --ca FILE or --insecure"
        return RemoteError(f"{what}: the certificate of {endpoint} is not trusted ({hint})", code)
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = "is the endpoint right, and does tls.ca in the client config match its certificate?"
        return RemoteError(f"{what}: controller {endpoint} unreachable: {details} ({hint})", code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return RemoteError(
            f"{what}: the controller rejected the token: {details} (get a new one: jumpstarter login --token ...)",
            code,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RemoteError(f"{what}: controller {endpoint} did not answer in time", code)
    return RemoteError(f"{what}: {details}", code)


def short_name(resource: str) -> str:
    """`namespaces/ns/leases/NAME` -> `NAME` (a plain name stays as it is)."""
    return resource.rsplit("/", 1)[-1]


def lease_state(lease: client_pb2.Lease) -> tuple[str, str, str]:
    """(`ready`|`pending`|`failed`|`ended`, reason, message) from the lease's conditions."""
    conditions = {c.type: c for c in lease.conditions}
    for kind in ("Unsatisfiable", "Invalid"):
        c = conditions.get(kind)
        if c is not None and c.status == "True":
            return "failed", c.reason or kind, c.message
    ready = conditions.get("Ready")
    if ready is not None and ready.status == "True":
        return "ready", ready.reason, ready.message
    if ready is not None and ready.status == "False":
        return "ended", ready.reason, ready.message
    pending = conditions.get("Pending")
    if pending is not None and pending.status == "False":
        return "failed", pending.reason or "NotPending", pending.message
    if pending is not None:
        return "pending", pending.reason, pending.message
    return "pending", "", ""


def _duration(seconds: float) -> Any:
    from google.protobuf.duration_pb2 import Duration

    out = Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


class ControllerClient:
    """Blocking access to a controller's ClientService and ControllerService.Dial for one client config."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.endpoint = config.endpoint
        self.credentials = channels.controller_credentials(config.endpoint, config.ca, config.insecure)
        self.metadata: tuple[tuple[str, str], ...] = (
            ("authorization", f"Bearer {config.token}"),
            ("jumpstarter-kind", "Client"),
            ("jumpstarter-namespace", config.namespace),
            ("jumpstarter-name", config.name),
        )
        self.parent = f"namespaces/{config.namespace}"
        self.poll_interval = 0.5  # GetLease while waiting: 0.5 s growing to 2 s
        self.tls_failures: dict[str, TLSFailure] = {}  # endpoints whose TLS fails are not tried again
        # The one controller channel of a session, blocking: lease commands and tests use it with no event
        # loop; the tunnel's loop runs its Dials (`dial`) in worker threads instead of opening a second one.
        self.channel = channels.open_controller(config.endpoint, self.credentials)
        self.clients = client_pb2_grpc.ClientServiceStub(self.channel)
        self.controller = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel)

    def _call(self, method: Any, request: Any, what: str, timeout: float = RPC_TIMEOUT) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise self.error(exc, what) from None

    def error(self, exc: grpc.RpcError, what: str) -> RemoteError:
        """`rpc_error`, except that an UNAVAILABLE controller whose TLS fails says why in one line."""
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            problem = self.tls_failure(self.endpoint)
            if problem:
                return TLSFailure(problem)
        return rpc_error(exc, what, self.endpoint)

    def tls_failure(self, endpoint: str) -> str | None:
        """Why TLS to this controller or one of its routers fails with this config's CA, or None."""
        return channels.tls_failure(endpoint, self.config.ca, self.config.insecure)

    def check(self) -> None:
        """One cheap authenticated call: are the endpoint, the TLS trust and the token right?"""
        request = client_pb2.ListExportersRequest(parent=self.parent, page_size=1)
        self._call(self.clients.ListExporters, request, "check")

    def resource(self, kind: str, name: str) -> str:
        return name if name.startswith("namespaces/") else f"{self.parent}/{kind}/{name}"

    def owns(self, lease: client_pb2.Lease) -> bool:
        return not lease.client or short_name(lease.client) == self.config.name

    # -- exporters --------------------------------------------------------------------

    def list_exporters(self, selector: str = "", page_size: int = 100) -> list[client_pb2.Exporter]:
        out: list[client_pb2.Exporter] = []
        token = ""
        while True:
            request = client_pb2.ListExportersRequest(
                parent=self.parent, filter=selector, page_size=page_size, page_token=token
            )
            response = self._call(self.clients.ListExporters, request, "list exporters")
            out.extend(response.exporters)
            token = response.next_page_token
            if not token:
                return out

    def get_exporter(self, name: str) -> client_pb2.Exporter:
        request = client_pb2.GetExporterRequest(name=self.resource("exporters", name))
        return self._call(self.clients.GetExporter, request, f"exporter {short_name(name)}")

    # -- leases -----------------------------------------------------------------------

    def create_lease(
        self,
        selector: str = "",
        exporter_name: str | None = None,
        duration: float | None = DEFAULT_DURATION,
        *,
        begin_time: float | None = None,
        tags: dict[str, str] | None = None,
        context: dict[str, str] | None = None,
        lease_id: str = "",
        allow_disabled: bool = False,
    ) -> client_pb2.Lease:
        if not selector and not exporter_name:
            raise ConfigError("a lease needs a selector (-l KEY=VALUE) or an exporter name")
        lease = client_pb2.Lease(
            selector=selector, tags=tags or {}, context=context or {}, allow_disabled=allow_disabled
        )
        if exporter_name:
            lease.exporter_name = exporter_name
        if duration is not None:
            lease.duration.CopyFrom(_duration(duration))
        if begin_time is not None:
            lease.begin_time.FromNanoseconds(int(begin_time * 1e9))
        request = client_pb2.CreateLeaseRequest(parent=self.parent, lease_id=lease_id, lease=lease)
        return self._call(self.clients.CreateLease, request, "create lease")

    def get_lease(self, name: str) -> client_pb2.Lease:
        request = client_pb2.GetLeaseRequest(name=self.resource("leases", name))
        return self._call(self.clients.GetLease, request, f"lease {short_name(name)}")

    def list_leases(
        self, only_active: bool = True, selector: str = "", tag_filter: str = "", page_size: int = 100
    ) -> list[client_pb2.Lease]:
        out: list[client_pb2.Lease] = []
        token = ""
        while True:
            request = client_pb2.ListLeasesRequest(
                parent=self.parent,
                filter=selector,
                tag_filter=tag_filter,
                only_active=only_active,
                page_size=page_size,
                page_token=token,
            )
            response = self._call(self.clients.ListLeases, request, "list leases")
            out.extend(response.leases)
            token = response.next_page_token
            if not token:
                return out

    def update_lease(
        self,
        name: str,
        *,
        duration: float | None = None,
        end_time: float | None = None,
        client: str | None = None,
    ) -> client_pb2.Lease:
        lease = client_pb2.Lease(name=self.resource("leases", name))
        paths = []
        if duration is not None:
            lease.duration.CopyFrom(_duration(duration))
            paths.append("duration")
        if end_time is not None:
            lease.end_time.FromNanoseconds(int(end_time * 1e9))
            paths.append("end_time")
        if client is not None:
            lease.client = self.resource("clients", client)
            paths.append("client")
        request = client_pb2.UpdateLeaseRequest(
            lease=lease, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        return self._call(self.clients.UpdateLease, request, f"update lease {short_name(name)}")

    def delete_lease(self, name: str) -> None:
        request = client_pb2.DeleteLeaseRequest(name=self.resource("leases", name))
        self._call(self.clients.DeleteLease, request, f"release lease {short_name(name)}")

    def release(self, name: str) -> bool:
        """Delete the lease; False when it had already ended (not an error here)."""
        try:
            self.delete_lease(name)
            return True
        except RemoteError as exc:
            if exc.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return False
            raise

    def rotate_token(self) -> tuple[str, float]:
        request = client_pb2.RotateTokenRequest(parent=f"{self.parent}/clients/{self.config.name}")
        response = self._call(self.clients.RotateToken, request, "rotate token")
        return response.token, response.expiry.ToNanoseconds() / 1e9

    def acquire(
        self,
        selector: str = "",
        exporter_name: str | None = None,
        duration: float | None = DEFAULT_DURATION,
        *,
        on_wait: WaitCallback | None = None,
        on_created: Callable[[str], None] | None = None,
        timeout: float = ACQUISITION_TIMEOUT,
        **options: Any,
    ) -> client_pb2.Lease:
        """CreateLease, then wait until it is Ready; the lease is released if that fails or is interrupted."""
        lease = self.create_lease(selector, exporter_name, duration, **options)
        name = short_name(lease.name)
        if on_created is not None:
            on_created(name)
        try:
            return self.wait_ready(name, on_wait, timeout, first=lease)
        except BaseException:
            with contextlib.suppress(Exception):
                self.release(name)
            raise

    def wait_ready(
        self,
        name: str,
        on_wait: WaitCallback | None = None,
        timeout: float = ACQUISITION_TIMEOUT,
        first: client_pb2.Lease | None = None,
    ) -> client_pb2.Lease:
        """Poll GetLease until Ready; report the Pending reason and message whenever they change."""
        start = min(0.1, self.poll_interval) if first is not None else self.poll_interval
        backoff = Backoff(start=start, cap=4 * self.poll_interval, deadline=Deadline(timeout))
        last = ("", "")
        lease = first
        while True:
            if lease is None:
                try:
                    lease = self.get_lease(name)
                except RemoteError as exc:
                    if exc.code not in RETRYABLE or backoff.deadline.expired():
                        raise
            if lease is not None:
                state, reason, message = lease_state(lease)
                if state == "ready":
                    return lease
                if state in ("failed", "ended"):
                    what = "cannot be acquired" if state == "failed" else "has ended"
                    raise LeaseError(f"lease {name} {what}: {reason}: {message}".rstrip(": "))
                # CreateLease's own answer may predate the scheduler's decision: report polled states only
                if lease is not first and (reason, message) != last:
                    if (reason or message) and on_wait is not None:
                        on_wait(reason, message)
                    last = (reason, message)
            if not backoff.sleep():
                raise LeaseError(
                    f"lease {name} not acquired within {timeout:g} s (still {last[0] or 'pending'})"
                )
            lease = None

    def dial(
        self, lease_name: str, timeout: float = DIAL_TIMEOUT, stop: threading.Event | None = None
    ) -> tuple[str, str]:
        """ControllerService.Dial, retried while the exporter gets ready; returns (router endpoint, token).

        The one Dial path: the tunnel runs it for every connection; setting `stop` cancels it
        (the call in flight too, so a closing tunnel never waits for a Dial).
        """
        what = f"dial lease {lease_name}"
        backoff = Backoff(start=0.3, cap=2.0, deadline=Deadline(timeout))
        request = jumpstarter_pb2.DialRequest(lease_name=lease_name)
        while True:
            call = self.controller.Dial.future(
                request, metadata=self.metadata, timeout=backoff.deadline.clamp(40.0)
            )
            try:
                response = _result(call, stop, what)
                return response.router_endpoint, response.router_token
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self.check_tls(self.endpoint)
                if not dial_retryable(exc) or not backoff.sleep(stop):
                    raise rpc_error(exc, what, self.endpoint) from None

    def check_tls(self, endpoint: str) -> None:
        """Raise TLSFailure when TLS to this controller or router fails; once found, at once (not retried)."""
        failure = self.tls_failures.get(endpoint)
        if failure is None:
            problem = self.tls_failure(endpoint)
            if problem is None:
                return
            failure = self.tls_failures[endpoint] = TLSFailure(problem)
        raise failure

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dial_retryable(exc: grpc.RpcError) -> bool:
    """The exporter is still getting ready, or the controller/exporter link blinked: try again."""
    code = exc.code()
    details = (exc.details() or "").lower()
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return "not ready" in details
    return code in RETRYABLE


def _result(call: Any, stop: threading.Event | None, what: str) -> Any:
    """The answer of a unary call future; cancelled (RemoteError CANCELLED) once `stop` is set."""
    while True:
        try:
            return call.result(timeout=None if stop is None else STOP_CHECK)
        except grpc.FutureTimeoutError:
            if stop is not None and stop.is_set():
                call.cancel()
                raise RemoteError(f"{what}: cancelled", grpc.StatusCode.CANCELLED) from None


def resolve_config(client: ClientConfig | str | None) -> ClientConfig:
    """A ClientConfig from itself, an alias or file, $JMP_CLIENT_CONFIG, or the current client."""
    from jumpstarter.config.client import find_client_config

    if isinstance(client, ClientConfig):
        return client
    config = find_client_config(client)
    if config is None:
        raise ConfigError(
            "no client config: run `jumpstarter login --token TOKEN`, pass --client ALIAS|FILE,"
            " or set JMP_CLIENT_CONFIG"
        )
    return config


@contextlib.contextmanager
def lease(
    selector: str | None = None,
    *,
    exporter_name: str | None = None,
    duration: float | str = DEFAULT_DURATION,
    client: ClientConfig | str | None = None,
    lease_name: str | None = None,
    on_wait: WaitCallback | None = None,
    **options: Any,
) -> Iterator[DriverClient]:
    """Lease a board through the controller and yield its root client; released on exit (Ctrl-C too).

    `duration` is seconds or text (`30m`); `client` a ClientConfig, an alias or a file
    (default: $JMP_CLIENT_CONFIG, else the current client).
    """
    from jumpstarter.client.connection import connect
    from jumpstarter.client.session import RemoteSession

    if isinstance(duration, str):
        from jumpstarter.cli.durations import parse_duration

        duration = parse_duration(duration)
    config = resolve_config(client)
    with ControllerClient(config) as controller:
        with RemoteSession(
            controller,
            selector=selector or "",
            exporter_name=exporter_name,
            duration=duration,
            lease_name=lease_name,
            on_wait=on_wait,
            **options,
        ) as session:
            with connect(session.path) as root:
                yield root
