"""relay.js `channel(name, { snapshot: true })` in Chromium: the rows as they are now, then
every change after them, with no gap and no duplicate at the seam.

Two harnesses, as in tests/test_relay_js.py: the scripted relay pins down what relay.js asks
for and how it joins a snapshot to a stream that is behind or ahead of the snapshot's
position; the real relay shows the result is exact under concurrent writes, filtered and
ownership-restricted like the stream, and that a refused snapshot fails its channel alone.
Every wait is for a condition, with a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from playwright.sync_api import Browser, Page  # noqa: E402

from tests.conftest import RelayServer, start_relay  # noqa: E402
from tests.test_browser import browser  # noqa: E402, F401  (the Chromium fixture)
from tests.test_relay_js import (  # noqa: E402, F401  (the scripted relay and its page)
    Params,
    ScriptedRelay,
    page,
    row,
    scripted,
    wait_until,
)

Log = list[dict[str, Any]]

# Every channel logs, in order, what reaches its callbacks: changes (with the index of the
# binding they reached) and the statuses of its subscribe callback.
LISTEN = """
window.log = {};
window.channels = {};
window.listen = (name, configs, options) => {
  const log = (window.log[name] = []);
  const channel = window.relay.channel(name, options);
  configs.forEach((config, binding) => channel.on('postgres_changes', config, (m) => log.push({
    binding, type: m.eventType, id: m.id, schema: m.schema, table: m.table, new: m.new, old: m.old,
  })));
  window.channels[name] = channel.subscribe((status, error) => log.push({ status, error: error ? error.message : null }));
};
"""


def log_of(p: Page, name: str) -> Log:
    result: Log = p.evaluate("(name) => window.log[name]", name)
    return result


def wait_status(p: Page, name: str, status: str, timeout: float = 15_000) -> None:
    p.wait_for_function(
        "([name, status]) => window.channels[name] && window.channels[name].state === status",
        arg=[name, status],
        timeout=timeout,
    )


def statuses(log: Log) -> list[str]:
    return [e["status"] for e in log if "status" in e]


def changes(log: Log, binding: int | None = None) -> Log:
    return [e for e in log if "type" in e and (binding is None or e["binding"] == binding)]


def snapshot_before_subscribed(log: Log) -> Log:
    """The SNAPSHOT entries, checked to all come before SUBSCRIBED."""
    subscribed = next(i for i, e in enumerate(log) if e.get("status") == "SUBSCRIBED")
    rows = [e for e in log if e.get("type") == "SNAPSHOT"]
    assert all(log.index(e) < subscribed for e in rows), log
    return rows


# ---- the scripted relay: how a snapshot joins the one stream ----------------------------------


def snapshot_rows(table: str, ids: list[int], row_ids: list[int]) -> list[dict[str, Any]]:
    return [{"ids": ids, "schema": "public", "table": table, "row": {"id": r}} for r in row_ids]


def start_scripted_page(page: Page, scripted: ScriptedRelay) -> Any:  # noqa: F811
    """A live 'rows' channel on jobs, and the one stream delivering 101..105 to it."""
    page.evaluate(f"() => {{ {LISTEN} }}")
    page.evaluate("() => listen('rows', [{ table: 'jobs' }])")
    first = scripted.wait_streams(1)
    wait_status(page, "rows", "SUBSCRIBED")
    for position in range(101, 106):
        first.send(*row(position, "jobs", [0], position))
    page.wait_for_function("window.log.rows.length >= 6", timeout=10_000)
    return first


def test_a_stream_behind_the_snapshot_resumes_and_the_channel_skips_up_to_its_position(
    page: Page,  # noqa: F811
    scripted: ScriptedRelay,  # noqa: F811
) -> None:
    first = start_scripted_page(page, scripted)
    scripted.snapshot_answer = lambda params: (
        200,
        {
            "position": 110,
            "rows": snapshot_rows("jobs", [0], [1, 2]) + snapshot_rows("jobs", [1], [3]),
        },
    )
    page.evaluate(
        """() => listen('snap', [
          { table: 'jobs', filter: 'n=gt.1' },
          { table: 'jobs', select: ['id', 'n'] },
        ], { snapshot: true })"""
    )
    second = scripted.wait_streams(2)
    # the channel's own sub= and select=, nothing of the other channel's, no topics
    assert scripted.snapshots == [
        [("sub", "public.jobs:*:n=gt.1"), ("sub", "public.jobs:*"), ("select", "id,n")]
    ]
    # the stream resumes where the page was (105), not from the snapshot's position
    assert second.param("last_event_id") == "105"
    assert second.param("snapshot") is None
    assert [v for _, v in second.subscriptions()] == [
        "public.jobs:*",
        "public.jobs:*:n=gt.1",
        "public.jobs:*",
        "id,n",
    ]
    assert first.closed.wait(10)
    wait_status(page, "snap", "SUBSCRIBED")
    for position in (106, 110, 111, 112):
        second.send(*row(position, "jobs", [0, 1, 2], position))
    page.wait_for_function("window.log.snap.filter(e => e.type === 'INSERT').length >= 4")
    snap = log_of(page, "snap")
    rows = snapshot_before_subscribed(snap)
    assert [(e["binding"], e["new"], e["old"], e["id"], e["table"]) for e in rows] == [
        (0, {"id": 1}, {}, "110", "jobs"),
        (0, {"id": 2}, {}, "110", "jobs"),
        (1, {"id": 3}, {}, "110", "jobs"),
    ]
    # what the stream sent up to the snapshot's position is in the rows already: skipped
    assert [(e["binding"], e["id"]) for e in changes(snap) if e["type"] == "INSERT"] == [
        (0, "111"),
        (1, "111"),
        (0, "112"),
        (1, "112"),
    ]
    assert statuses(snap) == ["SUBSCRIBED"]
    page.wait_for_function("window.log.rows.length >= 10")
    assert [e["id"] for e in changes(log_of(page, "rows"))] == [
        str(p) for p in (101, 102, 103, 104, 105, 106, 110, 111, 112)
    ]
    assert scripted.changes == []  # nothing to catch up
    assert len(scripted.streams) == 2


def test_a_stream_ahead_of_the_snapshot_catches_the_channel_up_from_its_position(
    page: Page,  # noqa: F811
    scripted: ScriptedRelay,  # noqa: F811
) -> None:
    start_scripted_page(page, scripted)
    scripted.snapshot_answer = lambda params: (
        200,
        {"position": 102, "rows": snapshot_rows("jobs", [0], [1])},
    )

    def answer(params: Params) -> dict[str, Any]:
        # two pages: the catch-up asks again while `more` is true
        assert [(k, v) for k, v in params if k == "sub"] == [("sub", "public.jobs:*:n=gt.1")]
        after = int(dict(params)["after"])
        if after == 102:
            events = [
                {"id": 103, "event": "postgres_changes", "data": row(103, "jobs", [0], 103)[2]}
            ]
            return {"events": events, "position": 103, "more": True}
        assert after == 103
        events = [{"id": 105, "event": "postgres_changes", "data": row(105, "jobs", [0], 105)[2]}]
        return {"events": events, "position": 105, "more": False}

    scripted.answer = answer
    page.evaluate("() => listen('snap', [{ table: 'jobs', filter: 'n=gt.1' }], { snapshot: true })")
    second = scripted.wait_streams(2)
    assert [dict(c)["after"] for c in scripted.changes] == ["102", "103"]
    assert second.param("last_event_id") == "105"
    wait_status(page, "snap", "SUBSCRIBED")
    second.send(*row(105, "jobs", [0, 1], 105))  # a repeat (it must not come): not twice
    second.send(*row(106, "jobs", [0, 1], 106))
    page.wait_for_function("window.log.snap.filter(e => e.type === 'INSERT').length >= 3")
    snap = log_of(page, "snap")
    assert [(e["type"], e["id"]) for e in changes(snap)] == [
        ("SNAPSHOT", "102"),
        ("INSERT", "103"),
        ("INSERT", "105"),
        ("INSERT", "106"),
    ]
    assert statuses(snap) == ["SUBSCRIBED"]
    snapshot_before_subscribed(snap)
    page.wait_for_function("window.log.rows.length >= 7")
    assert [e["id"] for e in changes(log_of(page, "rows"))] == [
        str(p) for p in (101, 102, 103, 104, 105, 106)
    ]


def test_a_reconnect_resumes_and_never_loads_the_snapshot_again(
    page: Page,  # noqa: F811
    scripted: ScriptedRelay,  # noqa: F811
) -> None:
    page.evaluate(f"() => {{ {LISTEN} }}")
    scripted.snapshot_answer = lambda params: (
        200,
        {"position": 100, "rows": snapshot_rows("jobs", [0], [1])},
    )
    page.evaluate("() => listen('snap', [{ table: 'jobs' }], { snapshot: true })")
    first = scripted.wait_streams(1)
    assert first.param("last_event_id") == "100"  # the stream starts at the snapshot
    wait_status(page, "snap", "SUBSCRIBED")
    first.send(*row(101, "jobs", [0], 101))
    page.wait_for_function("window.log.snap.length >= 3")
    first.end()
    second = scripted.wait_streams(2)
    assert second.param("last_event_id") == "101"
    second.send(*row(102, "jobs", [0], 102))
    page.wait_for_function("window.log.snap.length >= 4")
    assert len(scripted.snapshots) == 1
    assert [(e["type"], e["id"]) for e in changes(log_of(page, "snap"))] == [
        ("SNAPSHOT", "100"),
        ("INSERT", "101"),
        ("INSERT", "102"),
    ]


def test_a_refused_snapshot_fails_its_channel_alone(
    page: Page,  # noqa: F811
    scripted: ScriptedRelay,  # noqa: F811
) -> None:
    first = start_scripted_page(page, scripted)
    message = "the snapshot has more than 3 rows (RELAY_SNAPSHOT_MAX_ROWS): narrow it"
    scripted.snapshot_answer = lambda params: (
        413,
        {"error": "snapshot_too_large", "message": message},
    )
    page.evaluate(
        """() => {
        listen('big', [{ table: 'jobs' }], { snapshot: true });
        listen('tasks', [{ table: 'tasks' }]);
      }"""
    )
    wait_status(page, "big", "CHANNEL_ERROR")
    second = scripted.wait_streams(2)
    assert [v for _, v in second.subscriptions()] == ["public.jobs:*", "public.tasks:*"]
    assert first.closed.wait(10)
    wait_status(page, "tasks", "SUBSCRIBED")
    second.send(*row(106, "jobs", [0], 106))
    second.send(*row(107, "tasks", [1], 107))
    page.wait_for_function("window.log.tasks.length >= 2 && window.log.rows.length >= 7")
    assert log_of(page, "big") == [{"status": "CHANNEL_ERROR", "error": message}]
    assert [e["id"] for e in changes(log_of(page, "tasks"))] == ["107"]
    assert len(scripted.streams) == 2


# ---- the real relay ---------------------------------------------------------------------------

REAL_PAGE = """<!doctype html><meta charset="utf-8"><body><script type="module">
import { createRelay } from '/relay.js';
const q = new URLSearchParams(location.search);
window.relay = createRelay(location.origin, { token: q.get('token'), storageKey: false });
LISTEN
window.ready = true;
</script>""".replace("LISTEN", LISTEN)


def real_page(browser: Browser, srv: RelayServer, token: str) -> Page:  # noqa: F811
    p = browser.new_context().new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.route(
        "**/__test__/snapshot.html*",
        lambda route: route.fulfill(status=200, content_type="text/html", body=REAL_PAGE),
    )
    p.goto(f"{srv.url}/__test__/snapshot.html?{urlencode({'token': token})}")
    p.wait_for_function("window.ready === true", timeout=10_000)
    p.errors = errors  # type: ignore[attr-defined]
    return p


def close(p: Page) -> None:
    errors = p.errors  # type: ignore[attr-defined]
    p.context.close()
    assert errors == [], errors


def sends_ids(srv: RelayServer, db: Any, make_table: Callable[..., str]) -> bool:
    """Whether the relay's stream names subscriptions in "ids" (the server side of issue 16;
    /v1/snapshot always does)."""
    t = make_table("id int primary key, org_id text")
    with srv.open([("sub", t)]) as c:
        db.execute(f"insert into {t} values (1, 'o')")
        return "ids" in c.next(10).data


def test_rows_before_the_page_arrive_as_snapshot_filtered_and_owned_like_the_stream(
    browser: Browser,  # noqa: F811
    relay_server: RelayServer,
    db: Any,
    make_table: Callable[..., str],
) -> None:
    t = make_table("id int primary key, org_id text, n int, secret text")
    mine, theirs = f"org-{uuid.uuid4().hex[:8]}", f"org-{uuid.uuid4().hex[:8]}"
    db.execute(
        f"insert into {t} select g, case when g %% 2 = 0 then %(mine)s else %(theirs)s end, g, "
        "'s' || g from generate_series(1, 40) g",
        {"mine": mine, "theirs": theirs},
    )
    p = real_page(browser, relay_server, relay_server.token(sub="u1", org_id=mine))
    p.evaluate(
        f"""() => {{
        listen('snap', [
          {{ table: '{t}', filter: 'n=gt.20' }},
          {{ table: '{t}', select: 'n' }},
        ], {{ snapshot: true }});
        listen('empty', [{{ table: '{t}', filter: 'n=gt.1000' }}], {{ snapshot: true }});
      }}"""
    )
    wait_status(p, "snap", "SUBSCRIBED")
    wait_status(p, "empty", "SUBSCRIBED")
    snap = log_of(p, "snap")
    rows = snapshot_before_subscribed(snap)
    filtered = sorted((e["new"] for e in rows if e["binding"] == 0), key=lambda r: r["id"])
    assert filtered == [
        {"id": g, "org_id": mine, "n": g, "secret": f"s{g}"} for g in range(22, 41, 2)
    ]
    # the unfiltered binding: every row of this org, with its select (and the key); the
    # rows both bindings want are sent once, with the union of their columns
    selected = sorted((e["new"] for e in rows if e["binding"] == 1), key=lambda r: r["id"])
    assert [r["id"] for r in selected] == list(range(2, 41, 2))
    assert all(r == {"id": r["id"], "n": r["id"]} for r in selected if r["id"] <= 20)
    assert all(e["old"] == {} and e["schema"] == "public" and e["table"] == t for e in rows)
    assert len({e["id"] for e in rows}) == 1  # the position the rows reflect
    assert statuses(snap) == ["SUBSCRIBED"]
    assert log_of(p, "empty") == [{"status": "SUBSCRIBED", "error": None}]

    # live, the same rules: filtered, this org's rows only, after the snapshot's position
    db.execute(
        f"insert into {t} values (41, %s, 41, 'x'), (42, %s, 42, 'y'), (44, %s, 1, 'z')",
        (theirs, mine, mine),
    )
    p.wait_for_function(
        "window.log.snap.filter(e => e.type === 'INSERT').length >= 3", timeout=10_000
    )
    live = [
        (e["binding"], e["new"]["id"])
        for e in changes(log_of(p, "snap"), None)
        if e["type"] == "INSERT"
    ]
    if sends_ids(relay_server, db, make_table):
        assert live == [(0, 42), (1, 42), (1, 44)]
    else:  # a relay without "ids" on the stream: relay.js routes live changes by table
        assert {row_id for _, row_id in live} == {42, 44}
    position = int(rows[0]["id"])
    assert all(int(e["id"]) > position for e in changes(log_of(p, "snap")) if e["type"] == "INSERT")
    close(p)


class Writer:
    """Random inserts, updates (some moving a row to the other org) and deletes, one to
    three per transaction, on rows of two orgs, until stopped."""

    def __init__(self, dsn: str, table: str, orgs: list[str], seed: int) -> None:
        self.dsn, self.table, self.orgs = dsn, table, orgs
        self.random = random.Random(seed)
        self.done = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.next_id = 1000
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stopping.is_set():
                    with conn.transaction():
                        for _ in range(self.random.randint(1, 3)):
                            self.step(conn)
                    self.done += 1
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def step(self, conn: psycopg.Connection[Any]) -> None:
        t, r = self.table, self.random
        ids = [x for (x,) in conn.execute(f"select id from {t}").fetchall()]
        op = r.random()
        if op < 0.4 or len(ids) < 5:
            self.next_id += 1
            conn.execute(
                f"insert into {t} values (%s, %s, %s)",
                (self.next_id, r.choice(self.orgs), r.randint(0, 100)),
            )
        elif op < 0.6:
            conn.execute(f"update {t} set n = n + 1 where id = %s", (r.choice(ids),))
        elif op < 0.75:
            conn.execute(
                f"update {t} set org_id = %s where id = %s", (r.choice(self.orgs), r.choice(ids))
            )
        else:
            conn.execute(f"delete from {t} where id = %s", (r.choice(ids),))

    def wait_done(self, count: int) -> None:
        wait_until(lambda: self.done >= count or self.error is not None, 30, f"{count} writes")
        assert self.error is None, self.error

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        assert self.error is None, self.error


def reconstruct(log: Log) -> dict[int, dict[str, Any]]:
    """The rows the page holds: the SNAPSHOT rows, then each change applied in order."""
    state: dict[int, dict[str, Any]] = {}
    for e in changes(log):
        if e["type"] in ("SNAPSHOT", "INSERT", "UPDATE"):
            state[e["new"]["id"]] = e["new"]
        elif e["type"] == "DELETE":
            state.pop(e["old"]["id"], None)
    return state


@pytest.fixture
def writer_table(make_table: Callable[..., str]) -> Iterator[str]:
    yield make_table("id int primary key, org_id text, n int")


@pytest.mark.parametrize("seed", [1, 2])
def test_the_handoff_is_exact_under_concurrent_writes(
    browser: Browser,  # noqa: F811
    relay_server: RelayServer,
    dsn: str,
    db: Any,
    writer_table: str,
    seed: int,
) -> None:
    t = writer_table
    mine, theirs = f"org-{uuid.uuid4().hex[:8]}", f"org-{uuid.uuid4().hex[:8]}"
    db.execute(
        f"insert into {t} select g, case when g %% 3 = 0 then %s else %s end, g "
        "from generate_series(1, 30) g",
        (theirs, mine),
    )
    p = real_page(browser, relay_server, relay_server.token(sub="u1", org_id=mine))
    # a live channel first: the snapshot channel joins a stream that is already going
    p.evaluate(f"() => listen('live', [{{ table: '{t}' }}])")
    wait_status(p, "live", "SUBSCRIBED")
    writer = Writer(dsn, t, [mine, theirs], seed)
    writer.thread.start()
    try:
        writer.wait_done(20)
        p.evaluate(f"() => listen('snap', [{{ table: '{t}' }}], {{ snapshot: true }})")
        wait_status(p, "snap", "SUBSCRIBED")
        writer.wait_done(writer.done + 30)
    finally:
        writer.stop()
    # once this last row of the page's org is there, everything before it is
    db.execute(f"insert into {t} values (999, %s, -1)", (mine,))
    p.wait_for_function(
        "window.log.snap.some(e => e.type === 'INSERT' && e.new.id === 999)", timeout=15_000
    )
    snap = log_of(p, "snap")
    rows = snapshot_before_subscribed(snap)
    expected = {
        r[0]: {"id": r[0], "org_id": r[1], "n": r[2]}
        for r in db.execute(f"select id, org_id, n from {t} where org_id = %s", (mine,))
    }
    assert reconstruct(snap) == expected
    # no change twice, none at or before the snapshot's position
    positions = [int(e["id"]) for e in changes(snap) if e["type"] != "SNAPSHOT"]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    if rows:
        assert all(position > int(rows[0]["id"]) for position in positions)
    # and the writes did straddle the snapshot: the live channel saw some on each side of it
    seen = [int(e["id"]) for e in changes(log_of(p, "live"))]
    at = int(rows[0]["id"]) if rows else min(positions) - 1
    assert min(seen) <= at < max(seen), (at, seen[:3], seen[-3:])
    assert statuses(snap) == ["SUBSCRIBED"] and statuses(log_of(p, "live")) == ["SUBSCRIBED"]
    close(p)


def test_a_snapshot_over_the_row_limit_fails_its_channel_and_the_others_stay_live(
    browser: Browser,  # noqa: F811
    dsn: str,
    db: Any,
    make_table: Callable[..., str],
) -> None:
    srv = start_relay(dsn, snapshot_max_rows=3)
    try:
        t = make_table("id int primary key, org_id text, n int")
        o = f"org-{uuid.uuid4().hex[:8]}"
        db.execute(f"insert into {t} select g, %s, g from generate_series(1, 5) g", (o,))
        p = real_page(browser, srv, srv.token(sub="u1", org_id=o))
        p.evaluate(
            f"""() => {{
            listen('big', [{{ table: '{t}' }}], {{ snapshot: true }});
            listen('small', [{{ table: '{t}', filter: 'n=lt.3' }}], {{ snapshot: true }});
            listen('live', [{{ table: '{t}' }}]);
          }}"""
        )
        wait_status(p, "big", "CHANNEL_ERROR")
        wait_status(p, "small", "SUBSCRIBED")
        wait_status(p, "live", "SUBSCRIBED")
        [entry] = log_of(p, "big")
        assert entry["status"] == "CHANNEL_ERROR"
        assert "RELAY_SNAPSHOT_MAX_ROWS" in entry["error"], entry
        assert sorted(e["new"]["id"] for e in snapshot_before_subscribed(log_of(p, "small"))) == [
            1,
            2,
        ]
        db.execute(f"insert into {t} values (6, %s, 0)", (o,))
        p.wait_for_function(
            "window.log.live.some(e => e.type === 'INSERT')"
            " && window.log.small.some(e => e.type === 'INSERT')",
            timeout=10_000,
        )
        assert [e["new"]["id"] for e in changes(log_of(p, "live"))] == [6]
        assert log_of(p, "big") == [entry]  # nothing reached it after its error
        close(p)
    finally:
        srv.stop()


def test_a_snapshot_refused_for_the_token_fails_the_channel_instead_of_hanging(
    page: Page,  # noqa: F811
    scripted: ScriptedRelay,  # noqa: F811
) -> None:
    page.evaluate(f"() => {{ {LISTEN} }}")
    scripted.snapshot_answer = lambda params: (
        401,
        {"error": "invalid_token", "message": "token expired"},
    )
    page.evaluate("() => listen('snap', [{ table: 'jobs' }], { snapshot: true })")
    wait_status(page, "snap", "CHANNEL_ERROR")  # a fixed token: not asked again
    assert log_of(page, "snap") == [
        {"status": "CHANNEL_ERROR", "error": "relay: token refused (401)"}
    ]
    assert scripted.streams == []
