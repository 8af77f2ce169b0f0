"""Upstream 0.9's `j` drives our SD-mux driver: its StorageMuxFlasherClient calls host(), write(handle), dut()."""

from __future__ import annotations

import os

import pytest

from .test_storage_flash import fake_tool
from .test_upstream_interop import explain, exporter_config, j, our_exporterd, upstream  # noqa: F401


def test_upstream_j_flashes_and_dumps_through_our_usbsdmux_driver(our_exporterd, tmp_path, monkeypatch):  # noqa: F811
    up = upstream()
    card, device = tmp_path / "card.img", tmp_path / "by-id-card"
    (tmp_path / "sg0").touch()
    for key, value in {"FAKE_MUX_DIR": tmp_path, "FAKE_MUX_CARD": card, "FAKE_MUX_DEVICE": device}.items():
        monkeypatch.setenv(key, str(value))  # exporterd inherits them, and runs the fake tool with them
    tool = fake_tool(str(tmp_path), "usbsdmux", "usbsdmux.py")
    exporter = our_exporterd(
        exporter_config(
            "interop-sdmux",
            f"""
        storage:
          type: storage.usbsdmux
          config:
            control: {tmp_path}/sg0
            storage_device: {device}
            executable: {tool}
    """,
        )
    )
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(3 << 20) + b"end of image")

    flashed = j(up, exporter, tmp_path, "storage", "flash", str(image))
    assert flashed.returncode == 0, explain(flashed)
    assert card.read_bytes() == image.read_bytes()

    dumped = tmp_path / "dumped.img"
    result = j(up, exporter, tmp_path, "storage", "dump", str(dumped))
    assert result.returncode == 0, explain(result)
    assert dumped.read_bytes() == image.read_bytes()

    calls = (tmp_path / "calls").read_text().split()
    sides = [word for word in calls if word in ("host", "dut", "off")]
    assert sides[-4:] == ["host", "dut", "host", "dut"], sides
    assert (tmp_path / "side").read_text() == "dut"


pytestmark = pytest.mark.timeout(180)
