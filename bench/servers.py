"""The systems under test as subprocesses: the relay and the naive baseline.

What it measures: each server's user+system CPU seconds and RSS (psutil), so
the scenarios can charge CPU per delivery / per change to the server alone,
whatever else (the load client, PostgreSQL, the writer) runs on the machine.

Invariants: each server is one process (one uvicorn worker, as both are
deployed by default) listening on 127.0.0.1 only; `serve()` always
terminates it (SIGTERM, then SIGKILL after a bounded wait), also when the
scenario fails.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.loadclient import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-0123456789-0123456789-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server process: its port and its resource usage."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        """User+system CPU seconds used so far (nanosecond resolution on Linux)."""
        return cpu_seconds([self.proc.pid])

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{server.port}/readyz"
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited at start:\n{server.log_tail()}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready within {timeout:.0f} s:\n{server.log_tail()}")


def _stop(server: Server) -> None:
    proc = server.proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def serve(name: str, argv: list[str], env: dict[str, str], port: int) -> Iterator[Server]:
    """Start `argv` (a Python module run), wait for `/readyz`, and always stop it."""
    with tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False) as f:
        log_path = Path(f.name)
    full_env = {**os.environ, **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(name=name, port=port, proc=proc, log_path=log_path)
    try:
        _wait_ready(server, 60)
        yield server
    finally:
        _stop(server)
        with contextlib.suppress(OSError):
            log_path.unlink()


# `relay serve` with uvloop's policy installed first (evidence for a relay fix:
# relay.cli runs `asyncio.run(main())`, which does not use uvicorn's uvloop).
_UVLOOP_SERVE = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from relay.cli import main; main(sys.argv[1:])"
)


def relay(
    dsn: str, *, force_uvloop: bool = False, **settings: str | int | float
) -> contextlib.AbstractContextManager[Server]:
    """The relay under test: `python -m relay.cli serve` (one process).

    With `force_uvloop`, the same command runs with uvloop's event loop policy.
    """
    port = free_port()
    env = {
        "RELAY_DATABASE_URL": dsn,
        "RELAY_JWT_SECRET": SECRET,
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_LOG_FORMAT": "text",
    }
    env.update({f"RELAY_{k.upper()}": str(v) for k, v in settings.items()})
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    argv = ["-c", _UVLOOP_SERVE, *args] if force_uvloop else ["-m", "relay.cli", *args]
    return serve("relay", argv, env, port)


def baseline(
    dsn: str, *, ping_seconds: float | None = None
) -> contextlib.AbstractContextManager[Server]:
    """The naive baseline: `python -m bench.baseline` (one uvicorn process)."""
    port = free_port()
    env = {"BENCH_BASELINE_DSN": dsn, "BENCH_JWT_SECRET": SECRET}
    if ping_seconds is not None:
        env["BENCH_PING_SECONDS"] = str(ping_seconds)
    return serve("baseline", ["-m", "bench.baseline", "--port", str(port)], env, port)


def floor(loop: str) -> contextlib.AbstractContextManager[Server]:
    """The calibration app: `python -m bench.floor` (bare ASGI under uvicorn)."""
    port = free_port()
    return serve(
        f"floor-{loop}", ["-m", "bench.floor", "--port", str(port), "--loop", loop], {}, port
    )
