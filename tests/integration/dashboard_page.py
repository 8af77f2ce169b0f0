"""Helpers for tests/integration/test_dashboard.py: HTTPS calls to the dashboard, a headless
Chromium (Debian's `chromium` + `chromium-driver`, through Selenium), and a PNG check."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def https(
    port: int,
    ca: bytes,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request to the dashboard over TLS verified against the lab CA."""
    context = ssl.create_default_context(cadata=ca.decode())
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def start_dashboard_central(prefix: str, **dashboard: Any) -> tuple[Any, int]:
    """A started Central whose controllerd serves the dashboard (settings `dashboard`) on a free port,
    once that port listens (controllerd binds it after its gRPC port, which start_central waits for)."""
    from .central import close_central, free_port, start_central, wait_until

    port = free_port()
    router = dashboard.pop("router", True)
    central = start_central(
        prefix=prefix, router=router, dashboard={"listen": f"127.0.0.1:{port}", **dashboard}
    )
    try:
        wait_until(lambda: _listening(port), 20, "the dashboard to listen")
    except BaseException:
        close_central(central)
        raise
    return central, port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def login(port: int, ca: bytes, token: str, **headers: str) -> Reply:
    body = json.dumps({"token": token}).encode()
    return https(port, ca, "POST", "/login", body, {"Content-Type": "application/json", **headers})


def session_cookie(reply: Reply) -> str:
    """`NAME=VALUE` of the session cookie a login set (what a browser sends back)."""
    return reply.headers["set-cookie"].split(";", 1)[0]


def spki_pin(cert_path: str) -> str:
    """The certificate's public key hash, as Chromium's --ignore-certificate-errors-spki-list wants it:
    Chromium then trusts exactly this key (the lab CA is not in its trust store), nothing else."""
    with open(cert_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def chromium(cert_path: str, profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # we run as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,800",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={spki_pin(cert_path)}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def png_pixels(png: bytes) -> list[bytes]:
    """The pixels (RGB bytes each) of an 8-bit RGB/RGBA PNG, unfiltered, row by row."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, data, header = 8, b"", b""
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        chunk = png[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            data += chunk
        offset += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), f"unexpected PNG format: depth {depth}, color type {color}"
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(data)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return [r[i : i + 3] for r in rows for i in range(0, stride, channels)]


def ink(png: bytes) -> float:
    """The share of pixels that differ from the image's most common colour (0.0: a blank image)."""
    pixels = png_pixels(png)
    counts = Counter(pixels)
    background = counts.most_common(1)[0][1]
    return 1 - background / len(pixels)
