"""Suite-wide setup: `tests.harness` (and `tests.integration`) importable however pytest is started,
and Ctrl-C reaching the CLIs the tests interrupt."""

from __future__ import annotations

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# A shell starts background jobs (`cmd &`) with SIGINT ignored, and children inherit that: every CLI
# a test interrupts with SIGINT (Ctrl-C) would then ignore it. Handle SIGINT in pytest itself, so
# children start with the default action (a caught signal is reset to default across exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
