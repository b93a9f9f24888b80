"""relay.js in Chromium against a scripted relay: what it asks for and how it routes.

The scripted relay (a small HTTP server in this process) records every request and
sends exactly the frames a test gives it, in the protocol's format: each change names
in "ids" the `sub=` parameters it satisfies. So these tests pin the client down on its
own: one `sub=` and its own `select=` per binding, routing by ids only, one stream for
channel changes made in one tick, a reopen from the last delivered position, and a
channel subscribed with an older `since` caught up alone over /v1/changes.
Each test waits for what the page shows (with a timeout), never sleeps to synchronise.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

from tests.conftest import RelayServer, start_relay  # noqa: E402
from tests.test_browser import (  # noqa: E402
    add_items,
    browser,  # noqa: F401  (the Chromium fixture)
    new_stream,
    org,
    require_ids,
)

RELAY_JS = Path(__file__).parent.parent / "relay" / "static" / "relay.js"
PAGE = """<!doctype html><meta charset="utf-8"><title>relay.js unit page</title><body>
<script type="module">
import { createRelay } from '/relay.js';
window.createRelay = createRelay;
window.ready = true;
</script>"""

Params = list[tuple[str, str]]


class Stream:
    """One /v1/stream request: its parameters, and the frames to send on it."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.frames: queue.Queue[str] = queue.Queue()
        self.closed = threading.Event()

    def param(self, key: str) -> str | None:
        return next((v for k, v in self.params if k == key), None)

    def subscriptions(self) -> Params:
        return [(k, v) for k, v in self.params if k in ("sub", "select", "topic")]

    def send(self, position: int, event: str, data: dict[str, Any]) -> None:
        self.frames.put(f"id: {position}\nevent: {event}\ndata: {json.dumps(data)}\n\n")

    def end(self) -> None:
        """Close the stream from the server's side (the client sees an error)."""
        self.frames.put("")


class ScriptedRelay:
    """Serves relay.js and the test page; answers /v1/stream, /v1/changes and /v1/snapshot
    as scripted (`snapshot_answer` returns the status and the JSON body)."""

    def __init__(self) -> None:
        self.streams: list[Stream] = []
        self.changes: list[Params] = []
        self.snapshots: list[Params] = []
        self.snapshot_answer: Callable[[Params], tuple[int, dict[str, Any]]] = lambda params: (
            200,
            {"position": self.head, "rows": []},
        )
        self.head = 100
        self.answer: Callable[[Params], dict[str, Any]] = lambda params: {
            "events": [],
            "position": self.head,
            "more": False,
        }
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                params = parse_qsl(url.query, keep_blank_values=True)
                if url.path == "/relay.js":
                    self._send(200, "text/javascript", RELAY_JS.read_bytes())
                elif url.path == "/page.html":
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif url.path == "/v1/changes":
                    relay.changes.append(params)
                    self._send(200, "application/json", json.dumps(relay.answer(params)).encode())
                elif url.path == "/v1/snapshot":
                    relay.snapshots.append(params)
                    status, body = relay.snapshot_answer(params)
                    self._send(status, "application/json", json.dumps(body).encode())
                elif url.path == "/v1/stream":
                    self._stream(params)
                else:
                    self._send(404, "text/plain", b"")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, params: Params) -> None:
                stream = Stream(params)
                relay.streams.append(stream)
                start = dict(params).get("last_event_id") or str(relay.head)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-store")
                self.end_headers()
                hello = {"status": "SUBSCRIBED", "subscriptions": [], "position": int(start)}
                try:
                    self.wfile.write(f"event: system\ndata: {json.dumps(hello)}\n\n".encode())
                    self.wfile.flush()
                    while not relay.stopping.is_set():
                        try:
                            frame = stream.frames.get(timeout=0.2)
                        except queue.Empty:
                            frame = ": keep-alive\n\n"  # also notices a closed connection
                        if not frame:
                            break
                        self.wfile.write(frame.encode())
                        self.wfile.flush()
                except OSError:
                    pass
                finally:
                    stream.closed.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_streams(self, count: int, timeout: float = 10.0) -> Stream:
        wait_until(lambda: len(self.streams) >= count, timeout, f"{count} streams")
        return self.streams[count - 1]

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.01)


@pytest.fixture
def scripted() -> Iterator[ScriptedRelay]:
    relay = ScriptedRelay()
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def page(browser: Browser, scripted: ScriptedRelay) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context()
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(f"{scripted.url}/page.html")
    p.wait_for_function("window.ready === true", timeout=10_000)
    p.evaluate(
        """() => {
        window.relay = window.createRelay(location.origin, { token: 't', storageKey: false });
        window.got = {};
        window.channels = {};
        // a channel logging [position, table, row id] of what reaches it
        window.listen = (name, configs, options) => {
          window.got[name] = [];
          const ch = window.relay.channel(name, options);
          for (const config of configs) {
            if (config.broadcast) ch.on('broadcast', { event: '*' }, (m) => window.got[name].push([m.id, m.topic, m.event]));
            else ch.on('postgres_changes', config, (m) => window.got[name].push([m.id, m.table, m.new.id]));
          }
          window.channels[name] = ch.subscribe();
        };
      }"""
    )
    try:
        yield p
    finally:
        context.close()
        assert errors == [], errors


def row(position: int, table: str, ids: list[int], row_id: int) -> tuple[int, str, dict[str, Any]]:
    data = {
        "schema": "public",
        "table": table,
        "commit_timestamp": "2026-11-22T23:10:05Z",
        "eventType": "INSERT",
        "new": {"id": row_id},
        "old": {},
        "errors": None,
        "ids": ids,
    }
    return position, "postgres_changes", data


def got(page: Page) -> dict[str, list[list[Any]]]:
    result: dict[str, list[list[Any]]] = page.evaluate("window.got")
    return result


def wait_got(page: Page, name: str, count: int) -> None:
    page.wait_for_function(
        "([name, n]) => window.got[name] && window.got[name].length >= n",
        arg=[name, count],
        timeout=10_000,
    )


def test_each_binding_gets_its_own_sub_and_select_and_only_its_ids(
    page: Page, scripted: ScriptedRelay
) -> None:
    page.evaluate(
        """() => {
        listen('big', [{ event: 'INSERT', table: 'jobs', filter: 'n=gt.10' }]);
        listen('small', [{ event: 'INSERT', table: 'jobs', filter: 'n=lt.10' }]);
        listen('tasks', [{ table: 'tasks', select: 'id' }]);
        listen('jobNames', [{ table: 'jobs', select: ['id', 'name'] }]);
        listen('jobIds', [{ table: 'jobs', select: 'id' }]);
      }"""
    )
    stream = scripted.wait_streams(1)
    # positional: each sub followed by its own select, nothing merged or de-duplicated
    assert stream.subscriptions() == [
        ("sub", "public.jobs:INSERT:n=gt.10"),
        ("sub", "public.jobs:INSERT:n=lt.10"),
        ("sub", "public.tasks:*"),
        ("select", "id"),
        ("sub", "public.jobs:*"),
        ("select", "id,name"),
        ("sub", "public.jobs:*"),
        ("select", "id"),
    ]
    page.wait_for_function(
        "Object.values(window.channels).every(c => c.state === 'SUBSCRIBED')", timeout=10_000
    )
    for frame in (
        row(101, "jobs", [0], 20),  # n=20: the gt channel only
        row(102, "jobs", [1, 3, 4], 5),  # n=5: the lt channel and both unfiltered
        row(103, "tasks", [2], 7),
        row(104, "jobs", [3], 8),
        row(105, "jobs", [], 9),  # no subscription: nobody
        row(106, "jobs", [4, 4, 99], 10),  # an unknown index is ignored, a repeat is one call
    ):
        stream.send(*frame)
    wait_got(page, "jobIds", 2)
    assert got(page) == {
        "big": [["101", "jobs", 20]],
        "small": [["102", "jobs", 5]],
        "tasks": [["103", "tasks", 7]],
        "jobNames": [["102", "jobs", 5], ["104", "jobs", 8]],
        "jobIds": [["102", "jobs", 5], ["106", "jobs", 10]],
    }
    assert len(scripted.streams) == 1
    assert page.evaluate("window.relay.position") == "106"


def test_bindings_of_one_channel_each_get_the_change_once(
    page: Page, scripted: ScriptedRelay
) -> None:
    page.evaluate(
        """() => listen('both', [
          { event: 'INSERT', table: 'jobs', filter: 'status=eq.failed' },
          { event: 'INSERT', table: 'jobs', filter: 'progress=gte.90' },
        ])"""
    )
    stream = scripted.wait_streams(1)
    assert [v for k, v in stream.subscriptions()] == [
        "public.jobs:INSERT:status=eq.failed",
        "public.jobs:INSERT:progress=gte.90",
    ]
    stream.send(*row(101, "jobs", [0, 1], 1))  # both bindings: two callbacks, one each
    stream.send(*row(102, "jobs", [1], 2))
    wait_got(page, "both", 3)
    assert got(page)["both"] == [["101", "jobs", 1], ["101", "jobs", 1], ["102", "jobs", 2]]


def test_changes_in_one_tick_open_one_stream_and_a_reopen_resumes_where_it_was(
    page: Page, scripted: ScriptedRelay
) -> None:
    page.evaluate(
        """() => {
        listen('a', [{ table: 'jobs', filter: 'n=eq.1' }]);
        listen('b', [{ table: 'jobs', filter: 'n=eq.2' }]);
      }"""
    )
    first = scripted.wait_streams(1)
    assert first.param("last_event_id") is None  # a page without a position starts now
    page.wait_for_function("window.channels.b.state === 'SUBSCRIBED'", timeout=10_000)
    for position in range(101, 106):
        first.send(*row(position, "jobs", [position % 2], position))  # even: a, odd: b
    wait_got(page, "a", 2)
    wait_got(page, "b", 3)

    # one tick: a channel removed, two added -> one new stream, from the last position
    page.evaluate(
        """() => {
        window.relay.removeChannel(window.channels.a);
        listen('c', [{ table: 'tasks' }]);
        listen('d', [{ table: 'jobs', select: 'id' }]);
      }"""
    )
    second = scripted.wait_streams(2)
    assert second.param("last_event_id") == "105"
    assert [v for _, v in second.subscriptions()] == [
        "public.jobs:*:n=eq.2",
        "public.tasks:*",
        "public.jobs:*",
        "id",
    ]
    assert first.closed.wait(10)
    page.wait_for_function("window.channels.d.state === 'SUBSCRIBED'", timeout=10_000)
    assert page.evaluate("window.channels.a.state") == "CLOSED"
    # a resumed stream that sends 105 again (it must not) would not deliver it twice
    second.send(*row(105, "jobs", [0], 105))
    second.send(*row(106, "jobs", [0, 2], 106))
    second.send(*row(107, "tasks", [1], 107))
    wait_got(page, "c", 1)
    assert got(page)["b"] == [
        ["101", "jobs", 101],
        ["103", "jobs", 103],
        ["105", "jobs", 105],
        ["106", "jobs", 106],
    ]
    assert got(page)["d"] == [["106", "jobs", 106]]
    assert got(page)["c"] == [["107", "tasks", 107]]
    assert len(scripted.streams) == 2
    assert scripted.changes == []  # nothing was behind: nothing caught up


def test_a_channel_with_an_older_since_is_caught_up_alone(
    page: Page, scripted: ScriptedRelay
) -> None:
    topic = "stream-progress:42"

    def answer(params: Params) -> dict[str, Any]:
        assert ("topic", topic) in params and not any(k == "sub" for k, _ in params)
        after = int(dict(params)["after"])
        events = [
            {
                "id": p,
                "event": "broadcast",
                "data": {"topic": topic, "event": "tick", "payload": {}},
            }
            for p in (60, 103)
            if p > after
        ]
        return {"events": events, "position": 105, "more": False}

    scripted.answer = answer
    page.evaluate("() => listen('rows', [{ table: 'jobs' }])")
    first = scripted.wait_streams(1)
    page.wait_for_function("window.channels.rows.state === 'SUBSCRIBED'", timeout=10_000)
    for position in (101, 104, 105):
        first.send(*row(position, "jobs", [0], position))
    wait_got(page, "rows", 3)

    page.evaluate(
        f"() => listen('progress', [{{ broadcast: true }}], {{ topic: '{topic}', since: 50 }})"
    )
    second = scripted.wait_streams(2)
    # the new channel's history came over /v1/changes, for it alone, from its `since`
    assert len(scripted.changes) == 1
    assert dict(scripted.changes[0])["after"] == "50"
    # and the stream reopened from where the page was, not from 50: nothing replayed twice
    assert second.param("last_event_id") == "105"
    assert second.subscriptions() == [("sub", "public.jobs:*"), ("topic", topic)]
    page.wait_for_function("window.channels.progress.state === 'SUBSCRIBED'", timeout=10_000)
    second.send(106, "broadcast", {"topic": topic, "event": "tick", "payload": {}})
    second.send(*row(107, "jobs", [0], 107))
    wait_got(page, "rows", 4)
    assert got(page) == {
        "rows": [
            ["101", "jobs", 101],
            ["104", "jobs", 104],
            ["105", "jobs", 105],
            ["107", "jobs", 107],
        ],
        "progress": [["60", topic, "tick"], ["103", topic, "tick"], ["106", topic, "tick"]],
    }
    assert page.evaluate("window.relay.position") == "107"


# ---- against the real relay -----------------------------------------------------------------

REAL_PAGE = """<!doctype html><meta charset="utf-8"><body><script type="module">
import { createRelay } from '/relay.js';
const q = new URLSearchParams(location.search);
window.relay = createRelay(location.origin, { token: q.get('token'), storageKey: false });
window.got = {};
window.channels = {};
window.listen = (name, config) => {
  window.got[name] = [];
  window.channels[name] = window.relay.channel(name)
    .on('postgres_changes', config, (m) => window.got[name].push(m.new))
    .subscribe();
};
window.ready = true;
</script>"""


def real_page(browser: Browser, srv: RelayServer, token: str) -> Page:  # noqa: F811
    p = browser.new_context().new_page()
    p.route(
        "**/__test__/real.html*",
        lambda route: route.fulfill(status=200, content_type="text/html", body=REAL_PAGE),
    )
    p.goto(f"{srv.url}/__test__/real.html?{urlencode({'token': token})}")
    p.wait_for_function("window.ready === true", timeout=10_000)
    return p


def all_subscribed(p: Page) -> None:
    p.wait_for_function(
        "Object.values(window.channels).length"
        " && Object.values(window.channels).every(c => c.state === 'SUBSCRIBED')",
        timeout=10_000,
    )


def test_two_channels_with_gt_and_lt_on_one_table_each_get_only_their_rows(
    browser: Browser,  # noqa: F811
    relay_server: RelayServer,
    db: Any,
    make_table: Callable[..., str],
) -> None:
    require_ids(relay_server, db, make_table)
    t = make_table("id int primary key, org_id text, n int")
    o = f"org-{uuid.uuid4().hex[:8]}"
    p = real_page(browser, relay_server, relay_server.token(org_id=o))
    p.evaluate(
        f"""() => {{
        listen('big', {{ event: 'INSERT', table: '{t}', filter: 'n=gt.10' }});
        listen('small', {{ event: 'INSERT', table: '{t}', filter: 'n=lt.10' }});
        listen('all', {{ event: 'INSERT', table: '{t}' }});
      }}"""
    )
    all_subscribed(p)
    db.execute(
        f"insert into {t} values (1, %(o)s, 5), (2, %(o)s, 20), (3, %(o)s, 10), "
        "(4, %(o)s, null), (5, %(o)s, 11), (6, %(o)s, 9)",
        {"o": o},
    )
    p.wait_for_function("window.got.all.length >= 6", timeout=10_000)
    ids = p.evaluate(
        "Object.fromEntries(Object.entries(window.got).map(([k, v]) => [k, v.map(r => r.id)]))"
    )
    assert ids == {"big": [2, 5], "small": [1, 6], "all": [1, 2, 3, 4, 5, 6]}
    p.context.close()


def test_different_selects_on_one_table_and_one_per_table(
    browser: Browser,  # noqa: F811
    relay_server: RelayServer,
    db: Any,
    make_table: Callable[..., str],
) -> None:
    require_ids(relay_server, db, make_table)
    t = make_table("id int primary key, org_id text, name text, status text")
    o = f"org-{uuid.uuid4().hex[:8]}"
    p = real_page(browser, relay_server, relay_server.token(org_id=o))
    p.evaluate(
        f"""() => {{
        listen('ids', {{ event: 'INSERT', table: '{t}', select: 'id' }});
        listen('names', {{ event: 'INSERT', table: '{t}', select: 'name', filter: 'status=eq.new' }});
      }}"""
    )
    all_subscribed(p)
    db.execute(f"insert into {t} values (1, %(o)s, 'a', 'old'), (2, %(o)s, 'b', 'new')", {"o": o})
    p.wait_for_function(
        "window.got.ids.length >= 2 && window.got.names.length >= 1", timeout=10_000
    )
    got_rows = p.evaluate("window.got")
    # one change for both subscriptions is sent once, with the union of their columns
    assert got_rows["ids"] == [{"id": 1}, {"id": 2, "name": "b"}]
    assert got_rows["names"] == [{"id": 2, "name": "b"}]
    p.context.close()


def test_channels_on_two_tables_each_keep_their_own_select(
    browser: Browser,  # noqa: F811
    relay_server: RelayServer,
    db: Any,
    make_table: Callable[..., str],
) -> None:
    jobs = make_table("id int primary key, org_id text, status text, secret text", prefix="jobs")
    tasks = make_table("id int primary key, org_id text, status text, secret text", prefix="tasks")
    o = f"org-{uuid.uuid4().hex[:8]}"
    p = real_page(browser, relay_server, relay_server.token(org_id=o))
    p.evaluate(
        f"""() => {{
        listen('jobs', {{ event: '*', table: '{jobs}', select: 'id' }});
        listen('tasks', {{ event: '*', table: '{tasks}', select: 'id' }});
        listen('jobStatus', {{ event: 'UPDATE', table: '{jobs}', select: 'status' }});
      }}"""
    )
    all_subscribed(p)
    db.execute(f"insert into {jobs} values (1, %s, 'new', 's')", (o,))
    db.execute(f"insert into {tasks} values (7, %s, 'new', 's')", (o,))
    p.wait_for_function(
        "window.got.jobs.length >= 1 && window.got.tasks.length >= 1", timeout=10_000
    )
    got_rows = p.evaluate("window.got")
    assert got_rows["jobs"] == [{"id": 1}]
    assert got_rows["tasks"] == [{"id": 7}]  # its own select: not lost to the jobs channel's
    assert got_rows["jobStatus"] == []
    p.context.close()


# ---- the dashboard: one stream per page load ------------------------------------------------


def metric(srv: RelayServer, name: str) -> int:
    text = httpx.get(f"{srv.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no {name} in /metrics")


def test_the_dashboard_opens_one_stream_per_page_load_and_never_replays_twice(
    browser: Browser,  # noqa: F811
    dsn: str,
    db: Any,
) -> None:
    srv = start_relay(dsn)
    o = org()
    try:
        # history the page shows on arrival: streams with progress broadcasts on their topics
        names = [f"History {i} {uuid.uuid4().hex[:6]}" for i in range(3)]
        for i, name in enumerate(names):
            add_items(db, new_stream(db, o, name), o, 3 + i)
        opened, replayed = (
            metric(srv, "relay_streams_opened_total"),
            metric(srv, "relay_replayed_events_total"),
        )
        seen_changes: list[str] = []  # the kinds of the events fetched over /v1/changes
        seen_snapshots: list[int] = []  # rows per /v1/snapshot answer

        def seen(r: Any) -> None:
            if "/v1/changes" in r.url:
                seen_changes.extend(e["event"] for e in r.json().get("events", []))
            elif "/v1/snapshot" in r.url and r.status == 200:  # not a 503 to retry
                seen_snapshots.append(len(r.json()["rows"]))

        p = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
        p.on("response", seen)
        p.goto(f"{srv.url}/?access_token={srv.token(sub='u1', org_id=o)}")
        expect(p.locator("#conn")).to_have_attribute("data-status", "Live", timeout=10_000)
        for name in names:
            expect(p.locator(".stream-item", has_text=name)).to_be_visible(timeout=5000)
        # the newest stream's progress came from its topic's history (caught up over JSON)
        expect(p.locator("#card-count")).to_have_text("5 / 50", timeout=5000)
        assert metric(srv, "relay_streams_opened_total") - opened == 1
        assert metric(srv, "relay_replayed_events_total") - replayed == 0  # it opened at the head
        # the rows came from one snapshot (3 streams, 3 + 4 + 5 items), never replayed over
        # /v1/changes; the topics' broadcasts (one per insert statement) over /v1/changes
        assert seen_snapshots == [3 + 3 + 4 + 5]
        assert seen_changes == ["broadcast"] * 3

        # a new stream adds a topic channel: one reopen, from where the page was
        live_name = f"Live {uuid.uuid4().hex[:6]}"
        sid = new_stream(db, o, live_name)
        expect(p.locator(".stream-item", has_text=live_name)).to_be_visible(timeout=3000)
        add_items(db, sid, o, 2)
        expect(p.locator("#card-count")).to_have_text("2 / 50", timeout=5000)
        assert metric(srv, "relay_streams_opened_total") - opened == 2
        # the reopen resumed at the last delivered position: at most the changes written
        # while it reconnected, never the page's history again
        assert metric(srv, "relay_replayed_events_total") - replayed <= 3

        # a reload: again one stream, the rows from a new snapshot, the broadcasts' state
        # from the tab's storage, resumed from its position
        before = metric(srv, "relay_streams_opened_total")
        p.reload()
        expect(p.locator("#conn")).to_have_attribute("data-status", "Live", timeout=10_000)
        expect(p.locator(".stream-item", has_text=live_name)).to_be_visible(timeout=5000)
        expect(p.locator("#card-count")).to_have_text("2 / 50", timeout=5000)
        assert metric(srv, "relay_streams_opened_total") - before == 1
        p.context.close()
    finally:
        srv.stop()
