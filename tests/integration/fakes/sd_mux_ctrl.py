"""A fake `sd-mux-ctrl` (Tizen SD-MUX / SDWire control tool) for tests: the hardware cannot run here.

Faithful to the documented options used with an SDWire: `-e/--device-serial=SERIAL`
picks the board (error when no such serial: FAKE_SDWIRE_SERIAL is the one attached),
`-t/--ts` connects the card to the test server (host), `-d/--dut` to the board,
`-u/--status` prints where it is. An SDWire has no "off". Records every call (muxstate.py).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import muxstate  # noqa: E402


def main() -> int:
    muxstate.record(["sd-mux-ctrl", *sys.argv[1:]])
    parser = argparse.ArgumentParser(prog="sd-mux-ctrl")
    parser.add_argument("-e", "--device-serial", required=True)
    parser.add_argument("-v", "--device-id", type=int)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("-t", "--ts", action="store_true")
    action.add_argument("-d", "--dut", action="store_true")
    action.add_argument("-u", "--status", action="store_true")
    args = parser.parse_args()
    if args.device_serial != os.environ.get("FAKE_SDWIRE_SERIAL"):
        print(f"Device with serial {args.device_serial} not found!", file=sys.stderr)
        return 1
    if args.status:
        side = muxstate.current()
        print("SD connected to: " + ("TS" if side == "host" else "DUT"))
        return 0
    return muxstate.switch("host" if args.ts else "dut")


if __name__ == "__main__":
    sys.exit(main())
