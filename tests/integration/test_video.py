"""Video through a real exporterd and the CLI: a local ustreamer-like camera, a fake v4l2-ctl, the pytest plugin."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from jumpstarter.demo.lab import wait_for
from tests.video_samples import FRAMES, SIZES, Camera, jpeg_size, with_thumbnail

from .conftest import exporter_config
from .test_pytest_plugin import inner_pytest


def camera_board(**config: object) -> str:
    settings = "".join(f"    {key}: {json.dumps(value)}\n" for key, value in config.items())
    return exporter_config(f"video:\n  type: video.http\n  config:\n{settings}")


@pytest.fixture
def camera():  # type: ignore[no-untyped-def]
    with Camera() as running:
        yield running


def test_snapshot_cli_writes_the_cameras_jpeg(cli, exporterd, camera, workdir):
    exporter = exporterd.start(camera_board(snapshot_url=camera.url + "/snapshot"))

    result = cli("--host", exporter.socket, "video", "snapshot", "out.jpg")

    assert result.returncode == 0, result.stderr
    with open(os.path.join(workdir, "out.jpg"), "rb") as handle:
        saved = handle.read()
    assert saved == FRAMES[0] and jpeg_size(saved) == (16, 8)
    assert "out.jpg: 16x8 JPEG, 661 bytes" in result.stderr
    assert camera.requests == ["/snapshot"]


@pytest.mark.parametrize("route", ["/stream", "/stream-no-length"])
def test_stream_cli_saves_n_frames_in_order(cli, exporterd, camera, workdir, route):
    exporter = exporterd.start(camera_board(stream_url=camera.url + route))

    result = cli("--host", exporter.socket, "video", "stream", "--frames", "5", "frames")

    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(os.path.join(workdir, "frames")))
    assert names == [f"frame-{i:04d}.jpg" for i in range(1, 6)]
    sizes = []
    for name in names:
        with open(os.path.join(workdir, "frames", name), "rb") as handle:
            sizes.append(jpeg_size(handle.read()))
    assert sizes == [SIZES[i % 3] for i in range(5)]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"snapshot_url": "/stall"}, "sent no snapshot within 2s"),
        ({"snapshot_url": "/trickle"}, "sent no snapshot within 2s"),
        ({"stream_url": "/stall-stream"}, "sent no complete frame within 2s"),
        ({"stream_url": "/garbage-stream"}, "not a JPEG: starts with 3c68746d"),
        ({"snapshot_url": "/html"}, "answered 'text/html', not image/jpeg"),
        ({"snapshot_url": "/huge"}, "snapshot of 10485760 bytes refused (limit 65536 bytes, see max_frame)"),
        ({"stream_url": "/huge-stream"}, "frame of 10485760 bytes is larger than the limit of 65536 bytes"),
        ({"snapshot_url": "/missing"}, "camera answered HTTP 404 to GET"),
        ({"stream_url": "/snapshot"}, "not an MJPEG stream: content type 'image/jpeg'"),
    ],
)
def test_a_camera_that_stalls_or_sends_garbage_gives_a_clear_error(cli, exporterd, camera, config, message):
    settings = {key: camera.url + path for key, path in config.items()}
    exporter = exporterd.start(camera_board(**settings, timeout=2, max_frame=65536))

    result = cli("--host", exporter.socket, "video", "snapshot", "out.jpg", timeout=60)

    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_camera_that_stalls_mid_stream_ends_the_stream_with_a_clear_error(cli, exporterd, camera, workdir):
    exporter = exporterd.start(camera_board(stream_url=camera.url + "/two-then-stall", timeout=2))

    result = cli("--host", exporter.socket, "video", "stream", "--frames", "5", "frames", timeout=60)

    assert result.returncode == 1, result.stderr
    assert "sent no complete frame within 2s" in result.stderr, result.stderr
    assert sorted(os.listdir(os.path.join(workdir, "frames"))) == ["frame-0001.jpg", "frame-0002.jpg"]


def test_an_unreachable_camera_is_a_clear_error(cli, exporterd, camera):
    camera.server.server_close()  # nobody listens on that port any more
    exporter = exporterd.start(camera_board(snapshot_url=camera.url + "/snapshot"))

    result = cli("--host", exporter.socket, "video", "snapshot", "out.jpg")

    assert result.returncode == 1
    assert f"camera unreachable at {camera.url}/snapshot" in result.stderr, result.stderr


FAKE_V4L2_CTL = """\
#!{python}
# A stand-in for v4l2-ctl (v4l-utils): no camera here. Logs its argv, writes MJPG buffers to stdout.
import json, os, sys, time
with open(os.environ["FAKE_V4L2_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid()}}) + "\\n")
mode = os.environ.get("FAKE_V4L2_MODE", "ok")
if mode == "busy":
    sys.stderr.write("VIDIOC_S_FMT: failed: Device or resource busy\\n")
    sys.exit(255)
frames = open(os.environ["FAKE_V4L2_FRAMES"], "rb").read().split(b"--next--")
count = [int(a.split("=")[1]) for a in sys.argv if a.startswith("--stream-count=")]
sent = 0
while not count or sent < count[0]:
    sys.stdout.buffer.write(frames[sent % len(frames)] + b"\\0" * 13)  # buffers padded, as drivers do
    sys.stdout.buffer.flush()
    sent += 1
    time.sleep(0.02)
"""


@pytest.fixture
def fake_v4l2(workdir):  # type: ignore[no-untyped-def]
    """PATH and files for a fake v4l2-ctl that streams FRAMES (one with an EXIF thumbnail inside)."""
    bindir = os.path.join(workdir, "bin")
    os.makedirs(bindir)
    tool = os.path.join(bindir, "v4l2-ctl")
    with open(tool, "w") as handle:
        handle.write(FAKE_V4L2_CTL.format(python=sys.executable))
    os.chmod(tool, 0o755)
    frames = os.path.join(workdir, "frames.bin")
    with open(frames, "wb") as handle:
        handle.write(b"--next--".join([FRAMES[0], with_thumbnail(FRAMES[2], FRAMES[1]), FRAMES[1]]))
    log = os.path.join(workdir, "v4l2.log")
    env = {"PATH": bindir + os.pathsep + os.environ["PATH"], "FAKE_V4L2_LOG": log, "FAKE_V4L2_FRAMES": frames}

    def calls() -> list[dict]:
        with open(log) as handle:
            return [json.loads(line) for line in handle]

    return env, calls


V4L2_BOARD = exporter_config(
    "video:\n  type: video.v4l2\n  config:\n    device: /dev/video0\n    width: 640\n    height: 480\n    timeout: 5\n"
)


def test_v4l2_snapshot_and_stream_through_a_fake_v4l2_ctl(cli, exporterd, fake_v4l2, workdir):
    env, calls = fake_v4l2
    exporter = exporterd.start(V4L2_BOARD, env=env)

    snapshot = cli("--host", exporter.socket, "video", "snapshot", "one.jpg")
    stream = cli("--host", exporter.socket, "video", "stream", "-n", "4", "frames")

    assert snapshot.returncode == 0, snapshot.stderr
    assert stream.returncode == 0, stream.stderr
    with open(os.path.join(workdir, "one.jpg"), "rb") as handle:
        assert handle.read() == FRAMES[0]
    saved = []
    for i in range(1, 5):
        with open(os.path.join(workdir, "frames", f"frame-{i:04d}.jpg"), "rb") as handle:
            saved.append(handle.read())
    assert saved == [FRAMES[0], with_thumbnail(FRAMES[2], FRAMES[1]), FRAMES[1], FRAMES[0]]
    common = [
        "--device=/dev/video0",
        "--set-fmt-video=width=640,height=480,pixelformat=MJPG",
        "--stream-mmap",
    ]
    assert [c["argv"] for c in calls()] == [
        [*common, "--stream-count=1", "--stream-to=-"],
        [*common, "--stream-to=-"],
    ]

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    streaming_pid = calls()[1]["pid"]  # the endless capture ends with the client's stream
    wait_for(lambda: gone(streaming_pid), 30, "the v4l2-ctl of the closed stream to exit")


def test_v4l2_tool_failure_shows_its_message(cli, exporterd, fake_v4l2):
    env, _ = fake_v4l2
    exporter = exporterd.start(V4L2_BOARD, env={**env, "FAKE_V4L2_MODE": "busy"})

    result = cli("--host", exporter.socket, "video", "snapshot", "one.jpg")

    assert result.returncode == 1
    assert (
        "v4l2-ctl on /dev/video0 exited with 255: VIDIOC_S_FMT: failed: Device or resource busy"
        in result.stderr
    )


FAILS_WITH_A_CAMERA = textwrap.dedent("""
    def test_fails_on_the_board(board):
        assert board.video.snapshot()
        assert False, "the screen shows a kernel panic"

    def test_passes_on_the_board(board):
        assert board.video.snapshot()
""")


def test_a_failing_test_gets_a_snapshot_in_its_report(exporterd, workdir, cli_env, camera):
    exporter = exporterd.start(camera_board(snapshot_url=camera.url + "/snapshot"))
    env = {k: v for k, v in cli_env.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}

    result = inner_pytest(workdir, FAILS_WITH_A_CAMERA, "--jumpstarter-host", exporter.socket, "-rA", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    snapshots = os.path.join(workdir, "jumpstarter-snapshots")
    assert os.listdir(snapshots) == ["test_inner_board.py_test_fails_on_the_board-video.jpg"]
    path = os.path.join(snapshots, "test_inner_board.py_test_fails_on_the_board-video.jpg")
    with open(path, "rb") as handle:
        assert jpeg_size(handle.read()) == (16, 8)
    assert "jumpstarter snapshot video" in result.stdout
    assert f"{path} (16x8 JPEG, 661 bytes)" in result.stdout
