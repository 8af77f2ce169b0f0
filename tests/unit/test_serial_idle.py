"""A serial port behind a pyserial URL handler (loop://, socket://) idles without spinning a core."""

from __future__ import annotations

import threading
import time
from typing import Any

from jumpstarter.driver.serve import serve
from jumpstarter.drivers.serial import Serial


class CountingSerial(Serial):
    """Counts the reads of the port's reader thread (the thread looks `port.read` up on every call)."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.reads = 0
        self.counting = threading.Event()

    def _open(self) -> None:
        super()._open()
        port = self._port
        read = port.read

        def counted(size: int = 1) -> bytes:
            self.reads += 1
            return bytes(read(size))

        port.read = counted
        self.counting.set()


def test_an_idle_url_port_is_read_a_few_times_a_second_not_in_a_busy_loop():
    port = CountingSerial(url="loop://")
    with serve(port) as serial, serial.console() as console:
        assert port.counting.wait(60), "the port never opened"
        console.sendline("still works")
        console.expect("still works", timeout=30)
        before, started = port.reads, time.monotonic()
        time.sleep(1.0)  # the quantity under test is what an idle second costs, so it must pass idle
        idle = time.monotonic() - started
        reads = port.reads - before
    # a blocking read wakes up a few times a second; the old non-blocking one looped thousands of times
    assert reads <= 20 * idle + 5, f"{reads} reads of an idle port in {idle:.1f}s"
