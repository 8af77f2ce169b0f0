"""`workers: N`: N routerd processes sharing the listen port, started and stopped together.

The supervisor (the process systemd starts) prepares the key and certificate once,
reserves the port with a bound, never-listening SO_REUSEPORT socket (so `:0` picks one
port for all, and nobody else can take it between worker restarts), makes the
workers' private directory (0700: their sockets and stream claims, routerd/relay.py)
and runs `routerd.main --worker K` N times. SIGTERM/SIGINT are passed on; when a
worker dies the others are stopped and the supervisor exits 1, so systemd restarts
the whole set (streams of a dead worker are gone anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass

import structlog

from jumpstarter.metrics import parse_address
from routerd.config import RouterConfig

log = structlog.get_logger("routerd")
STOP_WAIT = 35.0  # a worker's own graceful stop takes up to ~2 s; systemd allows 30 s for all


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is told on its command line."""

    index: int
    port: int
    directory: str


def reserve_port(listen: str) -> socket.socket:
    """A bound SO_REUSEPORT socket on `listen` (never listening: the kernel gives it no connections)."""
    host, port = parse_address(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserved.bind((host, port))
    except OSError:
        reserved.close()
        raise
    return reserved


def worker_argv(argv: list[str], spec: WorkerSpec) -> list[str]:
    extra = ["--worker", str(spec.index), "--worker-port", str(spec.port), "--worker-dir", spec.directory]
    return [sys.executable, "-m", "routerd.main", *argv, *extra]


async def supervise(config: RouterConfig, argv: list[str]) -> int:
    """Run `config.workers` workers until a signal (exit 0) or until one of them dies (exit 1)."""
    from jumpstarter.errors import ConfigError

    try:
        reserved = reserve_port(config.listen)
    except OSError as exc:
        raise ConfigError(
            f"{config.source}: listen: cannot listen on {config.listen}: {exc.strerror}"
        ) from None
    port = reserved.getsockname()[1]
    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None  # systemd's RuntimeDirectory
    directory = tempfile.mkdtemp(prefix="workers-", dir=base)  # 0700
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    processes: list[asyncio.subprocess.Process] = []
    try:
        for index in range(config.workers):
            spec = WorkerSpec(index, port, directory)
            processes.append(
                await asyncio.create_subprocess_exec(
                    *worker_argv(argv, spec), stdin=asyncio.subprocess.DEVNULL
                )
            )
        log.info("workers started", workers=config.workers, port=port, pids=[p.pid for p in processes])
        waits = {asyncio.ensure_future(p.wait()): p for p in processes}
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({stopping, *waits}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        died = [waits[w] for w in done if w in waits]
        for process in died:
            log.error("a worker exited; stopping the others", pid=process.pid, code=process.returncode)
        return 1 if died else 0
    finally:
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), STOP_WAIT)
            except TimeoutError:
                process.kill()
                await process.wait()
        reserved.close()
        shutil.rmtree(directory, ignore_errors=True)
        log.info("stopped")
