"""The dashboard on a phone (390 px wide) and its milestone toasts, in Chromium.

Each test waits for what the page shows (with a timeout), never sleeps to synchronise.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import SECRET, RelayServer, start_relay
from tests.test_browser import ARTIFACTS, add_items, browser, new_stream, org  # noqa: F401

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

PHONE = {"width": 390, "height": 844}

# Every element of these kinds that is shown must lie inside the viewport and inside every
# ancestor that clips (overflow hidden/clip); an ancestor that scrolls (auto/scroll) is fine.
CUT_OFF_JS = """
(selectors) => {
  const bad = [];
  const W = document.documentElement.clientWidth;
  for (const e of document.querySelectorAll(selectors)) {
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;  // not shown
    if (e.closest('[hidden]')) continue;
    const label = `${e.tagName.toLowerCase()}.${e.className} "${e.textContent.trim().slice(0, 30)}"`;
    if (r.left < -0.5 || r.right > W + 0.5) { bad.push(`${label}: outside the viewport (${r.left}..${r.right} of ${W})`); continue; }
    if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible') {
      bad.push(`${label}: its own content is cut (${e.scrollWidth} > ${e.clientWidth})`); continue;
    }
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o !== 'hidden' && o !== 'clip') continue;
      const ar = a.getBoundingClientRect();
      if (r.left < ar.left - 0.5 || r.right > ar.right + 0.5) { bad.push(`${label}: cut by ${a.tagName.toLowerCase()}.${a.className}`); break; }
    }
  }
  return bad;
}
"""
CHECKED = (
    ".badge, #conn, #who, .tabs a, .tick, .agent, .stage, .enrich-chip, .toast, .pct, .big-count"
)


def assert_fits(page: Page, where: str) -> None:
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"{where}: the page scrolls sideways ({widths})"
    bad = page.evaluate(CUT_OFF_JS, CHECKED)
    assert not bad, f"{where}: " + "; ".join(bad)


def test_dashboard_fits_a_390px_phone(
    browser: Browser,  # noqa: F811
    relay_server: RelayServer,
    db: Any,
) -> None:
    o = org()
    token = relay_server.token(sub="u-phone", org_id=o)
    page = browser.new_context(viewport=PHONE).new_page()
    page.goto(f"{relay_server.url}/?access_token={token}")
    expect(page.locator("#conn")).to_have_attribute("data-status", "Live", timeout=10_000)
    name = "Climate-tech startups in the Nordics, Baltics and everywhere in between " + "x" * 30
    sid = new_stream(db, o, name)
    add_items(db, sid, o, 30)
    db.execute(
        "insert into agent_tasks (org_id, agent_id, contact_id, status, draft) values "
        "(%s, 'writer', 'Northwind Analytics Incorporated International', 'in_progress', null), "
        "(%s, 'writer', 'Initech', 'completed', 'Hi Initech team, a long draft ' || repeat('x', 300))",
        (o, o),
    )
    job = db.execute(
        "insert into jobs (org_id, user_id, status, started_at, progress_percentage, metadata) "
        "values (%s, 'u-phone', 'running', now(), 42, jsonb_build_object('name', %s::text, "
        "'current_directory', 'Product Hunt')) returning id",
        (o, "Directory listings · " + name),
    ).fetchone()[0]
    db.execute(
        "insert into directory_submissions (job_id, org_id, directory_name, status, error_log) "
        "values (%s, %s, 'AlternativeTo', 'failed', 'rate limited by the data provider, twice')",
        (job, o),
    )
    db.execute(
        "insert into bulk_enrichment_jobs (org_id, user_id, status, progress) values "
        "(%s, 'u-phone', 'running', '{\"total\": 40, \"completed\": 12}')",
        (o,),
    )
    db.execute(
        "select relay.broadcast(%s, 'milestone', jsonb_build_object('stream_id', %s::text, "
        "'type', '50%%', 'title', 'Halfway there', 'description', '25 of 50 companies found', "
        "'timestamp', now()), %s)",
        (f"stream-progress:{sid}", sid, o),
    )
    expect(page.locator("#card-count")).to_have_text("30 / 50", timeout=5000)
    expect(page.locator(".task .badge.draft:visible")).to_have_count(1, timeout=5000)
    expect(page.locator("[data-testid=enrichment-chip]")).to_be_visible(timeout=5000)
    expect(page.locator("[data-testid=toast]")).to_be_visible(timeout=5000)
    assert_fits(page, "overview")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone-overview.png"), full_page=True)
    page.goto(f"{relay_server.url}/#jobs")
    expect(page.locator(".job .current b")).to_have_text("Product Hunt", timeout=5000)
    expect(page.locator(".submissions .badge.failed")).to_be_visible()
    assert_fits(page, "jobs")
    page.screenshot(path=str(ARTIFACTS / "phone-jobs.png"), full_page=True)
    page.goto(f"{relay_server.url}/#monitoring")
    expect(page.locator("#mon-streams tr").first).to_be_visible(timeout=5000)
    assert_fits(page, "monitoring")
    page.screenshot(path=str(ARTIFACTS / "phone-monitoring.png"), full_page=True)
    page.context.close()


@pytest.fixture
def demo_relay(dsn: str) -> Iterator[RelayServer]:
    """A relay that lists the demo's viewers (Dana, Omar, the service role) on /demo/tokens."""
    srv = start_relay(dsn)
    srv.relay.demo_secret = SECRET
    try:
        yield srv
    finally:
        srv.stop()


def milestone(db: Any, sid: str, title: str, kind: str = "25%") -> None:
    db.execute(
        "select relay.broadcast(%s, 'milestone', jsonb_build_object('stream_id', %s::text, "
        "'type', %s::text, 'title', %s::text, 'description', 'of the target', "
        "'timestamp', now()), 'demo-org')",
        (f"stream-progress:{sid}", sid, kind, title),
    )


def test_toasts_are_capped_dismissed_and_not_repeated_for_another_viewer(
    browser: Browser,  # noqa: F811
    demo_relay: RelayServer,
    db: Any,
) -> None:
    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.goto(demo_relay.url)
    expect(page.locator("#who option")).to_have_count(3, timeout=10_000)
    expect(page.locator("#who option:checked")).to_have_text("Dana (demo-org)")
    expect(page.locator("#conn")).to_have_attribute("data-status", "Live", timeout=10_000)
    name = f"Toasts {uuid.uuid4().hex[:6]}"
    sid = new_stream(db, "demo-org", name)
    expect(page.locator("#card-name")).to_have_text(name, timeout=3000)
    toasts = page.locator("[data-testid=toast]:not(.leaving)")
    # four milestones at once: at most two are shown, the newest ones
    with db.transaction():
        for i, kind in enumerate(("25%", "50%", "75%", "100%")):
            milestone(db, sid, f"Milestone {i + 1}", kind)
    expect(page.locator("[data-testid=toast]", has_text="Milestone 4")).to_be_visible(timeout=3000)
    expect(toasts).to_have_count(2)
    expect(page.locator("[data-testid=toast]", has_text="Milestone 1")).to_have_count(0)
    # ...and they leave by themselves
    expect(page.locator("[data-testid=toast]")).to_have_count(0, timeout=8000)

    # a milestone shown to Dana is not shown again when switching to the service role,
    # whose page replays the same broadcast
    milestone(db, sid, "Seen once", "target_reached")
    expect(page.locator("[data-testid=toast]", has_text="Seen once")).to_be_visible(timeout=3000)
    page.select_option("#who", label="service role (sees all)")
    # a broadcast on the same topic after the milestone: once the page shows it, the
    # service role's page has handled the milestone too
    db.execute(
        "select relay.broadcast(%s, 'agent-activity', jsonb_build_object("
        "'id', 'sentinel', 'stream_id', %s::text, 'agent_id', 'scout', 'agent_name', 'Scout', "
        "'agent_type', 'discovery', 'activity_type', 'progress', 'message', 'sentinel', "
        "'timestamp', now()), 'demo-org')",
        (f"stream-progress:{sid}", sid),
    )
    expect(page.locator("#card-name")).to_have_text(name, timeout=5000)
    expect(page.locator("#card-feed li", has_text="sentinel")).to_be_visible(timeout=5000)
    assert page.locator("[data-testid=toast]", has_text="Seen once").count() <= 1
    page.context.close()
