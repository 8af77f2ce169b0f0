"""`import jumpstarter` stays cheap and portable: no gRPC, no Linux-only modules until used."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_jumpstarter_loads_no_grpc_or_linux_only_modules():
    modules = loaded_after("import jumpstarter")
    assert not {m for m in modules if m.split(".")[0] in ("grpc", "google", "pyudev", "serial", "termios", "structlog")}


def test_the_client_library_does_not_load_udev_serial_or_structlog():
    modules = loaded_after("import jumpstarter.client.connection, jumpstarter.client.tree, jumpstarter.cli.main")
    assert "grpc" in modules
    assert not {m for m in modules if m.split(".")[0] in ("pyudev", "serial", "termios", "structlog", "yaml")}
