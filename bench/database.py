"""The benchmark's database: a fresh, migrated database with the bench tables.

Tables (all the same shape: id, org_id, user_id, `ts timestamptz default
clock_timestamp()` stamped by the writer's insert, body):
- `bench_relay`: watched by the relay (`relay.watch`), read by relay streams;
- `bench_naive`: the baseline's table, with the naive `pg_notify` trigger;
  separate, so one insert never fires both the relay's capture and the
  baseline's NOTIFY;
- `w_plain`, `w_watched`, `w_notify`: the write-throughput scenario's tables
  (no trigger / relay capture / the baseline's NOTIFY trigger).

Invariant: the database is created for this run and dropped after it; the
embedded PostgreSQL (when `RELAY_BENCH_DATABASE_URL` is unset) lives in a
temporary folder and is stopped at the end, also on errors.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from relay.dsn import as_url, with_dbname
from relay.migrate import migrate

ROW_COLUMNS = (
    "id bigint generated always as identity primary key,"
    " org_id text not null,"
    " user_id text not null,"
    " ts timestamptz not null default clock_timestamp(),"
    " body text not null"
)

# The baseline's trigger, as the afternoon version would write it.
NOTIFY_TRIGGER = """
create or replace function bench_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('bench_changes', json_build_object(
        'table', TG_TABLE_NAME,
        'type', TG_OP,
        'record', case when TG_OP = 'DELETE' then row_to_json(OLD) else row_to_json(NEW) end
    )::text);
    return null;
end;
$$;
"""

RELAY_TABLE = "bench_relay"
NAIVE_TABLE = "bench_naive"
WRITE_TABLES = ("w_plain", "w_watched", "w_notify")


@dataclass(frozen=True)
class BenchDatabase:
    """Where the bench runs: `dsn` (URL) and whether the server is the embedded one."""

    dsn: str
    embedded: bool
    server_version: str


def _setup(dsn: str) -> None:
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set client_min_messages = warning")
        conn.execute(NOTIFY_TRIGGER)
        for name in (RELAY_TABLE, NAIVE_TABLE, *WRITE_TABLES):
            conn.execute(
                sql.SQL("create table {} (" + ROW_COLUMNS + ")").format(sql.Identifier(name))
            )
        for name in (RELAY_TABLE, "w_watched"):
            conn.execute("select relay.watch(%s::regclass)", (f"public.{name}",))
        for name in (NAIVE_TABLE, "w_notify"):
            conn.execute(
                sql.SQL(
                    "create trigger bench_notify after insert or update or delete on {}"
                    " for each row execute function bench_notify()"
                ).format(sql.Identifier(name))
            )


@contextlib.contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """A fresh migrated database with the bench tables; dropped (and the server stopped) after."""
    url = os.environ.get("RELAY_BENCH_DATABASE_URL")
    with contextlib.ExitStack() as stack:
        if url:
            admin, embedded = url, False
        else:
            from relay.embedded import start_embedded

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-bench-pg-"))
            admin, server = start_embedded(Path(tmp))
            stack.callback(server.cleanup)
            embedded = True
        name = f"relay_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            version = str(conn.execute("show server_version").fetchone()[0])  # type: ignore[index]
        stack.callback(_drop, admin, name)
        dsn = as_url(with_dbname(admin, name))
        _setup(dsn)
        yield BenchDatabase(dsn=dsn, embedded=embedded, server_version=version)


def _drop(admin: str, name: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,)
        )
        conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
