"""A small blocking SSE client for tests: a thread reads, the test waits with timeouts."""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    data: Any
    id: int | None = None
    retry: int | None = None


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
    _client: httpx.Client | None = None
    _resp: httpx.Response | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def open(self, timeout: float = 10.0) -> SSEClient:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"no response from {self.url}")
        return self

    def _run(self) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=None))
        try:
            with self._client.stream("GET", self.url, headers=self.headers) as resp:
                self._resp = resp
                self.status = resp.status_code
                if resp.status_code != 200:
                    self.body = json.loads(resp.read() or b"null")
                    self._ready.set()
                    return
                self._ready.set()
                ev: dict[str, Any] = {}
                for line in resp.iter_lines():
                    if line == "":
                        if "event" in ev or "data" in ev:
                            self._q.put(
                                Event(
                                    event=ev.get("event", "message"),
                                    data=json.loads(ev["data"]) if "data" in ev else None,
                                    id=int(ev["id"]) if "id" in ev else None,
                                    retry=int(ev["retry"]) if "retry" in ev else None,
                                )
                            )
                        ev = {}
                    elif line.startswith(":"):
                        self.comments += 1
                    else:
                        key, _, value = line.partition(":")
                        ev[key] = value[1:] if value.startswith(" ") else value
        except (httpx.HTTPError, OSError, ValueError, RuntimeError):
            pass
        finally:
            self._ready.set()
            self.closed.set()

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
        if self._resp is not None:
            self._resp.close()
        if self._client is not None:
            self._client.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
