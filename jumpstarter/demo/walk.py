"""`jumpstarter demo`: start the demo lab and walk through it like a lab engineer would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from jumpstarter.demo.lab import DemoLab


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run_demo(keep: bool = False) -> int:
    import jumpstarter

    started = time.monotonic()
    _step("starting the demo lab: a fake board on a pseudo-terminal, its HTTP power switch, and exporterd")
    with DemoLab() as lab:
        print(f"    exporterd socket: {lab.socket}")
        print(f"    serial port:      {lab.tty} -> {os.path.realpath(lab.tty)}")
        print(f"    power switch:     http://127.0.0.1:{lab.port}/power")
        with jumpstarter.connect(lab.socket) as board:
            _step("the board's drivers (jumpstarter describe)")
            for client in board.walk():
                if client.path:
                    print(f"    {client.path:<8} {type(client).__name__:<15} {client.description or ''}")
            with board.serial.console() as console:
                _step("power on (jumpstarter power on)")
                board.power.on()
                _step("reading the boot banner from the serial console")
                console.expect("login:", timeout=30)
                for line in (console.before + console.after).splitlines():
                    if line.strip():
                        print(f"    | {line}")
                _step("logging in and running a command on the board")
                console.sendline("root")
                console.expect("# ", timeout=10)
                console.sendline("uname -a")
                console.expect(re.compile(r"Linux .*GNU/Linux"), timeout=10)
                print(f"    | root@demo:~# uname -a\n    | {console.after}")
                _step("power off (jumpstarter power off)")
                board.power.off()
                print(f"    switch reports the board is {'on' if board.power.call('is_on') else 'off'}")
        if keep:
            _step(
                "the demo lab keeps running; this shell has JUMPSTARTER_HOST set and jumpstarter on PATH. Try:"
            )
            print("    jumpstarter describe\n    jumpstarter power on\n    jumpstarter serial console")
            subprocess.call([os.environ.get("SHELL") or "/bin/sh"], env=shell_env(lab.socket))
    _step(f"done in {time.monotonic() - started:.2f}s; everything stopped and cleaned up")
    return 0


def shell_env(socket: str) -> dict[str, str]:
    """The kept demo shell's environment: the board, and this venv activated (`jumpstarter` on PATH)."""
    env = dict(os.environ, JUMPSTARTER_HOST=socket)
    bin_dir = os.path.dirname(sys.executable)  # the venv's bin, where pip put `jumpstarter`
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p)])
    if sys.prefix != sys.base_prefix:  # what `source .venv/bin/activate` sets besides PATH
        env["VIRTUAL_ENV"] = sys.prefix
        env.pop("PYTHONHOME", None)
    return env


if __name__ == "__main__":
    sys.exit(run_demo())
