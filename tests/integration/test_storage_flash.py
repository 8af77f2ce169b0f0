"""Flashing through a real exporterd and the CLI: every compression at 256 MiB with flat memory,
bmap, http(s) sources, a killed client, a corrupted write, and the mux always left safe.

The muxes are the fake `usbsdmux` / `sd-mux-ctrl` of tests/integration/fakes (the hardware
cannot run here); the cards are regular files or loop devices.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .central import wait_until
from .conftest import CLI, PY, exporter_config
from .storage_images import MIB, bmap_text, make_images

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes")
HEAD = MIB


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_images(str(tmp_path_factory.mktemp("images")))


@dataclass
class Mux:
    """A fake mux's world: its call log, its side, the card file and where it appears on the host."""

    folder: str
    card: str
    device: str
    env: dict[str, str]

    def calls(self) -> list[str]:
        try:
            with open(os.path.join(self.folder, "calls")) as log:
                return log.read().splitlines()
        except FileNotFoundError:
            return []

    def side(self) -> str:
        with open(os.path.join(self.folder, "side")) as handle:
            return handle.read().strip()

    def head(self) -> bytes:
        with open(self.card, "rb") as handle:
            return handle.read(HEAD)


def fake_tool(workdir: str, name: str, script: str) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w") as out:
        out.write(f'#!/bin/sh\nexec "{PY}" "{os.path.join(FAKES, script)}" "$@"\n')
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def mux(workdir: str) -> Mux:
    card = os.path.join(workdir, "card.img")
    with open(card, "wb") as handle:
        handle.write(b"\xaa" * HEAD)  # an old image's head: a failed flash must not leave it either
    env = {
        "FAKE_MUX_DIR": workdir,
        "FAKE_MUX_CARD": card,
        "FAKE_MUX_DEVICE": os.path.join(workdir, "by-id-card"),
        "FAKE_SDWIRE_SERIAL": "sdwire-7",
    }
    open(os.path.join(workdir, "sg0"), "w").close()  # the control node the tool opens
    return Mux(workdir, card, env["FAKE_MUX_DEVICE"], env)


def usbsdmux_board(workdir: str, mux: Mux, *extra: str) -> str:
    tool = fake_tool(workdir, "usbsdmux", "usbsdmux.py")
    lines = "".join(f"    {line}\n" for line in extra)
    return exporter_config(f"""
storage:
  type: storage.usbsdmux
  config:
    control: {workdir}/sg0
    storage_device: {mux.device}
    executable: {tool}
    device_timeout: 20
{lines}""")


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def sha256_of(path: str, length: int | None = None) -> str:
    digest, left = hashlib.sha256(), length
    with open(path, "rb") as handle:
        while data := handle.read(MIB if left is None else min(MIB, left)):
            digest.update(data)
            if left is not None:
                left -= len(data)
    return digest.hexdigest()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("encoding", ["raw", "gzip", "xz", "bz2", "zstd"])
def test_flash_256_mib_in_each_compression_through_the_mux_with_flat_memory(
    encoding, images, cli, exporterd, workdir, mux
):
    exporter = exporterd.start(usbsdmux_board(workdir, mux), env=mux.env)

    result = cli("--host", exporter.socket, "storage", "flash", images[encoding], timeout=500)

    assert result.returncode == 0, result.stderr + exporter.log()[-2000:]
    assert "verified" in result.stdout and "NOT" not in result.stdout, result.stdout
    assert sha256_of(mux.card) == images["sha256"]
    assert os.path.getsize(mux.card) == 256 * MIB
    peak = vm_hwm_kib(exporter.process.pid) / 1024
    assert peak < 100, f"exporterd peaked at {peak:.0f} MiB resident while flashing 256 MiB"
    assert mux.calls()[-2:] == [f"usbsdmux {workdir}/sg0 host", f"usbsdmux {workdir}/sg0 dut"]
    assert mux.side() == "dut"
    status = cli("--host", exporter.socket, "storage", "status")
    assert status.returncode == 0 and "last flash: complete" in status.stdout, status.stdout


@pytest.fixture
def loop_device(workdir: str) -> Iterator[tuple[str, str]]:
    """A real block device: a loop device over a 64 MiB file filled with 0xAA."""
    backing = os.path.join(workdir, "loop-backing.img")
    with open(backing, "wb") as handle:
        handle.write(b"\xaa" * (64 * MIB))
    device = subprocess.run(
        ["losetup", "--find", "--show", backing], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def sparse_image(workdir: str) -> tuple[str, str, list[tuple[int, int, bytes]]]:
    """A 48 MiB image with data in three ranges (one inside the head), and its .bmap."""
    block = 4096
    mapped = [
        (0, 15, os.urandom(16 * block)),
        (2000, 2303, os.urandom(304 * block)),
        (9000, 9000, b"\x01" * block),
    ]
    size = 48 * MIB
    image = os.path.join(workdir, "sparse.img")
    with open(image, "wb") as out:
        out.truncate(size)
        for first, _, data in mapped:
            out.seek(first * block)
            out.write(data)
    bmap = os.path.join(workdir, "sparse.bmap")
    with open(bmap, "w") as out:
        out.write(bmap_text(size, block, mapped))
    return image, bmap, mapped


def test_bmap_writes_and_verifies_only_the_mapped_ranges_of_a_block_device(
    cli, exporterd, workdir, loop_device
):
    device, backing = loop_device
    exporter = exporterd.start(
        exporter_config(f"""
        storage:
          type: storage.blockdev
          config:
            path: {device}
    """)
    )
    image, bmap, mapped = sparse_image(workdir)

    result = cli("--host", exporter.socket, "storage", "flash", image, "--bmap", bmap, timeout=120)

    assert result.returncode == 0, result.stderr + exporter.log()[-2000:]
    assert "verified" in result.stdout, result.stdout
    with open(backing, "rb") as disk:
        content = disk.read()
    for first, _, data in mapped:
        assert content[first * 4096 : first * 4096 + len(data)] == data
    untouched = content[16 * 4096 : 2000 * 4096] + content[2304 * 4096 : 9000 * 4096] + content[9001 * 4096 :]
    assert set(untouched) == {0xAA}, "bytes outside the bmap's ranges were written"


def test_an_image_that_does_not_match_its_bmap_is_refused_and_marked_incomplete(cli, exporterd, workdir, mux):
    exporter = exporterd.start(usbsdmux_board(workdir, mux), env=mux.env)
    image, bmap, _ = sparse_image(workdir)
    with open(image, "r+b") as out:
        out.seek(2100 * 4096)
        out.write(b"tampered")

    result = cli("--host", exporter.socket, "storage", "flash", image, "--bmap", bmap, timeout=120)

    assert result.returncode == 1
    assert "does not match its bmap" in result.stderr, result.stderr
    assert mux.head() == bytes(HEAD), "a refused image left a bootable-looking head"
    assert mux.side() == "off"


def feed_fifo(path: str, parts: list[bytes], gate: threading.Event) -> threading.Thread:
    """Write parts[0] into a FIFO, wait for `gate`, write the rest and close (a daemon thread)."""

    def run() -> None:
        try:
            with open(path, "wb") as fifo:
                fifo.write(parts[0])
                fifo.flush()
                gate.wait(120)
                for part in parts[1:]:
                    fifo.write(part)
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("driver", "sig"),
    [
        ("storage.usbsdmux", signal.SIGKILL),
        ("storage.file", signal.SIGKILL),
        ("storage.usbsdmux", signal.SIGINT),
    ],
    ids=["mux-killed", "file-killed", "mux-ctrl-c"],
)
def test_a_killed_client_leaves_the_card_marked_incomplete_and_the_mux_off(
    driver, sig, cli_env, exporterd, workdir, mux, cli
):
    if driver == "storage.file":  # no mux: the card reader's device is always there
        config = exporter_config(f"storage:\n  type: storage.file\n  config:\n    path: {mux.card}\n")
        os.symlink(mux.card, mux.device)
        with open(os.path.join(workdir, "side"), "w") as side:
            side.write("host")
    else:
        config = usbsdmux_board(workdir, mux)
    exporter = exporterd.start(config, env=mux.env)
    fifo = os.path.join(workdir, "image.fifo")
    os.mkfifo(fifo)
    gate = threading.Event()
    feed_fifo(fifo, [os.urandom(16 * MIB), os.urandom(16 * MIB)], gate)
    client = subprocess.Popen(
        [*CLI, "--host", exporter.socket, "storage", "flash", fifo],
        env=cli_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: os.path.getsize(mux.card) >= 8 * MIB, 60, "the first blocks on the card")
        assert mux.side() == "host"
        client.send_signal(sig)
        _, stderr = client.communicate(timeout=60)
        assert client.returncode != 0
        if sig == signal.SIGINT:
            assert b"Traceback" not in stderr, stderr

        def incomplete() -> str | None:
            status = cli("--host", exporter.socket, "storage", "status")
            return status.stdout if "incomplete" in status.stdout else None

        text = wait_until(incomplete, 60, "the exporter to record the flash as incomplete", interval=0.2)
    finally:
        gate.set()
        if client.poll() is None:
            client.kill()
            client.wait()
    assert mux.head() == bytes(HEAD), "the partial image's head was written"
    if driver == "storage.usbsdmux":
        assert "card: off" in text, text
        assert mux.calls()[-1] == f"usbsdmux {workdir}/sg0 off"


def test_a_corrupted_write_is_caught_by_reading_back(cli, cli_env, exporterd, workdir, mux):
    exporter = exporterd.start(usbsdmux_board(workdir, mux), env=mux.env)
    fifo = os.path.join(workdir, "image.fifo")
    os.mkfifo(fifo)
    first, rest = os.urandom(12 * MIB), os.urandom(4 * MIB)
    gate = threading.Event()
    feed_fifo(fifo, [first, rest], gate)
    flashing = subprocess.Popen(
        [*CLI, "--host", exporter.socket, "storage", "flash", fifo],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    offset = 5 * MIB + 123

    def written() -> bool:  # the byte is on the card (page cache included), as the flasher wrote it
        with open(mux.card, "rb") as card:
            card.seek(offset)
            return card.read(1) == first[offset : offset + 1]

    try:
        wait_until(written, 60, "the byte to be written")
        with open(mux.card, "r+b") as card:  # the card goes bad under the flasher: another process flips it
            card.seek(offset)
            card.write(bytes([first[offset] ^ 0xFF]))
        gate.set()
        _, stderr = flashing.communicate(timeout=120)
    finally:
        gate.set()
        if flashing.poll() is None:
            flashing.kill()
    assert flashing.returncode == 1
    assert "verification failed" in stderr, stderr
    assert mux.head() == bytes(HEAD)
    assert mux.side() == "off"
    status = cli("--host", exporter.socket, "storage", "status")
    assert "incomplete" in status.stdout and status.returncode == 1, status.stdout


@pytest.mark.parametrize("failure", ["corrupt gzip", "image too large", "switch back fails"])
def test_an_error_never_leaves_the_mux_on_the_host(failure, cli, exporterd, workdir, mux):
    extra = ["max_bytes: 1048576"] if failure == "image too large" else []
    env = {**mux.env, "FAKE_MUX_FAIL": "dut"} if failure == "switch back fails" else mux.env
    exporter = exporterd.start(usbsdmux_board(workdir, mux, *extra), env=env)
    image = os.path.join(workdir, "image.raw.gz" if failure == "corrupt gzip" else "image.raw")
    with open(image, "wb") as out:
        out.write(
            b"\x1f\x8b\x08\x00not gzip at all" * 1000 if failure == "corrupt gzip" else os.urandom(3 * MIB)
        )

    result = cli("--host", exporter.socket, "storage", "flash", image, timeout=60)

    assert result.returncode == 1, result.stdout
    assert mux.side() == "off", mux.calls()
    assert mux.calls()[-1].endswith(" off")
    assert "host" in " ".join(mux.calls()), "the flash never reached the host side"


def test_a_card_that_never_appears_on_the_host_times_out_and_the_mux_goes_off(cli, exporterd, workdir, mux):
    missing = dataclasses.replace(mux, device=os.path.join(workdir, "no-such-card"))
    config = usbsdmux_board(workdir, missing).replace("device_timeout: 20", "device_timeout: 1")
    exporter = exporterd.start(config, env=mux.env)
    image = os.path.join(workdir, "image.raw")
    with open(image, "wb") as out:
        out.write(os.urandom(MIB))

    result = cli("--host", exporter.socket, "storage", "flash", image, timeout=60)

    assert result.returncode == 1, result.stdout
    assert "no-such-card did not appear on the host" in result.stderr, result.stderr
    assert mux.side() == "off", mux.calls()


def test_sdwire_goes_back_to_the_board_after_flashing_and_after_an_error(cli, exporterd, workdir, mux):
    tool = fake_tool(workdir, "sd-mux-ctrl", "sd_mux_ctrl.py")
    exporter = exporterd.start(
        exporter_config(f"""
        storage:
          type: storage.sdwire
          config:
            serial: sdwire-7
            storage_device: {mux.device}
            executable: {tool}
    """),
        env=mux.env,
    )
    image = os.path.join(workdir, "image.raw")
    with open(image, "wb") as out:
        out.write(os.urandom(3 * MIB))

    good = cli("--host", exporter.socket, "storage", "flash", image)
    bad = cli("--host", exporter.socket, "storage", "flash", "--compression", "xz", image)

    assert good.returncode == 0, good.stderr
    assert bad.returncode == 1 and "corrupt xz data" in bad.stderr, bad.stderr
    assert (
        mux.calls()[-4:]
        == ["sd-mux-ctrl --device-serial=sdwire-7 --ts", "sd-mux-ctrl --device-serial=sdwire-7 --dut"] * 2
    )
    assert mux.side() == "dut"


def test_the_exporter_fetches_allowed_http_images_itself_and_bounds_their_size(
    cli, exporterd, workdir, mux, images
):
    folder = os.path.dirname(images["zstd"])

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/images/jump":  # an allowed URL redirecting outside the allowlist
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/secret")
                self.end_headers()
                return
            self.path = self.path.removeprefix("/images")
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    url = f"{base}/images/{os.path.basename(images['zstd'])}"
    allow = f'fetch_from: ["{base}/images/"]'
    try:
        exporter = exporterd.start(usbsdmux_board(workdir, mux, allow), env=mux.env)
        fetched = cli("--host", exporter.socket, "storage", "flash", url, timeout=300)
        assert fetched.returncode == 0, fetched.stderr + exporter.log()[-2000:]
        assert sha256_of(mux.card) == images["sha256"]
        outside_urls = (
            f"{base}/{os.path.basename(images['zstd'])}",
            f"{base}/images/jump",
            f"{base}/images/../{os.path.basename(images['zstd'])}",  # climbing out of the allowed folder
            f"{base}/images/%2e%2e/{os.path.basename(images['zstd'])}",
        )
        for outside in outside_urls:
            refused = cli("--host", exporter.socket, "storage", "flash", outside, timeout=60)
            assert refused.returncode == 1 and "does not fetch" in refused.stderr, refused.stderr
            assert mux.side() == "off"
        exporter.stop()

        small = exporterd.start(
            usbsdmux_board(workdir, mux, allow, "max_bytes: 16777216"), name="small", env=mux.env
        )
        too_big = cli("--host", small.socket, "storage", "flash", url, timeout=300)
        assert too_big.returncode == 1 and "larger than the target" in too_big.stderr, too_big.stderr
        assert mux.side() == "off"
    finally:
        server.shutdown()


def test_a_decompression_bomb_is_cut_off_at_the_target_size_with_flat_memory(cli, exporterd, workdir, mux):
    import zstandard

    bomb = os.path.join(workdir, "bomb.raw.zst")
    packer = zstandard.ZstdCompressor(level=1).compressobj()
    with open(bomb, "wb") as out:  # 2 GiB of zeros in a few hundred KiB
        zeros = bytes(64 * MIB)
        for _ in range(32):
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    exporter = exporterd.start(usbsdmux_board(workdir, mux, "max_bytes: 33554432"), env=mux.env)

    result = cli("--host", exporter.socket, "storage", "flash", bomb, timeout=120)

    assert result.returncode == 1 and "larger than the target" in result.stderr, result.stderr
    assert os.path.getsize(mux.card) <= 32 * MIB
    peak = vm_hwm_kib(exporter.process.pid) / 1024
    assert peak < 100, f"exporterd peaked at {peak:.0f} MiB resident on a decompression bomb"
    assert mux.side() == "off"


def test_https_images_are_fetched_only_from_servers_with_a_trusted_certificate(cli, exporterd, workdir, mux):
    import ssl

    from jumpstarter import tls

    ca_pem, ca_key = tls.generate_ca()
    cert, key = tls.issue(tls.LabCA("ca.pem", "ca.key", ca_pem, ca_key), ["127.0.0.1"])
    for name, data in (("ca.pem", ca_pem), ("server.pem", cert), ("server.key", key)):
        with open(os.path.join(workdir, name), "wb") as out:
            out.write(data)
    image = os.path.join(workdir, "served", "image.raw")
    os.makedirs(os.path.dirname(image))
    with open(image, "wb") as out:
        out.write(os.urandom(2 * MIB))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=os.path.dirname(image))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(workdir, "server.pem"), os.path.join(workdir, "server.key"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/image.raw"
    try:
        allow = f'fetch_from: ["https://127.0.0.1:{server.server_address[1]}/"]'
        untrusting = exporterd.start(usbsdmux_board(workdir, mux, allow), env=mux.env)
        refused = cli("--host", untrusting.socket, "storage", "flash", url, timeout=120)
        assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
        status = cli("--host", untrusting.socket, "storage", "status")
        assert "last flash: failed" in status.stdout and "untouched" in status.stdout, status.stdout
        assert mux.side() == "off"
        untrusting.stop()

        trusting = exporterd.start(
            usbsdmux_board(workdir, mux, allow),
            name="trusting",
            env={**mux.env, "SSL_CERT_FILE": os.path.join(workdir, "ca.pem")},
        )
        fetched = cli("--host", trusting.socket, "storage", "flash", url, timeout=120)
        assert fetched.returncode == 0, fetched.stderr
        assert sha256_of(mux.card) == sha256_of(image)
    finally:
        server.shutdown()
