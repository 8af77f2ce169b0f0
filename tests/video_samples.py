"""Real JPEGs and a local camera (ustreamer's HTTP API) for the video tests.

The JPEGs were made once with Pillow (python3-pil: `Image.new("RGB", size, color).save(f, "JPEG",
quality=40)`, a white top row) and embedded: Pillow is not a dependency of the project.
"""

from __future__ import annotations

import base64
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jumpstarter.drivers.video import PLACEHOLDER
from jumpstarter.mjpeg import part

RED_16x8 = PLACEHOLDER
_GREEN = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABQODxIPDRQSEBIXFRQYHjIhHhwcHj0sLiQySUBMS0dARkVQWnNiUFVtVkVGZIhlbXd7gYKB"
    "TmCNl4x9lnN+gXz/2wBDARUXFx4aHjshITt8U0ZTfHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8"
    "fHz/wAARCAAQAAgDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQID"
    "AAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlq"
    "c3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3"
    "+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEI"
    "FEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImK"
    "kpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwCx"
    "9ruf+fiX/vs0VDRXBdni80u5/9k="
)
_BLUE = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABQODxIPDRQSEBIXFRQYHjIhHhwcHj0sLiQySUBMS0dARkVQWnNiUFVtVkVGZIhlbXd7gYKB"
    "TmCNl4x9lnN+gXz/2wBDARUXFx4aHjshITt8U0ZTfHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8"
    "fHz/wAARCAAYABgDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQID"
    "AAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlq"
    "c3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3"
    "+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEI"
    "FEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImK"
    "kpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwCl"
    "/aN7/wA/lx/39b/Gj+0b3/n8uP8Av63+NVqK97kj2Oe7LP8AaN7/AM/lx/39b/Giq1FHJHsF2FFFFUIKKKKAP//Z"
)
GREEN_8x16 = base64.b64decode(_GREEN)
BLUE_24x24 = base64.b64decode(_BLUE)
FRAMES = [RED_16x8, GREEN_8x16, BLUE_24x24]
SIZES = [(16, 8), (8, 16), (24, 24)]


def with_thumbnail(picture: bytes, thumbnail: bytes) -> bytes:
    """`picture` with an EXIF-style APP1 segment holding `thumbnail` (a whole JPEG, with its own EOI)."""
    payload = b"Exif\x00\x00" + thumbnail
    return picture[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + picture[2:]


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the SOF0 segment, parsed here independently of jumpstarter.mjpeg."""
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", "no SOI/EOI"
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xC0:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise AssertionError("no SOF0 segment")


class Camera:
    """A camera behind ustreamer's HTTP API on loopback, with misbehaving routes for the error tests.

    /snapshot: image/jpeg; /stream: multipart/x-mixed-replace (boundary like ustreamer's), cycling
    FRAMES; /stream-no-length: parts without Content-Length; /stall and /stall-stream: headers, then
    nothing; /garbage-stream: a multipart header, then bytes that are not a JPEG; /html: text/html;
    /huge: a snapshot announcing 10 MiB; /huge-stream: a part announcing 10 MiB; /trickle: a frame
    one byte per 0.2 s; /two-then-stall: two frames, then nothing; /missing: 404.
    """

    BOUNDARY = "boundarydonotcross"

    def __init__(self) -> None:
        self.released = threading.Event()
        self.requests: list[str] = []
        camera = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                camera.requests.append(self.path)
                route: Callable[[Handler], None] | None = getattr(
                    camera, "route_" + self.path.strip("/").replace("-", "_"), None
                )
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the exporter hung up: expected when a stream is closed

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> Camera:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def _head(self, handler: BaseHTTPRequestHandler, kind: str, length: int | None = None) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", kind)
        if length is not None:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.flush()

    def _multipart(self, handler: BaseHTTPRequestHandler) -> None:
        self._head(handler, f"multipart/x-mixed-replace;boundary={self.BOUNDARY}")

    def route_snapshot(self, handler: BaseHTTPRequestHandler) -> None:
        self._head(handler, "image/jpeg", len(RED_16x8))
        handler.wfile.write(RED_16x8)

    def route_stream(self, handler: BaseHTTPRequestHandler, lengths: bool = True) -> None:
        self._multipart(handler)
        index = 0
        while not self.released.is_set():
            frame = FRAMES[index % len(FRAMES)]
            head = f"--{self.BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
            if lengths:
                head += f"Content-Length: {len(frame)}\r\nX-Timestamp: {time.time():.6f}\r\n"
            handler.wfile.write(head.encode() + b"\r\n" + frame + b"\r\n")
            handler.wfile.flush()
            index += 1
            self.released.wait(0.02)

    def route_two_then_stall(self, handler: BaseHTTPRequestHandler) -> None:
        self._multipart(handler)
        for frame in FRAMES[:2]:
            handler.wfile.write(part(frame, self.BOUNDARY.encode()))
        handler.wfile.flush()
        self.released.wait(120)

    def route_stream_no_length(self, handler: BaseHTTPRequestHandler) -> None:
        self.route_stream(handler, lengths=False)

    def route_stall(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        handler.wfile.flush()
        self.released.wait(120)

    def route_stall_stream(self, handler: BaseHTTPRequestHandler) -> None:
        self._multipart(handler)
        self.released.wait(120)

    def route_garbage_stream(self, handler: BaseHTTPRequestHandler) -> None:
        self._multipart(handler)
        handler.wfile.write(f"--{self.BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode())
        handler.wfile.write(b"<html>this is not a picture</html>\r\n" * 4)
        handler.wfile.write(f"--{self.BOUNDARY}\r\n".encode())
        handler.wfile.flush()
        self.released.wait(120)

    def route_html(self, handler: BaseHTTPRequestHandler) -> None:
        body = b"<html>login required</html>"
        self._head(handler, "text/html", len(body))
        handler.wfile.write(body)

    def route_huge(self, handler: BaseHTTPRequestHandler) -> None:
        self._head(handler, "image/jpeg", 10 * 1024 * 1024)
        handler.wfile.write(RED_16x8)
        self.released.wait(120)

    def route_huge_stream(self, handler: BaseHTTPRequestHandler) -> None:
        self._multipart(handler)
        handler.wfile.write(
            f"--{self.BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {10 * 1024 * 1024}\r\n\r\n".encode()
        )
        handler.wfile.write(RED_16x8)
        handler.wfile.flush()
        self.released.wait(120)

    def route_trickle(self, handler: BaseHTTPRequestHandler) -> None:
        self._head(handler, "image/jpeg", len(RED_16x8))
        for byte in RED_16x8:
            if self.released.wait(0.2):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
