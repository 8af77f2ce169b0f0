"""Video: JPEG and MJPEG parsing (jumpstarter.mjpeg), the drivers' examples and config checks."""

from __future__ import annotations

import doctest

import pytest

from jumpstarter.config.exporter import load_exporter_config
from jumpstarter.driver.serve import serve
from jumpstarter.drivers.video import StillVideo
from jumpstarter.drivers.video_http import HttpVideo
from jumpstarter.errors import ConfigError
from jumpstarter.mjpeg import (
    BOUNDARY,
    BadFrame,
    JpegSplitter,
    MultipartParser,
    boundary_of,
    jpeg_info,
    part,
)
from tests.video_samples import FRAMES, SIZES, Camera, jpeg_size, with_thumbnail


def test_sample_jpegs_have_the_dimensions_of_their_sof0():
    for frame, size in zip(FRAMES, SIZES, strict=True):
        info = jpeg_info(frame)
        assert (info.width, info.height) == size == jpeg_size(frame)
        assert info.size == len(frame)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"<html>not a picture</html>", "not a JPEG"),
        (FRAMES[0][:-2], "truncated JPEG"),
        (FRAMES[0][:300], "truncated JPEG"),
        (FRAMES[0] + b"trailing junk", "garbage after the end"),
        (FRAMES[0][:2] + b"\x00" + FRAMES[0][3:], "expected a marker"),
        (b"\xff\xd8\xff\xd9", "no frame header"),
    ],
)
def test_what_is_not_one_complete_jpeg_is_refused(data, problem):
    with pytest.raises(BadFrame, match=problem):
        jpeg_info(data)


def test_a_jpeg_with_an_embedded_thumbnail_is_split_by_its_segments_not_at_the_first_ffd9():
    tricky = with_thumbnail(FRAMES[2], FRAMES[1])  # the thumbnail has its own SOI...EOI inside APP1
    assert tricky.find(b"\xff\xd9") < len(tricky) - 2
    stream = b"".join([FRAMES[0], tricky, b"\x00" * 37, FRAMES[1]])  # V4L2 buffers may be zero-padded
    for chunk in (1, 7, 512, len(stream)):
        splitter = JpegSplitter(max_frame=64 * 1024)
        frames = [f for i in range(0, len(stream), chunk) for f in splitter.feed(stream[i : i + chunk])]
        assert frames == [FRAMES[0], tricky, FRAMES[1]], chunk
        assert splitter.pending == 0
    assert (jpeg_info(tricky).width, jpeg_info(tricky).height) == (24, 24)


def test_splitter_refuses_a_frame_over_the_limit_and_a_stream_that_is_not_jpeg():
    with pytest.raises(BadFrame, match="larger than the limit of 1024"):
        JpegSplitter(max_frame=1024).feed(with_thumbnail(FRAMES[0], FRAMES[2]))
    with pytest.raises(BadFrame, match="not a JPEG"):
        JpegSplitter().feed(b"YUYV" * 100)


def ustreamer_body(frames, lengths=True, boundary=b"boundarydonotcross"):
    out = b"preamble ignored\r\n"
    for frame in frames:
        out += b"--" + boundary + b"\r\nContent-Type: image/jpeg\r\n"
        if lengths:
            out += b"Content-Length: %d\r\nX-Timestamp: 1.5\r\n" % len(frame)
        out += b"\r\n" + frame + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


@pytest.mark.parametrize("lengths", [True, False], ids=["content-length", "to-boundary"])
@pytest.mark.parametrize("chunk", [1, 100, 100000])
def test_multipart_frames_come_out_whole_however_the_bytes_arrive(lengths, chunk):
    body = ustreamer_body(FRAMES * 2, lengths=lengths)
    parser = MultipartParser(b"boundarydonotcross")
    frames = [f for i in range(0, len(body), chunk) for f in parser.feed(body[i : i + chunk])]
    assert frames == FRAMES * 2
    assert parser.ended and not parser.pending


def test_our_own_parts_parse_back():
    parser = MultipartParser(BOUNDARY)
    assert parser.feed(b"".join(part(f) for f in FRAMES)) == FRAMES


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"--b\r\nContent-Length: 99999999\r\n\r\n", "larger than the limit of 65536"),
        (b"--b\r\nContent-Type: text/html\r\n\r\n<html>", "not image/jpeg"),
        (b"--b\r\nContent-Length: 12x\r\n\r\n", "bad Content-Length"),
        (b"x" * 70000, "no multipart boundary within"),
        (b"--b\r\n" + b"X-Header: y\r\n" * 1000, "headers longer than"),
        (b"--b\r\nContent-Type: image/jpeg\r\n\r\n" + b"nonsense\r\n--b\r\n", "not a JPEG"),
        (b"--b\r\n\r\n" + b"\xff" * 70000, "larger than the limit"),
    ],
)
def test_bad_multipart_streams_are_refused_with_bounded_buffers(body, problem):
    with pytest.raises(BadFrame, match=problem):
        MultipartParser(b"b", max_frame=65536).feed(body)


def test_boundary_parameter_quoted_unquoted_and_missing():
    assert boundary_of("multipart/x-mixed-replace;boundary=boundarydonotcross") == b"boundarydonotcross"
    assert boundary_of('multipart/x-mixed-replace; boundary="--frame"') == b"frame"
    with pytest.raises(BadFrame, match="not an MJPEG stream"):
        boundary_of("image/jpeg")
    with pytest.raises(BadFrame, match="without a boundary"):
        boundary_of("multipart/x-mixed-replace")


def test_http_video_docstring_example_runs_over_real_grpc():
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(HttpVideo, "HttpVideo") if t.examples]
    assert tests
    runner = doctest.DocTestRunner()
    for test in tests:
        output: list[str] = []
        result = runner.run(test, out=output.append)
        assert result.failed == 0 and result.attempted == len(test.examples), "".join(output)


def test_still_video_streams_its_picture_and_snapshot_of_http_stream_is_its_first_frame():
    with Camera() as camera:
        with serve(HttpVideo(stream_url=camera.url + "/stream", timeout=30)) as video:
            assert video.snapshot() == FRAMES[0]
            assert list(video.frames(count=4)) == [FRAMES[0], FRAMES[1], FRAMES[2], FRAMES[0]]
    with serve(StillVideo(fps=60)) as still:
        assert list(still.frames(count=2)) == [FRAMES[0], FRAMES[0]]


def load(tmp_path, kind: str, config: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "exporter.yaml"
    path.write_text(f"export:\n  video:\n    type: {kind}\n    config:\n      {config}\n")
    return load_exporter_config(str(path)).build().children["video"]


@pytest.mark.parametrize(
    ("kind", "config", "problem"),
    [
        ("video.http", "timeout: 5", "needs snapshot_url or stream_url"),
        ("video.http", "snapshot_url: ftp://camera/snapshot", "expected an http:// or https:// URL"),
        ("video.http", "snapshot_url: 'http://cam/snap\\r\\nX: y'", "printable characters without spaces"),
        ("video.http", "snapshot_url: http://admin:pw@cam/snapshot", "credentials in username/password"),
        (
            "video.http",
            "{stream_url: 'http://cam/stream', max_frame: 99999999}",
            "max_frame: expected a byte count",
        ),
        (
            "video.http",
            "{stream_url: 'http://cam/stream', timeout: 0}",
            "timeout: expected a number of seconds",
        ),
        ("video.v4l2", "device: video0", "expected a device path under /dev/"),
        ("video.v4l2", "{device: /dev/../etc/passwd}", "expected a device path under /dev/"),
        ("video.v4l2", "{device: /dev/video0, width: 640}", "give both or neither"),
        ("video.v4l2", "{device: /dev/video0, width: 640, height: -1}", "height: expected a whole number"),
        ("video.still", "fps: 1000", "fps: expected frames per second"),
    ],
)
def test_bad_video_config_is_refused_at_load_with_file_and_line(tmp_path, kind, config, problem):
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, kind, config)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'exporter.yaml'}:4: export.video.config: {kind}: "), message
    assert problem in message, message


def test_v4l2_capture_command_is_v4l2_ctl_with_its_documented_options(tmp_path):
    video = load(tmp_path, "video.v4l2", "{device: /dev/video2, width: 640, height: 480}")
    assert video.argv(1) == [
        "v4l2-ctl",
        "--device=/dev/video2",
        "--set-fmt-video=width=640,height=480,pixelformat=MJPG",
        "--stream-mmap",
        "--stream-count=1",
        "--stream-to=-",
    ]
