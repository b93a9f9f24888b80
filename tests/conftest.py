"""Fixtures: a real PostgreSQL (RELAY_TEST_DATABASE_URL, else the embedded one),
a fresh migrated database per session, and a relay served by uvicorn in a thread.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from psycopg import sql

from relay.app import Relay, create_app
from relay.auth import make_token
from relay.dsn import with_dbname
from relay.migrate import migrate
from relay.server import Server, make_server
from relay.settings import Settings
from tests.sse import SSEClient

SECRET = "test-secret-0123456789-0123456789"


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A DSN of a server we may create databases on."""
    url = os.environ.get("RELAY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from relay.embedded import start_embedded

    with tempfile.TemporaryDirectory(prefix="relay-test-pg-") as d:
        dsn, server = start_embedded(Path(d))
        try:
            yield dsn
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database for this test session, migrated with the demo tables."""
    name = f"relay_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = with_dbname(pg_admin_dsn, name)
    migrate(url, demo=True)
    try:
        yield url
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (name,),
            )
            conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))


@pytest.fixture
def private_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh migrated database for one test: for tests that prune the log, which
    would take the shared session database's history from the tests after them."""
    name = f"relay_private_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = with_dbname(pg_admin_dsn, name)
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (name,),
            )
            conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection, like a plain SQL service's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RelayServer:
    """A relay served by uvicorn in a background thread."""

    url: str
    relay: Relay
    server: Server
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop

    def token(self, **kw: Any) -> str:
        return make_token(SECRET, **kw)

    def service_token(self) -> str:
        return make_token(SECRET, sub="service", role="service_role")

    def stream_url(self, params: list[tuple[str, str]] | dict[str, str], token: str | None) -> str:
        items = list(params.items()) if isinstance(params, dict) else list(params)
        if token is not None:
            items.append(("access_token", token))
        return f"{self.url}/v1/stream?{urlencode(items)}"

    def open(
        self,
        params: list[tuple[str, str]] | dict[str, str],
        token: str | None = None,
        headers: dict[str, str] | None = None,
        subscribed: bool = True,
    ) -> SSEClient:
        """Open a stream; with `subscribed`, wait for and check its SUBSCRIBED event."""
        if token is None:
            token = self.service_token()
        c = SSEClient(self.stream_url(params, token), headers=headers or {}).open()
        if subscribed:
            assert c.status == 200, (c.status, c.body)
            hello = c.next()
            assert hello.event == "system" and hello.data["status"] == "SUBSCRIBED", hello
            c.hello = hello  # type: ignore[attr-defined]
        return c

    def caught_up(self, db: psycopg.Connection[Any], timeout: float = 10.0) -> int:
        """Wait until the relay has read the log up to the database's current head."""
        head = db.execute("select relay.current_position()").fetchone()[0]
        deadline = time.monotonic() + timeout
        while self.relay.hub.position < head:
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay at {self.relay.hub.position}, head {head}")
            time.sleep(0.005)
        return int(head)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_relay(dsn: str, port: int | None = None, **overrides: Any) -> RelayServer:
    """A private relay; `port` fixes its port (e.g. to restart one where clients expect it)."""
    if port is None:
        port = free_port()
    settings = Settings(
        **{
            "database_url": dsn,
            "jwt_secret": SECRET,
            "host": "127.0.0.1",
            "port": port,
            "poll_seconds": 0.5,
            **overrides,
        }
    )
    relay = Relay(settings, dsn, SECRET)
    app = create_app(relay)
    server = make_server(relay, app, "127.0.0.1", port)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("relay did not start")
        time.sleep(0.02)
    return RelayServer(
        url=f"http://127.0.0.1:{port}", relay=relay, server=server, thread=thread, loop=loops[0]
    )


@pytest.fixture(scope="session")
def relay_server(dsn: str) -> Iterator[RelayServer]:
    srv = start_relay(dsn)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_table(db: psycopg.Connection[Any]) -> Iterator[Callable[..., str]]:
    """Create a uniquely named watched table: make_table('id int primary key, ...')."""
    made: list[str] = []

    def make(columns: str, watch: str | None = "", prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        db.execute(f"create table public.{name} ({columns})")
        if watch is not None:
            db.execute(f"select relay.watch('public.{name}'{watch})")
        made.append(name)
        return name

    yield make
    for name in made:
        db.execute(f"drop table if exists public.{name}")
