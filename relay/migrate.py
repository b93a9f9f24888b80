"""Apply the SQL migrations in `sql/` (and `sql/demo/` with --demo) in order.

Invariant: each migration file is applied at most once per database, in name
order, inside its own transaction, and recorded in `relay.migrations`;
concurrent runs serialize on a session advisory lock, so running `relay
migrate` twice, or from two processes at once, is safe. Every run ends with
`relay.repair()`, which re-installs capture on the watched tables (a trigger
dropped by hand comes back).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import psycopg

MIGRATION_LOCK = (7265636, 0)


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file; `version` is its path below `sql/`, e.g. `001_relay.sql`."""

    version: str
    sql: str


def _load(folder: str | None) -> list[Migration]:
    root = importlib.resources.files("relay.sql")
    if folder is not None:
        root = root / folder
    found = [
        Migration(version=f"{folder}/{p.name}" if folder else p.name, sql=p.read_text("utf-8"))
        for p in root.iterdir()
        if p.name.endswith(".sql")
    ]
    return sorted(found, key=lambda m: m.version)


def migrations(demo: bool = False) -> list[Migration]:
    """The migrations to apply, core first, then the demo tables if asked."""
    return _load(None) + (_load("demo") if demo else [])


def migrate(dsn: str, *, demo: bool = False) -> list[str]:
    """Apply pending migrations; return the versions applied by this call."""
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s, %s)", MIGRATION_LOCK)
        try:
            conn.execute("set client_min_messages = warning")
            conn.execute("create schema if not exists relay")
            conn.execute(
                "create table if not exists relay.migrations ("
                " version text primary key,"
                " applied_at timestamptz not null default now())"
            )
            done = {r[0] for r in conn.execute("select version from relay.migrations")}
            for m in migrations(demo):
                if m.version in done:
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode("utf-8"))
                    conn.execute("insert into relay.migrations (version) values (%s)", (m.version,))
                applied.append(m.version)
            conn.execute("select relay.repair()")
        finally:
            conn.execute("select pg_advisory_unlock(%s, %s)", MIGRATION_LOCK)
    return applied
