"""relay.sqlfilter: filters and ownership as SQL, cross-checked against the evaluator.

The property: for random rows stored in real Postgres and random filters, the
rows `select ... where <compiled filter>` returns are exactly the rows whose
`to_jsonb(row)` (decoded as the hub decodes it) `Filter.matches` accepts; and
the compiled ownership selects exactly the rows `Principal.owns` accepts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay import logdb
from relay.catalog import Table
from relay.changes import _decode_exact
from relay.filters import parse_filter
from relay.principal import SERVICE_ROLE, Principal
from relay.snapshot import column_types
from relay.sqlfilter import Params, compile_filter, compile_ownership, ident

MOODS = ("sad", "ok", "so, so", "Happy")

# column -> (SQL type, row values as Postgres text)
POOLS: dict[str, tuple[str, list[str]]] = {
    "i4": ("int4", ["-2", "0", "1", "7", "2147483647", "-2147483648"]),
    "i8": ("int8", ["0", "-1", "9007199254740993", "9223372036854775807"]),
    "num": (
        "numeric",
        ["0", "1.5", "1.50", "-2.25", "NaN", "Infinity", "-Infinity", "12345678901234567890.1"],
    ),
    "f8": (
        "float8",
        ["0", "-0", "0.1", "2.5", "1e300", "NaN", "Infinity", "-Infinity", "5e-324"],
    ),
    # the last two: a float4 filter value is rounded to a double first, as the evaluator does
    "f4": (
        "float4",
        [
            "0",
            "0.1",
            "16777217",
            "3.4e38",
            "NaN",
            "-Infinity",
            "1.0000001192092896",
            "1.0000000596046447753906250001",
        ],
    ),
    "txt": ("text", ["", "a", "A", "ab", "b%", "a_b", 'q"uo\\te', "é", "É", "z,(y)", " a "]),
    "vc": ("varchar(10)", ["", "a", "ab", "B", "é"]),
    "bp": ("char(4)", ["", "a", "a  ", "ab", "b"]),
    "uid": (
        "uuid",
        [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-0000-0000-0000-000000000001",
        ],
    ),
    "flag": ("bool", ["true", "false"]),
    "tstz": (
        "timestamptz",
        [
            "2026-01-01T00:00:00+00:00",
            "2026-01-01T05:00:00+05:00",
            "2026-06-01T12:30:00.25+02:00",
            "infinity",
            "-infinity",
        ],
    ),
    "ts": ("timestamp", ["2026-01-01T00:00:00", "2026-06-01T12:30:00.5", "infinity"]),
    "d": ("date", ["2026-01-01", "1999-12-31", "infinity", "-infinity"]),
    "tm": ("time", ["00:00:00", "12:30:00.5", "23:59:59", "24:00:00"]),
    "tmz": ("timetz", ["12:00:00+02:00", "10:00:00+00:00", "12:00:00-03:30", "08:00:00+00:00"]),
    "mood": ("__mood__", list(MOODS)),
    "doc": ("jsonb", ['{"a": 1}', "null", "[]"]),
}
ORDERED = ["eq", "neq", "lt", "lte", "gt", "gte", "in", "isdistinct", "is"]
TEXT_OPS = ORDERED + ["like", "ilike", "match", "imatch"]
OPS: dict[str, list[str]] = {c: ORDERED for c in POOLS}
OPS.update(txt=TEXT_OPS, vc=TEXT_OPS, bp=TEXT_OPS)
OPS.update(flag=["eq", "neq", "in", "isdistinct", "is"], doc=["is"])
LIKE_PATTERNS = ["%", "a%", "%b", "a_", "_", "", "\\%%", "A%", "é%", "%é", "%\\_%", 'q"%']
REGEXES = ["a", "^a", "b", "a.b", "[ab]", "A|é", "^$", "x?", ".", "^.{2}$", "É"]
USERS = ["u1", "u2", "U1", ""]
ORGS = ["A", "B", "a"]


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pg(loop: asyncio.AbstractEventLoop, dsn: str) -> Iterator[asyncpg.Connection]:
    conn = loop.run_until_complete(asyncpg.connect(dsn))
    yield conn
    loop.run_until_complete(conn.close())


@pytest.fixture(scope="module")
def typed(loop: asyncio.AbstractEventLoop, pg: asyncpg.Connection) -> Iterator[tuple[Table, Any]]:
    """A watched table with a column of every type filters know."""
    suffix = uuid.uuid4().hex[:8]
    mood = f"mood_{suffix}"
    name = f"typed_{suffix}"
    columns = ", ".join(f"{c} {mood if t == '__mood__' else t}" for c, (t, _) in POOLS.items())
    run = loop.run_until_complete
    run(pg.execute(f"create type {mood} as enum ({', '.join(repr(m) for m in MOODS)})"))
    run(
        pg.execute(
            f"create table {name} (id int primary key, user_id text, org_id text, {columns})"
        )
    )
    run(pg.execute(f"select relay.watch('{name}')"))
    table = run(logdb.load_catalog(pg)).get("public", name)
    assert table is not None
    types = run(column_types(pg, table))
    yield table, types
    run(pg.execute(f"drop table {name}; drop type {mood}"))


def run_where(
    loop: asyncio.AbstractEventLoop,
    pg: asyncpg.Connection,
    table: Table,
    where: str,
    params: Params,
) -> tuple[set[int], dict[int, dict[str, Any]]]:
    """(ids the WHERE selects, every row as the hub decodes it)."""
    name = f"{ident(table.schema)}.{ident(table.name)}"
    chosen = loop.run_until_complete(
        pg.fetch(f"select id from {name} t where {where}", *params.values)
    )
    rows = loop.run_until_complete(pg.fetch(f"select id, to_jsonb(t.*)::text from {name} t"))
    return {r[0] for r in chosen}, {r[0]: _decode_exact(r[1]) for r in rows}


def store(
    loop: asyncio.AbstractEventLoop,
    pg: asyncpg.Connection,
    table: Table,
    rows: list[dict[str, str | None]],
) -> None:
    name = f"{ident(table.schema)}.{ident(table.name)}"
    names = ["user_id", "org_id", *POOLS]
    types = loop.run_until_complete(column_types(pg, table))
    placeholders = ", ".join(f"${n + 2}::text::{types[c]}" for n, c in enumerate(names))
    sql = f"insert into {name} (id, {', '.join(names)}) values ($1, {placeholders})"
    loop.run_until_complete(pg.execute(f"delete from {name}"))
    for i, row in enumerate(rows):
        loop.run_until_complete(pg.execute(sql, i, *(row.get(c) for c in names)))


@st.composite
def row(draw: st.DrawFn) -> dict[str, str | None]:
    out: dict[str, str | None] = {
        "user_id": draw(st.sampled_from([*USERS, None])),
        "org_id": draw(st.sampled_from([*ORGS, None])),
    }
    for column, (_, pool) in POOLS.items():
        out[column] = draw(st.sampled_from(pool) | st.none())
    return out


@st.composite
def condition(draw: st.DrawFn) -> str:
    column = draw(st.sampled_from(sorted(POOLS)))
    op = draw(st.sampled_from(OPS[column]))
    pool = [v for v in POOLS[column][1] if v not in ("null",)]
    prefix = "not." if draw(st.booleans()) else ""
    if op == "is":
        words = ["null", "true", "false", "unknown"] if column == "flag" else ["null"]
        value = draw(st.sampled_from(words))
    elif op == "in":
        value = (
            "("
            + ",".join(quote(v) for v in draw(st.lists(st.sampled_from(pool), max_size=3)))
            + ")"
        )
    elif op == "isdistinct" and draw(st.integers(0, 3)) == 0:
        value = "null"
    elif op in ("like", "ilike"):
        value = quote(draw(st.sampled_from(LIKE_PATTERNS)))
    elif op in ("match", "imatch"):
        value = quote(draw(st.sampled_from(REGEXES)))
    else:
        value = quote(draw(st.sampled_from(pool)))
    return f"{column}={prefix}{op}.{value}"


SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def some(**values: str | None) -> dict[str, str | None]:
    """A row with these values and NULL elsewhere."""
    return {"user_id": None, "org_id": None, **dict.fromkeys(POOLS), **values}


@SETTINGS
@given(
    rows=st.lists(row(), min_size=1, max_size=6),
    conditions=st.lists(condition(), min_size=1, max_size=3),
)
# double rounding of a float4 filter value, as the evaluator does it
@example(
    rows=[some(f4="1.0000001192092896")], conditions=['f4=eq."1.0000000596046447753906250001"']
)
# x IN () is false, and NOT of it false too for a NULL x
@example(rows=[some(), some(bp="a")], conditions=["bp=not.in.()"])
# a JSON null in a jsonb column is null to the evaluator
@example(rows=[some(doc="null"), some(doc="[]")], conditions=["doc=is.null"])
@example(rows=[some(doc="null"), some(doc="[]")], conditions=["doc=not.is.null"])
# text order is code-point order, char(n) ignores trailing blanks except in patterns
@example(rows=[some(txt="é"), some(txt="z")], conditions=['txt=gt."z"'])
@example(rows=[some(bp="a  "), some(bp="ab")], conditions=['bp=eq."a"', 'bp=like."a %"'])
def test_compiled_filter_selects_what_the_evaluator_matches(
    loop: asyncio.AbstractEventLoop,
    pg: asyncpg.Connection,
    typed: tuple[Table, dict[str, str]],
    rows: list[dict[str, str | None]],
    conditions: list[str],
) -> None:
    table, types = typed
    store(loop, pg, table, rows)
    flt = parse_filter(",".join(conditions), table.columns)
    params = Params()
    where = compile_filter(flt, table.columns, types, "t", params)
    chosen, decoded = run_where(loop, pg, table, where, params)
    expected = {i for i, r in decoded.items() if flt.matches(r)}
    assert chosen == expected, (conditions, where, params.values, decoded)
    # each condition alone, and its negation, agree too (NULLs satisfy neither)
    for text in conditions:
        single = parse_filter(text, table.columns)
        params = Params()
        chosen, _ = run_where(
            loop, pg, table, compile_filter(single, table.columns, types, "t", params), params
        )
        assert chosen == {i for i, r in decoded.items() if single.matches(r)}, text


principals = st.builds(
    Principal,
    sub=st.sampled_from([*USERS, None]),
    orgs=st.frozensets(st.sampled_from(ORGS)),
    role=st.sampled_from([None, "authenticated", SERVICE_ROLE]),
    exp=st.none(),
    claims=st.just({}),
)


@SETTINGS
@given(rows=st.lists(row(), min_size=1, max_size=6), principal=principals)
def test_compiled_ownership_selects_what_the_hub_owns(
    loop: asyncio.AbstractEventLoop,
    pg: asyncpg.Connection,
    typed: tuple[Table, dict[str, str]],
    rows: list[dict[str, str | None]],
    principal: Principal,
) -> None:
    table, _ = typed
    store(loop, pg, table, rows)
    params = Params()
    chosen, decoded = run_where(
        loop, pg, table, compile_ownership(table, principal, "t", params), params
    )
    expected = {i for i, r in decoded.items() if principal.owns(r["user_id"], r["org_id"])}
    assert chosen == expected


@pytest.fixture(scope="module")
def owned(loop: asyncio.AbstractEventLoop, pg: asyncpg.Connection) -> Iterator[Table]:
    """Owner columns of type uuid (user) and bigint (org), indexed."""
    name = f"owned_{uuid.uuid4().hex[:8]}"
    run = loop.run_until_complete
    run(pg.execute(f"create table {name} (id int primary key, owner uuid, team int8, note date)"))
    run(pg.execute(f"create index on {name} (owner)"))
    run(pg.execute(f"create index on {name} (team)"))
    run(pg.execute(f"select relay.watch('{name}', 'owner', 'team')"))
    table = run(logdb.load_catalog(pg)).get("public", name)
    assert table is not None
    yield table
    run(pg.execute(f"drop table {name}"))


UIDS = ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000001"]
SUBS = UIDS + [UIDS[0].upper(), "{" + UIDS[0] + "}", UIDS[0].replace("-", ""), "x", ""]
TEAMS = ["7", "007", "-0", "0", "-3", "+7", "9223372036854775808", "7.0", " 7"]


@SETTINGS
@given(
    owners=st.lists(
        st.tuples(st.sampled_from([*UIDS, None]), st.sampled_from([7, 0, -3, None])),
        min_size=1,
        max_size=6,
    ),
    sub=st.sampled_from([*SUBS, None]),
    orgs=st.frozensets(st.sampled_from(TEAMS), max_size=3),
)
def test_typed_owner_columns_compare_as_captured_text(
    loop: asyncio.AbstractEventLoop,
    pg: asyncpg.Connection,
    owned: Table,
    owners: list[tuple[str | None, int | None]],
    sub: str | None,
    orgs: frozenset[str],
) -> None:
    """uuid/integer owners: compared on the column (indexable), exactly as text would."""
    name = ident(owned.name)
    run = loop.run_until_complete
    run(pg.execute(f"delete from {name}"))
    for i, (owner, team) in enumerate(owners):
        run(pg.execute(f"insert into {name} values ($1, $2::text::uuid, $3)", i, owner, team))
    principal = Principal(sub=sub, orgs=orgs, role=None, exp=None, claims={})
    params = Params()
    chosen, decoded = run_where(
        loop, pg, owned, compile_ownership(owned, principal, "t", params), params
    )
    assert chosen == {i for i, r in decoded.items() if principal.owns(r["owner"], _text(r["team"]))}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def test_values_never_enter_the_sql_text(
    loop: asyncio.AbstractEventLoop, pg: asyncpg.Connection, typed: tuple[Table, dict[str, str]]
) -> None:
    table, types = typed
    hostile = "x'); drop table relay.changes; --"
    flt = parse_filter(
        f"txt=eq.{quote(hostile)},txt=in.({quote(hostile)}),txt=like.{quote(hostile)}",
        table.columns,
    )
    principal = Principal(sub=hostile, orgs=frozenset({hostile}), role=None, exp=None, claims={})
    params = Params()
    where = (
        compile_filter(flt, table.columns, types, "t", params)
        + " AND "
        + compile_ownership(table, principal, "t", params)
    )
    assert "drop" not in where and hostile in params.values
    store(loop, pg, table, [{"txt": hostile, "user_id": hostile, "org_id": "A"}])
    chosen, _ = run_where(loop, pg, table, where, params)
    assert chosen == {0}
    assert loop.run_until_complete(pg.fetchval("select to_regclass('relay.changes') is not null"))


def test_identifiers_are_quoted() -> None:
    assert ident('we"ird col') == '"we""ird col"'
    with pytest.raises(ValueError):
        ident("a\x00b")


@pytest.mark.parametrize(
    ("filter_text", "index"),
    [
        ("status=eq.done", "by_status"),
        ("status=in.(done,failed)", "by_status"),
        ("n=gt.5", "by_n"),
        ("n=not.lte.5", "by_n"),
        ("at=gte.2026-01-01T00:00:00Z", "by_at"),
    ],
)
def test_conditions_use_the_tables_indexes(
    loop: asyncio.AbstractEventLoop, pg: asyncpg.Connection, filter_text: str, index: str
) -> None:
    """A comparison is written `column <op> parameter`: the planner can use an index."""
    name = f"indexed_{uuid.uuid4().hex[:8]}"
    run = loop.run_until_complete
    run(
        pg.execute(
            f"create table {name} (id int primary key, org_id text, status text, n int, at timestamptz)"
        )
    )
    try:
        run(pg.execute(f"create index by_status_{name} on {name} (status)"))
        run(pg.execute(f"create index by_n_{name} on {name} (n)"))
        run(pg.execute(f"create index by_at_{name} on {name} (at)"))
        run(pg.execute(f"create index by_org_{name} on {name} (org_id)"))
        run(pg.execute(f"select relay.watch('{name}')"))
        table = run(logdb.load_catalog(pg)).get("public", name)
        assert table is not None
        types = run(column_types(pg, table))
        params, owner_params = Params(), Params()
        where = compile_filter(
            parse_filter(filter_text, table.columns), table.columns, types, "t", params
        )
        own = compile_ownership(
            table,
            Principal(sub="u", orgs=frozenset({"A"}), role=None, exp=None, claims={}),
            "t",
            owner_params,
        )
        plans: list[str] = []

        async def explain() -> None:
            async with pg.transaction():
                await pg.execute("set local enable_seqscan = off")
                for clause, values in ((where, params.values), (own, owner_params.values)):
                    rows = await pg.fetch(f"explain select * from {name} t where {clause}", *values)
                    plans.append("\n".join(r[0] for r in rows))

        run(explain())
        assert f"{index}_{name}" in plans[0], plans[0]
        assert f"by_org_{name}" in plans[1], plans[1]
    finally:
        run(pg.execute(f"drop table {name}"))
