"""Every filter operator end to end, with Postgres itself as the oracle.

Each case pairs a filter with the SQL condition it means; the rows a stream
receives must be exactly the rows `select id ... where <sql>` returns.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import RelayServer

CASES = [
    ("i=eq.5", "i = 5"),
    ("i=neq.5", "i <> 5"),
    ("i=lt.5", "i < 5"),
    ("i=lte.5", "i <= 5"),
    ("i=gt.5", "i > 5"),
    ("i=gte.5", "i >= 5"),
    ("i=in.(1,5,9)", "i in (1, 5, 9)"),
    ("i=not.in.(1,5)", "not (i in (1, 5))"),
    ("i=in.()", "false"),
    ("i=is.null", "i is null"),
    ("i=not.is.null", "i is not null"),
    ("i=isdistinct.5", "i is distinct from 5"),
    ("i=not.isdistinct.5", "i is not distinct from 5"),
    ("n=eq.0.1", "n = 0.1"),
    ("n=gt.12345678901234567890.1", "n > 12345678901234567890.1"),
    ("n=lte.-2.5", "n <= -2.5"),
    ("txt=eq.hello, world", "false"),  # unquoted comma splits: 'world' is no condition
    ('txt=eq."hello, world"', "txt = 'hello, world'"),
    ("txt=eq.", "txt = ''"),
    ("txt=like.he%", "txt like 'he%'"),
    ("txt=ilike.HE%", "txt ilike 'HE%'"),
    ("txt=like.a_c", "txt like 'a_c'"),
    ("txt=not.like.he%", "not (txt like 'he%')"),
    ("txt=match.^h.*o$", "txt ~ '^h.*o$'"),
    ("txt=imatch.WORLD", "txt ~* 'WORLD'"),
    ("txt=eq.a:b=c", "txt = 'a:b=c'"),
    ("txt=gt.b", "txt > 'b' collate \"C\""),
    ("b=is.true", "b is true"),
    ("b=is.false", "b is false"),
    ("b=not.is.true", "b is not true"),
    ("b=is.unknown", "b is unknown"),
    ("b=eq.false", "b = false"),
    ("u=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    ("u=eq.a0eebc999c0b4ef8bb6d6bb9bd380a11", "u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    ("ts=gt.2026-01-01T00:00:00Z", "ts > '2026-01-01T00:00:00Z'"),
    ("ts=lt.2026-01-01 05:00:00+05:00", "ts < '2026-01-01 05:00:00+05:00'"),
    ("ts=gte.2026-06-01T00:00:00", "ts >= '2026-06-01T00:00:00+00'"),
    ("d=eq.2026-03-04", "d = '2026-03-04'"),
    ("e=gt.running", "e > 'running'"),
    ("e=in.(pending,done)", "e in ('pending', 'done')"),
    ("i=gt.1,txt=like.%o%", "i > 1 and txt like '%o%'"),
    (" i=gt.1 , b=is.true ", "i > 1 and b is true"),
]

ROWS = [
    "(1, 'o', 1, 0.1, 'hello', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
    "'2025-12-31 23:00:00+00', '2026-03-04', 'pending')",
    "(2, 'o', 5, 12345678901234567890.2, 'hello, world', false, "
    f"'{uuid.UUID(int=7)}', '2026-01-01 00:00:01+00', '2026-03-05', 'running')",
    "(3, 'o', 9, -2.5, '', null, null, '2026-06-01 00:00:00+00', null, 'done')",
    "(4, 'o', null, null, null, true, null, null, null, null)",
    "(5, 'o', 6, 3, 'abc', true, null, '2026-12-01 00:00:00+00', '2026-03-04', 'running')",
    "(6, 'o', 7, 0.1000000000000000000001, 'a:b=c', false, null, null, null, 'pending')",
    "(7, 'o', 2, 1, 'bz', true, null, null, null, null)",
]


@pytest.fixture
def typed_table(db: Any, make_table: Any) -> str:
    enum = f"state_{uuid.uuid4().hex[:8]}"
    db.execute(f"create type {enum} as enum ('pending', 'running', 'done')")
    return str(
        make_table(
            f"id int primary key, org_id text, i int, n numeric, txt text, b bool, u uuid, "
            f"ts timestamptz, d date, e {enum}"
        )
    )


def test_every_operator_matches_postgres(
    relay_server: RelayServer, db: Any, make_table: Any, typed_table: str
) -> None:
    t = typed_table
    sentinel = make_table("id int primary key, org_id text")
    streams = []
    try:
        for f, _ in CASES:
            if f == "txt=eq.hello, world":
                continue  # malformed on purpose, checked below
            streams.append((f, relay_server.open([("sub", f"{t}:INSERT:{f}"), ("sub", sentinel)])))
        db.execute(f"insert into {t} values " + ", ".join(ROWS))
        db.execute(f"insert into {sentinel} values (1, 'o')")
        for f, c in streams:
            got = []
            while True:
                ev = c.next(20)
                if ev.data["table"] == sentinel:
                    break
                got.append(ev.data["new"]["id"])
            where = dict(CASES)[f]
            want = [r[0] for r in db.execute(f"select id from {t} where {where} order by id")]
            assert got == want, f"{f}: got {got}, Postgres says {want}"
    finally:
        for _, c in streams:
            c.close()


def test_unquoted_comma_is_a_clear_error(relay_server: RelayServer, typed_table: str) -> None:
    c = relay_server.open({"sub": f"{typed_table}:*:txt=eq.hello, world"}, subscribed=False)
    with c:
        assert c.status == 400
        assert c.body["error"] == "invalid_filter"
