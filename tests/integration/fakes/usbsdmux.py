"""A fake `usbsdmux` (PyPI `usbsdmux`, Linux Automation USB-SD-Mux) for tests: the hardware cannot run here.

Faithful to the documented CLI: `usbsdmux [-h] [-j] SG {get,dut,client,host,off,gpio,info}`,
where SG is the mux's /dev/sg* node (the tool fails when it cannot open it) and `client`
is an alias of `host`. It records every call and emulates the card (see muxstate.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import muxstate  # noqa: E402


def main() -> int:
    muxstate.record(["usbsdmux", *sys.argv[1:]])
    parser = argparse.ArgumentParser(prog="usbsdmux")
    parser.add_argument("-j", "--json", action="store_true", help="format output as json")
    parser.add_argument("sg", metavar="SG", help="/dev/sg* to use")
    parser.add_argument("mode", choices=["get", "dut", "client", "host", "off", "gpio", "info"])
    parser.add_argument("gpio", nargs="*")
    args = parser.parse_args()
    if not os.path.exists(args.sg):
        print(f"error: cannot open {args.sg}: No such file or directory", file=sys.stderr)
        return 1
    if args.mode == "get":
        print(json.dumps({"mode": muxstate.current()}) if args.json else muxstate.current())
        return 0
    if args.mode in ("gpio", "info"):
        print("not emulated by this fake", file=sys.stderr)
        return 1
    return muxstate.switch("host" if args.mode == "client" else args.mode)


if __name__ == "__main__":
    sys.exit(main())
