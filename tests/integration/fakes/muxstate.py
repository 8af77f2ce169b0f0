"""What the fake mux tools share: the call log, the side, the card appearing on the host.

Environment (set by the tests on exporterd): FAKE_MUX_DIR (call log `calls`, current
`side`), FAKE_MUX_CARD (the card's backing file), FAKE_MUX_DEVICE (where the card shows
up on the host while switched there: a symlink, like a /dev/disk/by-id link),
FAKE_MUX_FAIL (comma-separated sides whose switch fails, like a tool that lost its device).
"""

from __future__ import annotations

import os
import sys


def record(argv: list[str]) -> None:
    with open(os.path.join(os.environ["FAKE_MUX_DIR"], "calls"), "a") as log:
        log.write(" ".join(argv) + "\n")


def current() -> str:
    try:
        with open(os.path.join(os.environ["FAKE_MUX_DIR"], "side")) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return "off"


def switch(side: str) -> int:
    if side in os.environ.get("FAKE_MUX_FAIL", "").split(","):
        print(f"error: could not switch to {side}: device not responding", file=sys.stderr)
        return 1
    device = os.environ["FAKE_MUX_DEVICE"]
    if os.path.islink(device):
        os.unlink(device)  # the card leaves the host first, as on a real mux
    if side == "host":
        os.symlink(os.environ["FAKE_MUX_CARD"], device)
    with open(os.path.join(os.environ["FAKE_MUX_DIR"], "side"), "w") as handle:
        handle.write(side)
    return 0
