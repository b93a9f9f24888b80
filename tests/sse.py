"""A small blocking SSE client for tests: a thread reads, the test waits with timeouts."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Event:
    event: str
    data: Any
    id: int | None = None
    retry: int | None = None
    raw: str = ""


@dataclass
class SSEClient:
    """Opens `url` and collects events; `next()`/`take()` wait with a timeout."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    body: Any = None
    comments: int = 0
    closed: threading.Event = field(default_factory=threading.Event)
    _q: queue.Queue[Event] = field(default_factory=queue.Queue)
    response_headers: dict[str, str] = field(default_factory=dict)
    _sock: socket.socket | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def open(self, timeout: float = 10.0) -> SSEClient:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"no response from {self.url}")
        return self

    def _run(self) -> None:
        u = urlsplit(self.url)
        try:
            sock = socket.create_connection((u.hostname, u.port or 80), timeout=10)
            sock.settimeout(None)
            self._sock = sock
            path = u.path + ("?" + u.query if u.query else "")
            head = f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: text/event-stream\r\n"
            for k, v in self.headers.items():
                head += f"{k}: {v}\r\n"
            sock.sendall((head + "\r\n").encode())
            f = sock.makefile("rb")
            status_line = f.readline().decode("latin-1")
            self.status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while True:
                line = f.readline().decode("latin-1").strip()
                if not line:
                    break
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self.response_headers = headers
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            if self.status != 200:
                if chunked:
                    body = b"".join(_chunks(f))
                else:
                    body = f.read(int(headers.get("content-length", "0")))
                self.body = json.loads(body or b"null")
                self._ready.set()
                return
            self._ready.set()
            buf = b""
            ev: dict[str, str] = {}
            for chunk in _chunks(f) if chunked else iter(lambda: f.read1(65536), b""):
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    self._line(raw.decode("utf-8"), ev)
        except (OSError, ValueError):
            pass
        finally:
            self._ready.set()
            self.closed.set()

    def _line(self, line: str, ev: dict[str, str]) -> None:
        if line == "":
            if "event" in ev or "data" in ev:
                self._q.put(
                    Event(
                        event=ev.get("event", "message"),
                        data=json.loads(ev["data"]) if "data" in ev else None,
                        id=int(ev["id"]) if "id" in ev else None,
                        retry=int(ev["retry"]) if "retry" in ev else None,
                        raw=ev.get("data", ""),
                    )
                )
            ev.clear()
        elif line.startswith(":"):
            self.comments += 1
        else:
            key, _, value = line.partition(":")
            ev[key] = value[1:] if value.startswith(" ") else value

    def next(self, timeout: float = 10.0) -> Event:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout}s from {self.url}") from None

    def take(self, n: int, timeout: float = 20.0, event: str | None = None) -> list[Event]:
        """The next n events (of type `event` if given), waiting at most `timeout` overall."""
        out: list[Event] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"got {len(out)} of {n} events: {out[-3:]}")
            ev = self.next(left)
            if event is None or ev.event == event:
                out.append(ev)
        return out

    def drain(self) -> list[Event]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(f: Any) -> Iterator[bytes]:
    """Decode HTTP/1.1 chunked transfer encoding."""
    while True:
        size_line = f.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        data = f.read(size)
        f.readline()
        if len(data) < size:
            return
        yield data
