"""Resource handles (PROTOCOL.md §5): how a driver reads or writes a client's bulk data.

`client_stream`: the bytes arrive (or leave) over a session-level
`RouterService.Stream` the client opened beforehand; the session parked one end
of a bounded pipe in `driver.resources[uuid]`.
`presigned_request`: the exporter fetches (GET) or uploads (PUT) over HTTP itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from jumpstarter import compression
from jumpstarter.streams import ByteStream, memory_pipe

if TYPE_CHECKING:
    from jumpstarter.driver.base import Driver

HTTP_CHUNK = 1024 * 1024


class TransformedStream:
    """Decompresses what is received and compresses what is sent."""

    def __init__(self, inner: ByteStream, encoding: str) -> None:
        self.inner = inner
        self.decode = compression.decompressor(encoding)
        self.encode = compression.compressor(encoding)

    async def receive(self) -> bytes:
        while True:
            data = await self.inner.receive()
            if not data:
                return self.decode.finish()
            out = self.decode.feed(data)
            if out:
                return out

    async def send(self, data: bytes) -> None:
        out = self.encode.feed(data)
        if out:
            await self.inner.send(out)

    async def send_eof(self) -> None:
        tail = self.encode.finish()
        if tail:
            await self.inner.send(tail)
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def parse_handle(handle: Any) -> dict[str, Any]:
    if isinstance(handle, str):
        try:
            handle = json.loads(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"resource handle is not JSON: {exc}") from exc
    if not isinstance(handle, dict) or "kind" not in handle:
        raise ValueError("expected a resource handle: an object with a 'kind'")
    return handle


@contextlib.asynccontextmanager
async def open_resource(driver: Driver, handle: Any) -> AsyncIterator[ByteStream]:
    spec = parse_handle(handle)
    kind = spec["kind"]
    if kind == "client_stream":
        key = str(spec.get("uuid", ""))
        stream: Any = driver.resources.pop(key, None)
        if stream is None:
            raise ValueError(f"no open resource stream {key!r} on this driver (open it before the call)")
        encoding = compression.check(spec.get("x_jmp_content_encoding"))
        if encoding:
            stream = TransformedStream(stream, encoding)
        try:
            yield stream
        finally:
            await stream.aclose()
    elif kind == "presigned_request":
        async with _http_stream(spec, getattr(driver, "check_url", None)) as stream:
            yield stream
    else:
        raise ValueError(f"unknown resource kind {kind!r} (client_stream or presigned_request)")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the driver's `check_url` accepts (no hop to an internal host)."""

    def __init__(self, check_url: Callable[[str], None]) -> None:
        self.check_url = check_url

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@contextlib.asynccontextmanager
async def _http_stream(
    spec: dict[str, Any], check_url: Callable[[str], None] | None = None
) -> AsyncIterator[ByteStream]:
    """GET: the stream yields the body. PUT: what the driver sends becomes the body.

    A driver with `check_url(url)` (raising ValueError) vets the URL and every redirect.
    """
    url = str(spec.get("url", ""))
    method = str(spec.get("method", "GET")).upper()
    if not url.startswith(("http://", "https://")):
        raise ValueError("presigned_request needs an http(s) url")
    if method not in ("GET", "PUT"):
        raise ValueError(f"presigned_request method must be GET or PUT, not {method}")
    headers = {str(k): str(v) for k, v in dict(spec.get("headers") or {}).items()}
    safe_url = url.split("?", 1)[0]  # never report signatures in query strings
    if check_url is not None:
        check_url(url)
    opener = urllib.request.build_opener(*([_CheckedRedirects(check_url)] if check_url else []))
    if method == "GET":
        try:
            request = urllib.request.Request(url, headers=headers, method="GET")
            response = await asyncio.to_thread(opener.open, request, timeout=60)
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"HTTP GET {safe_url} failed: {exc}") from exc
        try:
            yield HttpBodyStream(response, safe_url)
        finally:
            response.close()
        return

    loop = asyncio.get_running_loop()
    ours, theirs = memory_pipe(8)
    failure: list[BaseException] = []

    def body() -> Iterator[bytes]:
        while chunk := asyncio.run_coroutine_threadsafe(theirs.receive(), loop).result():
            yield chunk

    def put() -> None:
        try:
            request = urllib.request.Request(url, data=body(), headers=headers, method="PUT")
            with opener.open(request, timeout=60):
                pass
        except BaseException as exc:  # reported when the driver closes the stream
            failure.append(exc)
            # keep draining so the driver never blocks on a dead upload
            while asyncio.run_coroutine_threadsafe(theirs.receive(), loop).result():
                pass

    worker = threading.Thread(target=put, daemon=True, name="http-put")
    worker.start()
    try:
        yield ours
    finally:
        await ours.aclose()
        await asyncio.to_thread(worker.join)
    if failure:
        raise ConnectionError(f"HTTP PUT {safe_url} failed: {failure[0]}")


class HttpBodyStream:
    """The body of an HTTP response as a receive-only `ByteStream`."""

    def __init__(self, response: Any, url: str) -> None:
        self.response = response
        self.url = url

    async def receive(self) -> bytes:
        try:
            return await asyncio.to_thread(self.response.read, HTTP_CHUNK)  # type: ignore[no-any-return]
        except OSError as exc:
            raise ConnectionError(f"HTTP GET {self.url} failed: {exc}") from exc

    async def send(self, data: bytes) -> None:
        raise ValueError("this resource is read-only (an HTTP GET)")

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        self.response.close()
