"""The dashboard's HTTPS server: asyncio streams on the controller's own event loop.

Why on the loop and not a thread: the store (one SQLite connection) and the scheduler live on
the loop, so a snapshot is built there without locks; serving is all awaits with timeouts, so a
slow or hostile browser only ever holds its own bounded connection, never the loop. Every
resource is bounded: connections (counted before the TLS handshake), the request head and body,
the time to send them, live subscribers, and sessions. One request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import structlog

from controllerd.dashboard.routers import RouterProbe
from controllerd.dashboard.sessions import Session, Sessions, clear_cookie, cookie_value, set_cookie
from controllerd.dashboard.snapshot import FRESH, Snapshots
from controllerd.errors import PermissionDenied, Unauthenticated
from jumpstarter.errors import ConfigError

if TYPE_CHECKING:
    from controllerd.auth import TokenAuthority
    from controllerd.config import DashboardSettings
    from controllerd.scheduler import LeaseScheduler
    from controllerd.store import Store

log = structlog.get_logger("controllerd.dashboard")

MAX_HEAD = 16 * 1024  # request line and headers
MAX_HEADERS = 64
MAX_BODY = 20 * 1024  # a login: one token (auth.MAX_TOKEN is 16 KiB) in a small JSON object
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0  # to send the whole request
WRITE_TIMEOUT = 15.0  # a reader slower than this is dropped
KEEPALIVE = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = (
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "X-Frame-Options: DENY\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Strict-Transport-Security: max-age=31536000\r\n"
    "Cache-Control: no-store\r\n"
    "Connection: close\r\n"
)
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    peer: str


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("controllerd.dashboard") / "static"
    return {route: ((folder / name).read_bytes(), kind) for route, (name, kind) in STATIC.items()}


class DashboardServer:
    def __init__(
        self,
        snapshots: Snapshots,
        sessions: Sessions,
        tls: ssl.SSLContext,
        *,
        anonymous: bool,
        max_connections: int,
        max_subscribers: int,
    ) -> None:
        self.snapshots = snapshots
        self.sessions = sessions
        self.tls = tls
        self.anonymous = anonymous
        self.max_connections = max_connections
        self.max_subscribers = max_subscribers
        self.static = _static_files()
        self.connections = 0
        self.subscribers = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._server = await asyncio.start_server(
            self._connection, host.strip("[]") or None, int(port), limit=MAX_HEAD
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one connection ---------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.connections >= self.max_connections:  # before the handshake: a flood costs no crypto
            writer.close()
            return
        self.connections += 1
        self._tasks.add(task)
        peer = str(writer.get_extra_info("peername"))
        try:
            await writer.start_tls(self.tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            try:
                request, body = await asyncio.wait_for(self._read(reader, peer), REQUEST_TIMEOUT)
            except BadRequest as exc:
                await self._send_json(writer, exc.status, {"error": str(exc)})
                return
            await self._route(request, body, writer)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the browser went away, was too slow, or was not speaking TLS/HTTP
        finally:
            self.connections -= 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _read(self, reader: asyncio.StreamReader, peer: str) -> tuple[Request, bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise BadRequest(413, "request head too large") from None
        lines = head.decode("latin-1").split("\r\n")[:-2]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(400, "not an HTTP/1.x request")
        if len(lines) - 1 > MAX_HEADERS:
            raise BadRequest(413, "too many headers")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest(400, "malformed header")
            key = name.strip().lower()
            if key in headers and key in ("content-length", "host", "origin", "cookie", "content-type"):
                raise BadRequest(400, f"repeated {key} header")
            headers[key] = value.strip()
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise BadRequest(400, "bad content-length")
        if int(length) > MAX_BODY:
            raise BadRequest(413, f"request body larger than {MAX_BODY} bytes")
        if "transfer-encoding" in headers:
            raise BadRequest(400, "chunked requests are not accepted")
        body = await reader.readexactly(int(length)) if int(length) else b""
        return Request(parts[0], parts[1].split("?", 1)[0], headers, peer), body

    # -- routes -------------------------------------------------------------------------

    async def _route(self, request: Request, body: bytes, writer: asyncio.StreamWriter) -> None:
        method, path = request.method, request.path
        if path in self.static:
            if method != "GET":
                await self._send_json(writer, 405, {"error": "GET only"})
                return
            content, kind = self.static[path]
            await self._send(writer, 200, content, kind)
        elif path == "/login" and method == "POST":
            await self._login(request, body, writer)
        elif path == "/logout" and method == "POST":
            if not self._same_origin(request):
                await self._send_json(writer, 403, {"error": "cross-site request refused"})
                return
            self.sessions.logout(cookie_value(request.headers.get("cookie")))
            await self._send(writer, 204, b"", "", f"Set-Cookie: {clear_cookie()}\r\n")
        elif path in ("/api/session", "/api/snapshot", "/api/events") and method == "GET":
            session = self._session(request)
            if session is None:
                await self._send_json(writer, 401, {"error": "log in with a client or viewer token"})
            elif path == "/api/session":
                await self._send_json(writer, 200, {"who": session.who, "namespace": session.namespace})
            elif path == "/api/snapshot":
                snapshot = await self.snapshots.get(session.namespace)
                await self._send(writer, 200, snapshot, "application/json")
            else:
                await self._events(request, session, writer)
        elif path in ("/login", "/logout", "/api/session", "/api/snapshot", "/api/events"):
            await self._send_json(writer, 405, {"error": f"{method} is not allowed here"})
        else:
            await self._send_json(writer, 404, {"error": "no such page"})

    def _session(self, request: Request) -> Session | None:
        session = self.sessions.lookup(cookie_value(request.headers.get("cookie")))
        if session is None and self.anonymous:
            return Session(None, float("inf"))
        return session

    def _same_origin(self, request: Request) -> bool:
        """A browser names the page's origin on every POST; it must be this dashboard."""
        origin = request.headers.get("origin")
        return origin is None or origin == f"https://{request.headers.get('host', '')}"

    async def _login(self, request: Request, body: bytes, writer: asyncio.StreamWriter) -> None:
        # JSON only: a cross-site form cannot send it without a CORS preflight, which we never answer
        if not request.headers.get("content-type", "").startswith("application/json"):
            await self._send_json(writer, 415, {"error": 'send the token as JSON: {"token": "..."}'})
            return
        if not self._same_origin(request):
            await self._send_json(writer, 403, {"error": "cross-site request refused"})
            return
        try:
            document = json.loads(body)
            token = document.get("token") if isinstance(document, dict) else None
        except ValueError:
            token = None
        if not isinstance(token, str) or not token.strip():
            await self._send_json(writer, 400, {"error": 'expected {"token": "..."}'})
            return
        try:
            sid, session = await self.sessions.login(token)
        except (Unauthenticated, PermissionDenied) as exc:
            log.info("dashboard login refused", peer=request.peer, reason=str(exc))  # never the token
            await self._send_json(writer, 401, {"error": f"token refused: {exc}"})
            return
        log.info("dashboard login", who=session.who, peer=request.peer, sessions=len(self.sessions))
        cookie = set_cookie(sid, session.expires - time.time())
        await self._send_json(writer, 200, {"who": session.who}, f"Set-Cookie: {cookie}\r\n")

    async def _events(self, request: Request, session: Session, writer: asyncio.StreamWriter) -> None:
        """Server-sent events: the snapshot whenever it changes, until the session ends."""
        if self.subscribers >= self.max_subscribers:
            await self._send_json(writer, 503, {"error": "too many live pages; try again later"})
            return
        self.subscribers += 1
        try:
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{SECURITY_HEADERS}\r\n".encode()
                + b"retry: 3000\n\n"
            )
            sent, quiet_since = b"", time.monotonic()
            while session.identity is None or self._session(request) is session:
                snapshot = await self.snapshots.get(session.namespace)
                if snapshot != sent:
                    writer.write(b"event: snapshot\ndata: " + snapshot + b"\n\n")
                    sent, quiet_since = snapshot, time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE:
                    writer.write(b": keepalive\n\n")
                    quiet_since = time.monotonic()
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                await asyncio.sleep(FRESH)
        finally:
            self.subscribers -= 1

    # -- responses ----------------------------------------------------------------------

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, kind: str, extra: str = ""
    ) -> None:
        content_type = f"Content-Type: {kind}\r\n" if kind else ""
        head = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\n{content_type}Content-Length: {len(body)}\r\n"
            f"{SECURITY_HEADERS}{extra}\r\n"
        )
        writer.write(head.encode() + body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    async def _send_json(
        self, writer: asyncio.StreamWriter, status: int, document: Any, extra: str = ""
    ) -> None:
        await self._send(writer, status, json.dumps(document).encode(), "application/json", extra)


def dashboard_url(settings: DashboardSettings, endpoint: str) -> str:
    """Where people open the dashboard: the controller's host name, the dashboard's port."""
    return f"https://{endpoint.rpartition(':')[0]}:{settings.listen.rpartition(':')[2]}/"


async def start_dashboard(
    settings: DashboardSettings,
    *,
    store: Store,
    scheduler: LeaseScheduler,
    auth: TokenAuthority,
    routers: list[str],
    ca_pem: bytes,
    cert_path: str,
    key_path: str,
    scheduler_task: Callable[[], asyncio.Task[None] | None],
) -> tuple[DashboardServer, asyncio.Task[None]]:
    """Serve the dashboard on `settings.listen`; returns the server and its router probe task."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(cert_path, key_path)
    probe = RouterProbe(routers, ca_pem)

    def scheduler_state() -> str:
        task = scheduler_task()
        if task is None:
            return "starting"
        if not task.done():
            return "running"
        return "stopped" if task.cancelled() else f"failed: {task.exception()}"

    snapshots = Snapshots(store, scheduler, probe, auth.endpoint, scheduler_state)
    sessions = Sessions(auth, lifetime=settings.session_hours * 3600, max_sessions=settings.max_sessions)
    server = DashboardServer(
        snapshots,
        sessions,
        tls,
        anonymous=settings.anonymous,
        max_connections=settings.max_connections,
        max_subscribers=settings.max_subscribers,
    )
    try:
        await server.start(settings.listen)
    except OSError as exc:
        raise ConfigError(
            f"dashboard: listen: cannot listen on {settings.listen}: {exc.strerror or exc}"
        ) from None
    log.info("dashboard", listen=settings.listen, anonymous=settings.anonymous)
    return server, asyncio.create_task(probe.run(), name="dashboard-router-probe")
