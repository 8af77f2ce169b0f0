"""`QemuClient`: a QEMU virtual board (its children as usual, plus `screenshot()`)."""

from __future__ import annotations

import argparse

from jumpstarter.client.drivers.composite import CompositeClient, add_children_cli


class QemuClient(CompositeClient):
    """A QEMU virtual board: power, serial, storage, network, and its screen."""

    def screenshot(self, format: str = "png") -> bytes:
        """The guest's screen as PNG bytes (or QEMU's PPM with `format="ppm"`)."""
        from jumpstarter.values import b64decode

        data = self.call("screenshot", format)
        return data if isinstance(data, bytes) else b64decode(data)

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(title="drivers and commands", metavar="COMMAND")
        shot = sub.add_parser("screenshot", help="save the guest's screen to FILE (.png or .ppm)")
        shot.add_argument("file", metavar="FILE")

        def run_screenshot(a: argparse.Namespace) -> int:
            data = self.screenshot("ppm" if a.file.endswith(".ppm") else "png")
            with open(a.file, "wb") as out:
                out.write(data)
            return 0

        shot.set_defaults(func=run_screenshot)
        add_children_cli(self, sub, reserved=frozenset({"screenshot"}))
