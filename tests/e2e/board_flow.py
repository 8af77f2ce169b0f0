"""A lab engineer's loop on the QEMU test board, as a program: run it where `jumpstarter` reaches the board
(JUMPSTARTER_HOST set, or inside `jumpstarter shell -l ...`). Prints one JSON object with what it saw.

    python -m tests.e2e.board_flow IMAGE.raw.gz OUT_DIR

Flash (the CLI, compressed), power on (the CLI), wait for the shell prompt with `console.expect`,
run `uname -r`, start a web server in the guest and fetch a page through `jumpstarter port-forward`,
save a screenshot (the CLI), power off (the CLI), print the session's console log (the CLI).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

import jumpstarter
from jumpstarter.client.expect import ConsoleTimeout
from tests.images.build import PROMPT

CLI = [sys.executable, "-m", "jumpstarter.cli.main"]
BOOT_DEADLINE = 300.0  # TCG on a loaded 2-core host: generous, never a pass/fail time


def jumpstarter_cli(*args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise SystemExit(f"jumpstarter {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def wait_for_prompt(console) -> None:  # type: ignore[no-untyped-def]
    """Press Enter until the prompt shows (it may have been printed before we attached)."""
    deadline = time.monotonic() + BOOT_DEADLINE
    while True:
        console.sendline("")
        try:
            console.expect(PROMPT, timeout=5)
            return
        except ConsoleTimeout:
            if time.monotonic() > deadline:
                raise


def fetch_through_port_forward(token: str) -> str:
    forward = subprocess.Popen(
        [*CLI, "port-forward", "network", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a hang below ends with every thread's stack
    )
    try:
        assert forward.stdout is not None
        port = int(forward.stdout.readline().strip() or 0)
        if not port:
            raise SystemExit(
                f"port-forward printed no port: {forward.stderr.read() if forward.stderr else ''}"
            )
        deadline = time.monotonic() + 60
        while True:  # the guest's httpd may still be starting
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/{token}.txt", timeout=30) as page:
                    return page.read().decode()
            except OSError:
                if time.monotonic() > deadline:
                    raise
    finally:
        forward.send_signal(signal.SIGINT)  # Ctrl-C ends a port-forward
        try:
            forward.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            forward.send_signal(signal.SIGABRT)  # faulthandler prints where each thread hangs
            try:
                _, stderr = forward.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                forward.kill()
                _, stderr = forward.communicate()
            raise SystemExit(f"port-forward did not end within 120 s of Ctrl-C: {stderr[-6000:]}") from None


def main(image: str, out_dir: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    jumpstarter_cli("power", "off")  # flashing is refused while the board runs
    seen["flash"] = jumpstarter_cli("storage", "flash", image)
    jumpstarter_cli("power", "on")
    token = secrets.token_hex(8)
    with jumpstarter.connect() as board, board.serial.console() as console:
        wait_for_prompt(console)
        console.sendline("uname -r")
        console.expect(re.compile(r"\d+\.\d+\.\d+-\S+\r?\n"), timeout=60)  # to the line's end: all of it
        seen["uname"] = console.after.strip()
        console.expect(PROMPT, timeout=60)
        console.sendline(
            f"mkdir -p /www && echo page-{token} > /www/{token}.txt && httpd -p 80 -h /www && echo ok-$((6*7))"
        )
        console.expect("ok-42", timeout=60)
        seen["scrollback"] = board.serial.read_scrollback().decode("utf-8", "replace")
    seen["page"] = fetch_through_port_forward(token)
    seen["token"] = token
    screenshot = os.path.join(out_dir, "screen.png")
    jumpstarter_cli("qemu", "screenshot", screenshot)
    with open(screenshot, "rb") as shot:
        seen["screenshot"] = shot.read(24).hex()
    jumpstarter_cli("power", "off")
    seen["console_log"] = jumpstarter_cli("serial", "log")  # what the exporter logged of this session
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
