"""`relay status`, `relay watch`, `relay unwatch`: what a DBA asks of the database.

Invariant: everything here is plain SQL a DBA could run in psql (the README
shows it); the relays' own read positions come from `pg_stat_activity`,
where each listener reports `application_name = "<name> pos=<position>"`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

STATUS_SQL = {
    "watched": """
        select schema_name || '.' || table_name, user_column, org_column,
               pk_columns, exclude_columns, watched_at
          from relay.watched order by 1""",
    "log": """
        select relay.current_position(),
               (select pruned_through from relay.meta) + 1,
               (select min(committed_at) from relay.batches),
               (select max(committed_at) from relay.batches),
               pg_total_relation_size('relay.changes') + pg_total_relation_size('relay.batches'),
               (select reltuples::bigint from pg_class where oid = 'relay.changes'::regclass)""",
    "relays": """
        select application_name, client_addr::text, backend_start, state
          from pg_stat_activity
         where datname = current_database() and application_name ~ '^[^ ]+ pos=[0-9]+$'
         order by backend_start""",
}


def status(dsn: str) -> dict[str, Any]:
    """A snapshot: watched tables, log size and bounds, connected relays and their lag."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        watched = [
            {
                "table": r[0],
                "user_column": r[1],
                "org_column": r[2],
                "primary_key": r[3],
                "excluded": r[4],
                "watched_at": r[5].isoformat(),
            }
            for r in conn.execute(STATUS_SQL["watched"])
        ]
        row = conn.execute(STATUS_SQL["log"]).fetchone()
        assert row is not None
        head, oldest, first_at, last_at, size, rows = row
        relays = []
        for name, addr, started, state in conn.execute(STATUS_SQL["relays"]):
            label, _, pos = name.partition(" pos=")
            relays.append(
                {
                    "name": label,
                    "client": addr or "local",
                    "since": started.isoformat(),
                    "state": state,
                    "position": int(pos),
                    "lag": max(0, int(head) - int(pos)),
                }
            )
    return {
        "watched": watched,
        "log": {
            "newest_position": int(head),
            "oldest_position": int(oldest),
            "oldest_commit": first_at.isoformat() if first_at else None,
            "newest_commit": last_at.isoformat() if last_at else None,
            "bytes": int(size),
            "changes_estimate": max(0, int(rows or 0)),
        },
        "relays": relays,
    }


def format_status(s: dict[str, Any], retention: str) -> str:
    out = ["Watched tables:"]
    for w in s["watched"] or []:
        owner = (
            ", ".join(f"{k}={w[k]}" for k in ("user_column", "org_column") if w[k])
            or "no owner (service_role only)"
        )
        excl = f"; excluded: {', '.join(w['excluded'])}" if w["excluded"] else ""
        out.append(f"  {w['table']:<40} {owner}{excl}")
    if not s["watched"]:
        out.append("  (none: select relay.watch('schema.table'))")
    lg = s["log"]
    out += [
        "Log:",
        f"  positions {lg['oldest_position']} .. {lg['newest_position']}"
        f"  (~{lg['changes_estimate']} changes, {lg['bytes'] / 1048576:.1f} MiB)",
        f"  commits {lg['oldest_commit']} .. {lg['newest_commit']}",
        f"  retention: {retention}",
        "Connected relays:",
    ]
    for r in s["relays"]:
        out.append(
            f"  {r['name']:<16} {r['client']:<16} since {r['since']}  "
            f"position {r['position']}  lag {r['lag']}"
        )
    if not s["relays"]:
        out.append("  (none)")
    return "\n".join(out)


def watch(
    dsn: str,
    table: str,
    user_column: str | None,
    org_column: str | None,
    exclude: list[str],
    keep_old: bool = True,
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "select relay.watch(%s::regclass, %s, %s, %s::text[], %s)",
            (table, user_column, org_column, exclude, keep_old),
        )


def unwatch(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("select relay.unwatch(%s::regclass)"), (table,))
