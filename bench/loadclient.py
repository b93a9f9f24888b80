"""The load client: many SSE streams over raw asyncio sockets, in worker processes.

What it measures: per group of connections, how many `postgres_changes`
frames arrived, when the last one arrived, how many keep-alive comments and
`TOO_SLOW` notices came, and for every frame the commit->receive latency
(receive time minus the `ts` column the writer stamped with
`clock_timestamp()`; the database runs on this machine, so one clock).

Invariant: the client is not the bottleneck. Each worker process is one
asyncio loop (uvloop when installed) of `asyncio.Protocol`s: no HTTP
library, no per-frame objects; a read is de-chunked, cut at the last
complete frame, frames are counted with `bytes.count` and only the `ts`
value is parsed. The worker processes' own CPU time is measured and
reported next to the server's, so a saturated client shows up in the output.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import socket
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import psutil  # type: ignore[import-untyped]

HOST = "127.0.0.1"
CHANGE_EVENT = b"event: postgres_changes"
TS_KEY = b'"ts":'
_fromiso = datetime.fromisoformat


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- worker side


class _Group:
    """Counters of one named group of connections inside a worker."""

    __slots__ = (
        "conns",
        "frames",
        "keepalives",
        "too_slow",
        "server_closed",
        "errors",
        "lat",
        "latency",
        "first_frame_at",
        "last_frame_at",
    )

    def __init__(self, latency: bool) -> None:
        self.conns: list[_Stream] = []
        self.latency = latency
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.keepalives = 0
        self.too_slow = 0
        self.server_closed = 0
        self.errors = 0
        self.lat = array("d")
        self.first_frame_at = 0.0
        self.last_frame_at = 0.0

    def counters(self) -> dict[str, Any]:
        return {
            "conns": len(self.conns),
            "frames": self.frames,
            "keepalives": self.keepalives,
            "too_slow": self.too_slow,
            "server_closed": self.server_closed,
            "errors": self.errors,
            "first_frame_at": self.first_frame_at,
            "last_frame_at": self.last_frame_at,
        }


class _Stream(asyncio.Protocol):
    """One SSE response: HTTP/1.1 head, chunked body, frames counted as they complete."""

    def __init__(self, group: _Group, request: bytes, slow: bool) -> None:
        self.group = group
        self.request = request
        self.slow = slow
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.in_body = False
        self.status = 0
        self.chunked = True
        self.left = 0  # bytes left in the current chunk
        self.skip = 0  # CRLF bytes after a chunk
        self.pending = b""  # incomplete chunk-size line
        self.buf = b""  # incomplete SSE frame
        self.hello: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closing = False
        self.ended = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.group.server_closed += 1
        if not self.hello.done():
            self.hello.set_result(self.status or -1)
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            self.in_body = True
            lines = head.split(b"\r\n")
            self.status = int(lines[0].split()[1])
            self.chunked = any(
                ln.lower().startswith(b"transfer-encoding:") and b"chunked" in ln.lower()
                for ln in lines[1:]
            )
            if self.status != 200:
                self.hello.set_result(self.status)
                self.group.errors += 1
                return
            if not data:
                return
        payload = self._dechunk(data) if self.chunked else data
        if self.ended and not self.closing:
            self.closing = True
            self.group.server_closed += 1
            if self.transport is not None:
                self.transport.close()
        if not payload:
            return
        buf = self.buf + payload if self.buf else payload
        a = buf.rfind(b"\n\n")
        b = buf.rfind(b"\n\r\n")
        end = max(a + 2 if a >= 0 else 0, b + 3 if b >= 0 else 0)
        if end == 0:
            self.buf = buf
            return
        block = buf[:end] if end < len(buf) else buf
        self.buf = buf[end:]
        g = self.group
        n = block.count(CHANGE_EVENT)
        if n:
            g.frames += n
            if not g.first_frame_at:
                g.first_frame_at = now
            g.last_frame_at = now
            if g.latency:
                lat = g.lat
                i = block.find(TS_KEY)
                while i >= 0:
                    j = i + 5
                    if block[j] == 32:
                        j += 1
                    k = block.index(b'"', j + 1)
                    lat.append(now - _fromiso(block[j + 1 : k].decode()).timestamp())
                    i = block.find(TS_KEY, k)
        if block[0] == 58 or b"\n:" in block:  # ':' comment lines: keep-alives
            g.keepalives += block.count(b": keep-alive") + block.count(b": ping")
        if not self.hello.done() and b'"SUBSCRIBED"' in block:
            self.hello.set_result(200)
            if self.slow and self.transport is not None:
                self.transport.pause_reading()
        if b'"TOO_SLOW"' in block:
            g.too_slow += 1

    def _dechunk(self, data: bytes) -> bytes:
        if self.ended:  # the trailer after the last chunk, or anything else: ignored
            return b""
        if self.pending:
            data = self.pending + data
            self.pending = b""
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            if self.left:
                take = min(self.left, n - pos)
                out.append(data[pos : pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.skip = 2
                continue
            if self.skip:
                s = min(self.skip, n - pos)
                pos += s
                self.skip -= s
                continue
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                self.pending = data[pos:]
                break
            size = int(data[pos:nl].split(b";")[0], 16)
            pos = nl + 2
            if size == 0:  # the server ended the response (it may keep the socket)
                self.ended = True
                break
            self.left = size
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class _Worker:
    """One worker process: answers the coordinator's commands over a pipe."""

    def __init__(self, pipe: multiprocessing.connection.Connection) -> None:
        self.pipe = pipe
        self.groups: dict[str, _Group] = {}
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # A thread reads the pipe (blocking): uvloop's add_reader would make the
        # pipe non-blocking, and large commands arrive in several reads.
        reader = threading.Thread(target=self._read_commands, args=(loop,), daemon=True)
        reader.start()
        try:
            await self.done.wait()
        finally:
            for g in self.groups.values():
                for c in g.conns:
                    c.close()

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                msg = self.pipe.recv()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(self.done.set)
                return
            loop.call_soon_threadsafe(self._dispatch, msg)
            if msg[0] == "exit":
                return

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        t = asyncio.ensure_future(self._handle(msg))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _handle(self, msg: tuple[Any, ...]) -> None:
        cmd = msg[0]
        try:
            reply: Any
            if cmd == "open":
                reply = await self._open(*msg[1:])
            elif cmd == "stats":
                reply = {name: g.counters() for name, g in self.groups.items()}
            elif cmd == "reset":
                for name in msg[1]:
                    if name in self.groups:
                        self.groups[name].reset()
                reply = True
            elif cmd == "collect":
                g = self.groups.get(msg[1])
                reply = (g.counters(), g.lat.tobytes()) if g else ({}, b"")
            elif cmd == "resume":
                g = self.groups.get(msg[1])
                for c in g.conns if g else ():
                    if c.transport is not None and not c.transport.is_closing():
                        c.transport.resume_reading()
                reply = True
            elif cmd == "close":
                reply = await self._close(msg[1])
            elif cmd == "exit":
                self.done.set()
                reply = True
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception as exc:  # reported to the coordinator, never swallowed
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        self.pipe.send(reply)

    async def _open(
        self, group: str, port: int, paths: Sequence[str], opts: dict[str, Any]
    ) -> dict[str, Any]:
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = _Group(bool(opts.get("latency", True)))
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(int(opts.get("concurrency", 100)))
        slow = bool(opts.get("slow", False))
        rcvbuf = opts.get("rcvbuf")
        mss = opts.get("mss")
        timeout = float(opts.get("timeout", 30.0))
        headers = "".join(f"{k}: {v}\r\n" for k, v in (opts.get("headers") or {}).items())
        ok = failed = 0
        errors: list[str] = []

        async def one(path: str) -> None:
            nonlocal ok, failed
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Accept: text/event-stream\r\n{headers}\r\n"
            ).encode()
            async with sem:
                for attempt in range(4):
                    proto = _Stream(g, request, slow)
                    try:
                        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        sock.setblocking(False)
                        if rcvbuf:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(rcvbuf))
                        if mss:
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, int(mss))
                        try:
                            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), timeout)
                        except BaseException:
                            sock.close()
                            raise
                        await loop.create_connection(lambda p=proto: p, sock=sock)  # type: ignore[misc]
                        status = await asyncio.wait_for(proto.hello, timeout)
                    except (OSError, TimeoutError) as exc:
                        proto.close()
                        if attempt == 3:
                            failed += 1
                            if len(errors) < 5:
                                errors.append(f"{type(exc).__name__}: {exc}")
                            return
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    if status == 200:
                        g.conns.append(proto)
                        ok += 1
                    else:
                        proto.close()
                        failed += 1
                        if len(errors) < 5:
                            errors.append(f"HTTP {status}")
                    return

        started = time.monotonic()
        await asyncio.gather(*(one(p) for p in paths))
        return {"ok": ok, "failed": failed, "errors": errors, "seconds": time.monotonic() - started}

    async def _close(self, group: str) -> int:
        g = self.groups.pop(group, None)
        if g is None:
            return 0
        for c in g.conns:
            c.close()
        if g.conns:
            await asyncio.wait([c.lost for c in g.conns], timeout=10)
        return len(g.conns)


def _worker_main(pipe: multiprocessing.connection.Connection) -> None:
    raise_nofile_limit()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_Worker(pipe).run())


# ----------------------------------------------------------- coordinator side


@dataclass
class GroupStats:
    """Counters of a group summed over workers (latencies in seconds)."""

    conns: int = 0
    frames: int = 0
    keepalives: int = 0
    too_slow: int = 0
    server_closed: int = 0
    errors: int = 0
    first_frame_at: float = 0.0
    last_frame_at: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def add(self, c: dict[str, Any]) -> None:
        for k in ("conns", "frames", "keepalives", "too_slow", "server_closed", "errors"):
            setattr(self, k, getattr(self, k) + int(c.get(k, 0)))
        if c.get("first_frame_at"):
            f = float(c["first_frame_at"])
            self.first_frame_at = min(self.first_frame_at or f, f)
        self.last_frame_at = max(self.last_frame_at, float(c.get("last_frame_at", 0.0)))


@dataclass
class OpenResult:
    ok: int
    failed: int
    seconds: float
    errors: list[str]


class LoadClient:
    """Coordinator's handle on the worker processes (spawned, so nothing is inherited)."""

    def __init__(self, processes: int = 2) -> None:
        self.processes = max(1, processes)
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._lock = asyncio.Lock()

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self.processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child,), daemon=True)
            p.start()
            child.close()
            self._procs.append(p)
            self._pipes.append(parent)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def stop(self) -> None:
        """Ask workers to exit, then terminate any that did not (bounded)."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("exit",))
        deadline = time.monotonic() + 5
        for p in self._procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        for pipe in self._pipes:
            pipe.close()
        self._procs, self._pipes = [], []

    async def _ask_all(self, msgs: Sequence[tuple[Any, ...]], wait_s: float) -> list[Any]:
        async with self._lock:
            for pipe, msg in zip(self._pipes, msgs, strict=True):
                pipe.send(msg)

            def recv(pipe: multiprocessing.connection.Connection) -> Any:
                if not pipe.poll(wait_s):
                    raise TimeoutError("load client worker did not answer")
                return pipe.recv()

            replies = await asyncio.gather(*(asyncio.to_thread(recv, p) for p in self._pipes))
        for r in replies:
            if isinstance(r, dict) and "error" in r and len(r) == 1:
                raise RuntimeError(f"load client worker: {r['error']}")
        return list(replies)

    async def open(
        self,
        group: str,
        port: int,
        paths: Sequence[str],
        *,
        slow: bool = False,
        rcvbuf: int | None = None,
        mss: int | None = None,
        latency: bool = True,
        headers: dict[str, str] | None = None,
        connect_wait: float = 60.0,
        concurrency: int = 100,
    ) -> OpenResult:
        """Open streams (spread round-robin over workers); wait for each SUBSCRIBED."""
        opts = {
            "slow": slow,
            "rcvbuf": rcvbuf,
            "mss": mss,
            "latency": latency,
            "headers": headers or {},
            "timeout": connect_wait,
            "concurrency": concurrency,
        }
        n = self.processes
        started = time.monotonic()
        replies = await self._ask_all(
            [("open", group, port, list(paths[i::n]), opts) for i in range(n)],
            connect_wait + 30 + len(paths) * 0.01,
        )
        errors = [e for r in replies for e in r["errors"]]
        return OpenResult(
            ok=sum(r["ok"] for r in replies),
            failed=sum(r["failed"] for r in replies),
            seconds=time.monotonic() - started,
            errors=errors[:5],
        )

    async def stats(self, group: str) -> GroupStats:
        out = GroupStats()
        for r in await self._ask_all([("stats",)] * self.processes, 30):
            if group in r:
                out.add(r[group])
        return out

    async def reset(self, *groups: str) -> None:
        await self._ask_all([("reset", list(groups))] * self.processes, 30)

    async def collect(self, group: str) -> GroupStats:
        out = GroupStats()
        for counters, lat in await self._ask_all([("collect", group)] * self.processes, 60):
            out.add(counters)
            out.latencies.frombytes(lat)
        return out

    async def resume(self, group: str) -> None:
        await self._ask_all([("resume", group)] * self.processes, 30)

    async def close(self, group: str) -> int:
        return sum(await self._ask_all([("close", group)] * self.processes, 30))

    async def wait_frames(self, group: str, expected: int, wait_s: float) -> GroupStats:
        """Poll until `expected` frames arrived, or `wait_s` passed, or 5 s without one."""
        deadline = time.monotonic() + wait_s
        last = -1
        stable_since = time.monotonic()
        while True:
            s = await self.stats(group)
            now = time.monotonic()
            if s.frames >= expected or now > deadline:
                return s
            if s.frames != last:
                last, stable_since = s.frames, now
            elif now - stable_since > 5.0 and s.frames:
                return s  # nothing new for 5 s: the rest is not coming
            await asyncio.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User+system CPU seconds of the worker processes so far."""
        return cpu_seconds(self.pids)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU seconds of these processes (all their threads; children not included).

    On Linux from `/proc/PID/task/*/schedstat` (nanoseconds); psutil's
    clock-tick figures (10 ms steps) are too coarse for short windows.
    """
    total = 0.0
    for pid in pids:
        try:
            ns = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        ns += int(f.read().split()[0])
            total += ns / 1e9
        except (OSError, ValueError):
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
    return total
