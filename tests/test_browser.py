"""In a real browser: the dashboard at `/` and relay.js, in Debian's Chromium driven by Playwright.

Each test waits for what the page shows (with a timeout), never sleeps to synchronise.
Chromium is /usr/bin/chromium; when it is missing and we are root it is installed with
apt-get (never `playwright install`); when that fails the tests are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest

from tests.conftest import RelayServer, start_relay

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
STATIC = Path(__file__).parent.parent / "relay" / "static"


def _chromium_missing() -> str | None:
    """None when Chromium is there (installing it if we may), else why it is not."""
    if os.path.exists(CHROMIUM):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and apt-get cannot run here (not root?)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=900, env=env)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"could not install chromium ({' '.join(cmd)}): {exc}"
    return None if os.path.exists(CHROMIUM) else f"apt-get installed no {CHROMIUM}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = _chromium_missing()
    if reason:
        pytest.skip(reason)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def org() -> str:
    return f"org-{uuid.uuid4().hex[:8]}"


def dashboard(browser: Browser, relay: RelayServer, token: str) -> Page:
    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.goto(f"{relay.url}/?access_token={token}")
    expect(page.locator("#conn")).to_have_attribute("data-status", "Live", timeout=10_000)
    return page


def new_stream(db: Any, org_id: str, name: str, target: int = 50) -> str:
    row = db.execute(
        "insert into streams (org_id, name, target_metrics) "
        "values (%s, %s, jsonb_build_object('target', %s::int)) returning id",
        (org_id, name, target),
    ).fetchone()
    return str(row[0])


def add_items(db: Any, stream_id: str, org_id: str, n: int) -> None:
    """n rows in one statement, as a service would write them: nothing else."""
    db.execute(
        "insert into stream_items (stream_id, org_id, company_name, quality_score) "
        "select %s, %s, 'Company ' || g, 70 + g from generate_series(1, %s) g",
        (stream_id, org_id, n),
    )


# ---- the dashboard -------------------------------------------------------------------------


def test_dashboard_shows_a_new_row_within_a_second(
    browser: Browser, relay_server: RelayServer, db: Any
) -> None:
    o = org()
    page = dashboard(browser, relay_server, relay_server.token(sub="u1", org_id=o))
    assert "access_token" not in page.url  # the token is kept out of the address bar
    name = f"Fintechs in Berlin {uuid.uuid4().hex[:6]}"
    sid = new_stream(db, o, name)
    expect(page.locator(".stream-item", has_text=name)).to_be_visible(timeout=1000)
    expect(page.locator("#card-name")).to_have_text(name)
    # the trigger on stream_items turns plain inserts into progress-update broadcasts
    add_items(db, sid, o, 5)
    expect(page.locator("#card-count")).to_have_text("5 / 50", timeout=3000)
    add_items(db, sid, o, 3)
    expect(page.locator("#card-count")).to_have_text("8 / 50", timeout=3000)
    expect(page.locator("#bump-host .bump")).to_have_text("+3", timeout=1500)
    expect(page.locator("#card-pct")).to_have_text("16%")
    expect(page.locator(".company").first).to_be_visible()
    # a reload: the rows from a new snapshot, the progress from the tab's storage, and the
    # broadcasts sent meanwhile from its position
    page.goto("about:blank")
    add_items(db, sid, o, 2)  # written while the page was away
    page.goto(relay_server.url)
    expect(page.locator("#card-count")).to_have_text("10 / 50", timeout=5000)
    expect(page.locator(".stream-item", has_text=name)).to_have_count(1)
    page.context.close()


def test_milestone_toast_and_hostile_strings(
    browser: Browser, relay_server: RelayServer, db: Any
) -> None:
    o = org()
    page = dashboard(browser, relay_server, relay_server.token(sub="u1", org_id=o))
    hostile = '<img src=x onerror="window.pwned=1">'
    sid = new_stream(db, o, hostile)
    expect(page.locator("#card-name")).to_have_text(hostile, timeout=3000)
    db.execute(
        "select relay.broadcast(%s, 'milestone', jsonb_build_object("
        "'stream_id', %s::text, 'type', '25%%', 'title', %s::text, "
        "'description', '13 of 50 companies found', 'timestamp', now()), %s)",
        (f"stream-progress:{sid}", sid, "<b>Quarter</b> of the target", o),
    )
    toast = page.locator("[data-testid=toast]", has_text="<b>Quarter</b> of the target")
    expect(toast).to_be_visible(timeout=3000)
    expect(toast).to_contain_text("13 of 50 companies found")
    db.execute(
        "select relay.broadcast(%s, 'agent-activity', jsonb_build_object("
        "'id', 'a1', 'stream_id', %s::text, 'agent_id', 'scout', 'agent_name', 'Scout', "
        "'agent_type', 'discovery', 'activity_type', 'started', 'message', %s::text, "
        "'timestamp', now()), %s)",
        (f"stream-progress:{sid}", sid, "<script>window.pwned=2</script>", o),
    )
    expect(page.locator("#card-feed li.started")).to_contain_text("<script>window.pwned=2</script>")
    expect(page.locator("#card-agents .agent.active")).to_contain_text("Scout")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#card-name img").count() == 0
    page.context.close()


def test_enrichment_indicator_and_task_badges(
    browser: Browser, relay_server: RelayServer, db: Any
) -> None:
    o = org()
    page = dashboard(browser, relay_server, relay_server.token(sub="dana", org_id=o))
    job = db.execute(
        "insert into bulk_enrichment_jobs (org_id, user_id, status, progress) values "
        "(%s, 'dana', 'running', '{\"total\": 10, \"completed\": 3}') returning id",
        (o,),
    ).fetchone()[0]
    # another user's job of the same org is not this user's: not in their top bar
    db.execute(
        "insert into bulk_enrichment_jobs (org_id, user_id, status, progress) values "
        "(%s, 'omar', 'running', '{\"total\": 99, \"completed\": 1}')",
        (o,),
    )
    chip = page.locator("[data-testid=enrichment-chip]")
    expect(chip).to_have_text("Enriching 3/10", timeout=3000)
    task = db.execute(
        "insert into agent_tasks (org_id, agent_id, contact_id) values (%s, 'writer', 'Acme') "
        "returning id",
        (o,),
    ).fetchone()[0]
    card = page.locator(".task", has_text="Acme")
    expect(card.locator(".badge").first).to_have_text("Pending", timeout=3000)
    expect(card.locator(".badge.draft")).to_be_hidden()
    db.execute("update agent_tasks set status = 'in_progress' where id = %s", (task,))
    expect(card.locator(".badge").first).to_have_text("In progress")
    db.execute(
        "update agent_tasks set status = 'completed', draft = 'Hi Acme team' where id = %s",
        (task,),
    )
    expect(card.locator(".badge").first).to_have_text("Completed")
    expect(card.locator(".badge.draft")).to_have_text("Draft ready")
    expect(card.locator(".draft-text")).to_have_text("Hi Acme team")
    db.execute(
        "update bulk_enrichment_jobs set status = 'completed', "
        'progress = \'{"total": 10, "completed": 10}\' where id = %s',
        (job,),
    )
    expect(chip).to_have_text("Enriched 10 contacts", timeout=3000)
    done = time.monotonic()
    expect(chip).to_have_count(0, timeout=8000)  # finished jobs leave after 5 s
    assert time.monotonic() - done > 3.5
    page.context.close()


def test_reconnecting_then_live_with_the_missed_rows(browser: Browser, dsn: str, db: Any) -> None:
    srv = start_relay(dsn, retry_ms=300)
    port = int(srv.url.rsplit(":", 1)[1])
    o = org()
    token = srv.token(sub="u1", org_id=o)
    page = dashboard(browser, srv, token)
    before = f"Before {uuid.uuid4().hex[:6]}"
    new_stream(db, o, before)
    expect(page.locator(".stream-item", has_text=before)).to_be_visible(timeout=3000)
    srv.stop()
    expect(page.locator("#conn")).to_have_attribute("data-status", "Reconnecting…", timeout=5000)
    expect(page.locator("#conn-text")).to_have_text("Reconnecting…")
    missed = f"While down {uuid.uuid4().hex[:6]}"
    sid = new_stream(db, o, missed)
    add_items(db, sid, o, 7)
    srv = start_relay(dsn, port=port, retry_ms=300)
    try:
        expect(page.locator("#conn")).to_have_attribute("data-status", "Live", timeout=15_000)
        expect(page.locator(".stream-item", has_text=missed)).to_be_visible(timeout=3000)
        expect(page.locator(".stream-item", has_text=before)).to_have_count(1)
        expect(page.locator("#card-count")).to_have_text("7 / 50", timeout=3000)
        expect(page.locator("#conn-transport")).to_have_text("· SSE")
    finally:
        page.context.close()
        srv.stop()


def test_two_tabs_of_two_orgs_see_only_their_own_rows(
    browser: Browser, relay_server: RelayServer, db: Any
) -> None:
    a, b = org(), org()
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    tab_a, tab_b = ctx.new_page(), ctx.new_page()  # two tabs of one browser
    for tab, o in ((tab_a, a), (tab_b, b)):
        tab.goto(f"{relay_server.url}/?access_token={relay_server.token(sub='u', org_id=o)}")
    for tab in (tab_a, tab_b):
        expect(tab.locator("#conn")).to_have_attribute("data-status", "Live", timeout=10_000)
    tag = uuid.uuid4().hex[:6]
    # commit order b1 < a1 < b2: once a tab shows its org's later row, the other org's
    # earlier one would have arrived before it, if it were ever going to
    new_stream(db, b, f"B one {tag}")
    new_stream(db, a, f"A one {tag}")
    new_stream(db, b, f"B two {tag}")
    expect(tab_a.locator(".stream-item", has_text=f"A one {tag}")).to_be_visible(timeout=3000)
    expect(tab_b.locator(".stream-item", has_text=f"B two {tag}")).to_be_visible(timeout=3000)
    expect(tab_b.locator(".stream-item", has_text=f"B one {tag}")).to_be_visible()
    assert tab_a.locator(".stream-item", has_text=f"B one {tag}").count() == 0
    assert tab_a.locator(".stream-item", has_text=f"B two {tag}").count() == 0
    assert tab_b.locator(".stream-item", has_text=f"A one {tag}").count() == 0
    tab_a.goto(f"{relay_server.url}/#monitoring")
    expect(tab_a.locator("#mon-streams tr", has_text=f"A one {tag}")).to_be_visible(timeout=5000)
    orgs = set(tab_a.locator("#mon-streams td:nth-child(2)").all_inner_texts())
    assert orgs == {a}
    ctx.close()


# ---- relay.js ------------------------------------------------------------------------------

CLIENT = """<!doctype html><meta charset="utf-8"><title>relay.js test client</title><body>
<script type="module">
const q = new URLSearchParams(location.search);
const base = q.get('relay') || location.origin;
const { createRelay } = await import(base + '/relay.js');
const opts = JSON.parse(q.get('opts') || '{}');
window.tokenCalls = 0;
if (q.get('token_url')) opts.token = async () => {
  window.tokenCalls++;
  return (await fetch(q.get('token_url'))).text();
};
else if (q.get('token')) opts.token = q.get('token');
const relay = window.relay = createRelay(base, opts);
window.rows = []; window.statuses = []; window.transports = []; window.system = [];
relay.onStatus((s, t) => {
  document.body.dataset.status = s; document.body.dataset.transport = t || '';
  if (t && window.transports.at(-1) !== t) window.transports.push(t);
});
relay.channel('rows')
  .on('postgres_changes', { event: 'INSERT', table: q.get('table') }, (m) => window.rows.push(m.new.id))
  .on('system', {}, (d) => window.system.push(d))
  .subscribe((s) => window.statuses.push(s));
if (q.get('bad_topic')) {
  window.bad = [];
  relay.channel(q.get('bad_topic')).on('broadcast', { event: '*' }, () => {})
    .subscribe((s, err) => window.bad.push([s, err ? err.message : null]));
}
</script>"""


def client_url(base: str, **params: Any) -> str:
    p = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
    return f"{base}/__test__/client.html?{urlencode(p)}"


def serve_client(page: Page) -> None:
    """The test client, served on the relay's own origin by the browser's router."""
    page.route(
        "**/__test__/client.html*",
        lambda route: route.fulfill(status=200, content_type="text/html", body=CLIENT),
    )


def wait_rows(page: Page, expected: list[int], timeout: float = 10_000) -> None:
    page.wait_for_function(
        "n => window.rows && window.rows.length >= n", arg=len(expected), timeout=timeout
    )
    assert page.evaluate("window.rows") == expected  # in order, nothing lost, nothing twice


def test_relay_js_is_small_and_served(relay_server: RelayServer) -> None:
    r = httpx.get(f"{relay_server.url}/relay.js")
    assert r.status_code == 200
    assert "javascript" in r.headers["content-type"]
    # the budget applies to what a browser downloads: the gzipped file
    assert len(gzip.compress(r.content, 9)) < 8 * 1024, len(gzip.compress(r.content, 9))
    assert not re.search(r"\bmatches\s*[(=]", r.text)  # routes by "ids", never evaluates filters
    assert "export function createRelay" in r.text
    for f in ("dashboard.js", "dashboard.css"):
        assert httpx.get(f"{relay_server.url}/static/{f}").status_code == 200


def test_long_poll_fallback_and_back_loses_nothing(
    browser: Browser, dsn: str, db: Any, make_table: Callable[..., str]
) -> None:
    srv = start_relay(dsn, retry_ms=300)
    port = int(srv.url.rsplit(":", 1)[1])
    t = make_table("id int primary key, org_id text")
    o = org()
    page = browser.new_context().new_page()
    serve_client(page)

    def blocked(url: str) -> bool:
        return "/v1/stream" in url

    def abort(route: Route) -> None:
        route.abort()

    page.route(blocked, abort)  # a proxy that lets no event stream through
    opts = {"fallbackAfter": 2, "streamRetry": 1500, "pollWait": 5}
    page.goto(client_url(srv.url, table=t, token=srv.token(org_id=o, ttl=600), opts=opts))
    try:
        expect(page.locator("body")).to_have_attribute(
            "data-transport", "long-poll", timeout=10_000
        )
        expect(page.locator("body")).to_have_attribute("data-status", "Live")
        for i in (1, 2, 3):
            db.execute(f"insert into {t} values (%s, %s)", (i, o))
        wait_rows(page, [1, 2, 3])
        # the stream gets through again: the page goes back to it, from the same position
        page.unroute(blocked, abort)
        db.execute(f"insert into {t} values (4, %s)", (o,))
        expect(page.locator("body")).to_have_attribute("data-transport", "sse", timeout=10_000)
        db.execute(f"insert into {t} values (5, %s)", (o,))
        wait_rows(page, [1, 2, 3, 4, 5])
        # and back to long-polling: the relay restarts behind a proxy that blocks streams
        page.route(blocked, abort)
        srv.stop()
        db.execute(f"insert into {t} values (6, %s), (7, %s)", (o, o))
        srv = start_relay(dsn, port=port, retry_ms=300)
        expect(page.locator("body")).to_have_attribute(
            "data-transport", "long-poll", timeout=15_000
        )
        expect(page.locator("body")).to_have_attribute("data-status", "Live", timeout=10_000)
        db.execute(f"insert into {t} values (8, %s)", (o,))
        wait_rows(page, [1, 2, 3, 4, 5, 6, 7, 8])
        assert page.evaluate("window.transports") == ["long-poll", "sse", "long-poll"]
        assert page.evaluate("window.statuses") == ["SUBSCRIBED"]
    finally:
        page.context.close()
        srv.stop()


def test_expired_token_is_refreshed_and_the_stream_resumed(
    browser: Browser, relay_server: RelayServer, db: Any, make_table: Callable[..., str]
) -> None:
    t = make_table("id int primary key, org_id text")
    o = org()
    page = browser.new_context().new_page()
    serve_client(page)
    page.route(
        "**/__test__/token",
        lambda route: route.fulfill(
            status=200, content_type="text/plain", body=relay_server.token(org_id=o, ttl=3)
        ),
    )
    page.goto(client_url(relay_server.url, table=t, token_url="/__test__/token"))
    expect(page.locator("body")).to_have_attribute("data-status", "Live", timeout=10_000)
    db.execute(f"insert into {t} values (1, %s)", (o,))
    wait_rows(page, [1])
    for i in (2, 3):
        calls = page.evaluate("window.tokenCalls")
        # the relay sends TOKEN_EXPIRED and closes; relay.js asks for a new token and resumes
        page.wait_for_function(f"window.tokenCalls > {calls}", timeout=10_000)
        db.execute(f"insert into {t} values (%s, %s)", (i, o))
        wait_rows(page, list(range(1, i + 1)))
    assert page.evaluate("window.statuses") == ["SUBSCRIBED"]
    page.context.close()


def test_a_reload_resumes_from_the_tabs_last_position(
    browser: Browser, relay_server: RelayServer, db: Any, make_table: Callable[..., str]
) -> None:
    t = make_table("id int primary key, org_id text")
    o = org()
    page = browser.new_context().new_page()
    serve_client(page)
    url = client_url(relay_server.url, table=t, token=relay_server.token(org_id=o))
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-status", "Live", timeout=10_000)
    db.execute(f"insert into {t} values (1, %s)", (o,))
    wait_rows(page, [1])
    page.goto("about:blank")
    db.execute(f"insert into {t} values (2, %s)", (o,))  # written while the page was gone
    page.goto(url)
    db.execute(f"insert into {t} values (3, %s)", (o,))
    wait_rows(page, [2, 3])
    page.context.close()


def test_a_stream_held_back_by_a_buffering_proxy_times_out_to_long_poll(
    browser: Browser, relay_server: RelayServer, db: Any, make_table: Callable[..., str]
) -> None:
    t = make_table("id int primary key, org_id text")
    o = org()
    page = browser.new_context().new_page()
    serve_client(page)
    held: list[Route] = []

    # a proxy that buffers the response: the request is never answered
    def hold(route: Route) -> None:
        held.append(route)

    page.route(lambda url: "/v1/stream" in url, hold)
    opts = {"openTimeout": 1500, "streamRetry": 60_000, "pollWait": 2}
    page.goto(client_url(relay_server.url, table=t, token=relay_server.token(org_id=o), opts=opts))
    expect(page.locator("body")).to_have_attribute("data-transport", "long-poll", timeout=10_000)
    db.execute(f"insert into {t} values (1, %s)", (o,))
    wait_rows(page, [1])
    assert page.evaluate("window.statuses") == ["TIMED_OUT", "SUBSCRIBED"]
    assert held  # the stream was tried first
    page.context.close()


def test_a_refused_channel_errors_alone_and_resync_reaches_the_page(
    browser: Browser, relay_server: RelayServer, db: Any, make_table: Callable[..., str]
) -> None:
    t = make_table("id int primary key, org_id text")
    o = org()
    page = browser.new_context().new_page()
    serve_client(page)
    url = client_url(
        relay_server.url,
        table=t,
        token=relay_server.token(org_id=o),
        bad_topic="secret-topic",  # relay.can_subscribe denies it to this token: 403
        opts={"lastEventId": 10**15},  # ahead of the log (a restored database)
    )
    page.goto(url)
    page.wait_for_function("window.bad && window.bad.length > 0", timeout=10_000)
    status, message = page.evaluate("window.bad")[0]
    assert status == "CHANNEL_ERROR" and "secret-topic" in message
    expect(page.locator("body")).to_have_attribute("data-status", "Live", timeout=10_000)
    db.execute(f"insert into {t} values (1, %s)", (o,))
    wait_rows(page, [1])  # the other channel goes on
    kinds = [(d["status"], d.get("reason")) for d in page.evaluate("window.system")]
    assert ("RESYNC_REQUIRED", "ahead") in kinds
    page.context.close()


def require_ids(srv: RelayServer, db: Any, make_table: Callable[..., str]) -> None:
    """Skip unless the relay names subscriptions in "ids" (the server side of issue 16)."""
    t = make_table("id int primary key, org_id text")
    with srv.open([("sub", t)]) as c:
        db.execute(f"insert into {t} values (1, 'o')")
        event = c.next(10)
    if "ids" not in event.data:
        pytest.skip('this relay does not send "ids" yet: needs the server side of issue 16')


def test_channels_on_one_table_with_different_filters_get_their_own_rows(
    browser: Browser, relay_server: RelayServer, db: Any, make_table: Callable[..., str]
) -> None:
    require_ids(relay_server, db, make_table)  # relay.js routes by ids, never by filters
    t = make_table("id int primary key, org_id text, room int, kind text")
    o = org()
    page = browser.new_context().new_page()
    serve_client(page)
    page.goto(client_url(relay_server.url, table=t, token=relay_server.token(org_id=o)))
    expect(page.locator("body")).to_have_attribute("data-status", "Live", timeout=10_000)
    page.evaluate(
        """t => {
        window.got = { r1: [], r2: [], chat: [] };
        const on = (name, filter) => window.relay.channel(name)
          .on('postgres_changes', { event: 'INSERT', table: t, filter }, (m) => window.got[name].push(m.new.id))
          .subscribe();
        on('r1', 'room=eq.1'); on('r2', 'room=in.(2,3)'); on('chat', 'kind=eq.chat');
      }""",
        t,
    )
    page.wait_for_function(
        "window.relay.getChannels().every(c => c.state === 'SUBSCRIBED')", timeout=10_000
    )
    db.execute(
        f"insert into {t} values (1, %(o)s, 1, 'chat'), (2, %(o)s, 2, 'note'), "
        f"(3, %(o)s, 3, 'chat'), (4, %(o)s, 4, 'note')",
        {"o": o},
    )
    wait_rows(page, [1, 2, 3, 4])
    assert page.evaluate("window.got") == {"r1": [1], "r2": [2, 3], "chat": [1, 3]}
    page.context.close()


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802
        body = self.pages.get(self.path.split("?")[0])
        self.send_response(200 if body else 404)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write((body or "").encode())

    def log_message(self, *args: Any) -> None:
        pass


RAW = """<!doctype html><meta charset="utf-8"><body><script>
const q = new URLSearchParams(location.search), relay = q.get('relay');
window.events = []; window.errors = 0;
const es = new EventSource(relay + '/v1/stream?sub=' + q.get('table'), { withCredentials: true });
for (const t of ['system', 'postgres_changes']) es.addEventListener(t, (e) => window.events.push(e.data));
es.onerror = () => { window.errors++; window.state = es.readyState; };
fetch(relay + '/v1/changes?sub=' + q.get('table'), { credentials: 'include' })
  .then((r) => r.text()).then((t) => { window.fetched = t; }, (e) => { window.fetchError = String(e); });
</script>"""


def _serve_pages() -> tuple[ThreadingHTTPServer, str]:
    handler = type("Pages", (_Pages,), {"pages": {"/client.html": CLIENT, "/raw.html": RAW}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_cors_cookie_from_a_listed_origin_only(
    browser: Browser, dsn: str, db: Any, make_table: Callable[..., str]
) -> None:
    listed, listed_origin = _serve_pages()
    unlisted, unlisted_origin = _serve_pages()
    srv = start_relay(dsn, cors_origins=[listed_origin])
    t = make_table("id int primary key, org_id text")
    o = org()
    ctx = browser.new_context()
    # the relay_token cookie of the relay's host (same site, another port: another origin)
    ctx.add_cookies([{"name": "relay_token", "value": srv.token(org_id=o), "url": srv.url}])
    try:
        page = ctx.new_page()
        page.goto(f"{listed_origin}/client.html?{urlencode({'relay': srv.url, 'table': t})}")
        expect(page.locator("body")).to_have_attribute("data-status", "Live", timeout=10_000)
        db.execute(f"insert into {t} values (1, %s)", (o,))
        wait_rows(page, [1])
        assert page.evaluate("window.transports") == ["sse"]

        other = ctx.new_page()
        other.goto(f"{unlisted_origin}/raw.html?{urlencode({'relay': srv.url, 'table': t})}")
        other.wait_for_function("window.errors > 0 && window.fetchError", timeout=10_000)
        db.execute(f"insert into {t} values (2, %s)", (o,))
        wait_rows(page, [1, 2])  # by then the other page would have had it too
        assert other.evaluate("window.events") == []
        assert other.evaluate("window.state") == 2  # EventSource.CLOSED: it gave up for good
        assert other.evaluate("window.fetched") is None
    finally:
        ctx.close()
        srv.stop()
        listed.shutdown()
        unlisted.shutdown()


# ---- the demo ------------------------------------------------------------------------------


def test_demo_worker_drives_the_dashboard(
    browser: Browser, relay_server: RelayServer, dsn: str
) -> None:
    from relay.demo import run_worker

    loop = asyncio.new_event_loop()
    task = loop.create_task(run_worker(dsn, pace=0.2))

    def run() -> None:
        try:
            loop.run_until_complete(task)
        except BaseException:  # cancelled at the end of the test
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        token = relay_server.token(sub="demo-user", org_id="demo-org")
        page = dashboard(browser, relay_server, token)
        page.wait_for_function(
            "parseInt(document.querySelector('#card-count .done').textContent) >= 20",
            timeout=30_000,
        )
        expect(page.locator("#card-feed li")).to_have_count(5, timeout=10_000)
        expect(page.locator("#card-agents .agent.active").first).to_be_visible()
        expect(page.locator("#card-quality")).not_to_have_text("–")
        expect(page.locator(".task .badge.draft:visible").first).to_be_visible(timeout=20_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), animations="disabled")
        page.goto(f"{relay_server.url}/#jobs")
        expect(page.locator(".job .current b").first).to_be_visible(timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "jobs.png"), animations="disabled")
        page.goto(f"{relay_server.url}/#monitoring")
        expect(page.locator("#mon-streams tr").first).to_be_visible(timeout=5000)
        page.screenshot(path=str(ARTIFACTS / "monitoring.png"), animations="disabled")
        # the worker writes for other-org too; none of it reaches a demo-org viewer
        for table in ("mon-streams", "mon-jobs", "mon-tasks"):
            orgs = set(
                page.locator(
                    f"#{table} td:nth-child(2), #{table} td:nth-child(3)"
                ).all_inner_texts()
            )
            assert "other-org" not in orgs, (table, orgs)
        page.context.close()
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=10)
        # a transaction the cancelled worker left open would block later tests' DDL
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where application_name = 'relay-demo' and datname = current_database()"
            )
