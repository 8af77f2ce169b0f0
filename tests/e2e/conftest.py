"""The QEMU test board for end-to-end tests: its boot files (built once, cached) and its driver tree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.images.build import build, write_disk
from tests.integration.conftest import exporterd, workdir  # noqa: F401  (fixtures used here)

APPEND = "console=tty0 console=ttyS0 quiet panic=-1"


@pytest.fixture(scope="session")
def boot_files() -> str:
    """The directory with `vmlinuz`, `initrd.gz` and `versions.txt` (apt-get download on a cold cache)."""
    return build()


def kernel_release(boot_files: str) -> str:
    """`uname -r` of the test kernel, from the package name the image was built from."""
    with open(os.path.join(boot_files, "versions.txt")) as versions:
        for line in versions:
            if line.startswith("linux-image-"):
                return line.split("=", 1)[0].removeprefix("linux-image-")
    raise AssertionError("versions.txt names no kernel package")


def qemu_export(boot_files: str, folder: str) -> dict[str, Any]:
    """The board as an exporter's `export:` tree: the qemu composite, and its drivers under the usual names."""
    return {
        "qemu": {
            "type": "qemu",
            "config": {
                "kernel": os.path.join(boot_files, "vmlinuz"),
                "initrd": os.path.join(boot_files, "initrd.gz"),
                "append": APPEND,
                "disk": os.path.join(folder, "disk.img"),
                "memory": 256,
                "forward": {"network": 80},
                "shutdown_timeout": 2,
                "state_dir": os.path.join(folder, "qemu"),
                "console_log": os.path.join(folder, "console"),
            },
        },
        **{name: {"ref": f"qemu.{name}"} for name in ("power", "serial", "storage", "network")},
    }


@pytest.fixture
def gz_image(tmp_path) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(path of a gzip-compressed raw disk image, the marker its first line holds)."""
    import gzip
    import secrets

    marker = f"MARKER-{secrets.token_hex(6)}"
    raw = str(tmp_path / "image.raw")
    write_disk(raw, marker)
    with open(raw, "rb") as source, gzip.open(str(tmp_path / "image.raw.gz"), "wb") as packed:
        packed.write(source.read())
    yield str(tmp_path / "image.raw.gz"), marker
