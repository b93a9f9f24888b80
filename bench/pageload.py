"""Events the relay sends while the dashboard loads: before and after issue 16.

    python -m bench.pageload [--loads 10] [--positions 3500] [--before 7e2e99e]

The demo worker writes a history of `--positions` log positions (two orgs:
streams filling up with progress broadcasts, jobs, enrichment, tasks), then
stops, so nothing is written while pages load. The relay runs as a
subprocess; Chromium (Debian's /usr/bin/chromium, driven by Playwright)
loads the dashboard `--loads` times as a first visit (a fresh browser
context: no tab snapshot), once with the dashboard and relay.js of commit
`--before` (served in place of the current files by the browser's router)
and once with the current ones. Per page load it counts, from the relay's
own counters and the page's responses:
- streams opened (`relay_streams_opened_total`);
- events the streams replayed from the log (`relay_replayed_events_total`);
- events in `/v1/changes` answers (the catch-up of history over JSON);
and their sum, the events the server sent to show the page. A load ends
once the page is Live and the relay has opened no stream for 1.5 s.
Prints a table and writes JSON to bench/results/pageload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench import servers
from relay.auth import make_token
from relay.dsn import with_dbname
from relay.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = "/usr/bin/chromium"
QUIET_SECONDS = 1.5


@contextlib.contextmanager
def _database() -> Iterator[str]:
    """A fresh database with the demo tables (RELAY_BENCH_DATABASE_URL, else embedded)."""
    import os

    url = os.environ.get("RELAY_BENCH_DATABASE_URL")
    with contextlib.ExitStack() as stack:
        if url:
            admin = url
        else:
            from relay.embedded import start_embedded

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-pageload-"))
            admin, server = start_embedded(Path(tmp))
            stack.callback(server.cleanup)
        name = f"relay_pageload_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"create database {name}")
        try:
            dsn = with_dbname(admin, name)
            migrate(dsn, demo=True)
            yield dsn
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"drop database if exists {name} with (force)")


def _head(dsn: str) -> int:
    """Changes in the log (positions are sparse since 002: a block per transaction)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select count(*) from relay.changes").fetchone()
        return int(row[0] or 0) if row else 0


def write_history(dsn: str, positions: int) -> int:
    """Run the demo worker (fast) until the log holds `positions` changes."""
    from relay.demo import run_worker

    async def main() -> None:
        worker = asyncio.create_task(run_worker(dsn, pace=0.02))
        try:
            while await asyncio.to_thread(_head, dsn) < positions:  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # polling the database: there is no event to wait on
        finally:
            worker.cancel()
            with contextlib.suppress(BaseException):
                await worker

    asyncio.run(main())
    with psycopg.connect(dsn, autocommit=True) as conn:  # what the cancelled worker left open
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where application_name = 'relay-demo' and datname = current_database()"
        )
    return _head(dsn)


def _metric(port: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return int(float(line.split()[1]))
    raise RuntimeError(f"no {name} in /metrics")


def _old_file(rev: str, path: str) -> bytes:
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"],
        cwd=servers.REPO,
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout


def _serve(body: bytes) -> Any:
    def fulfill(route: Any) -> None:
        route.fulfill(status=200, content_type="text/javascript", body=body)

    return fulfill


def _count_into(counts: list[int], rows: list[int]) -> Any:
    """A response handler adding the events of each /v1/changes answer (`counts`) and
    the rows of each /v1/snapshot answer (`rows`)."""

    def on_response(response: Any) -> None:
        if response.status != 200:
            return
        if "/v1/changes" in response.url:
            with contextlib.suppress(Exception):
                counts.append(len(response.json().get("events", [])))
        elif "/v1/snapshot" in response.url:
            with contextlib.suppress(Exception):
                rows.append(len(response.json().get("rows", [])))

    return on_response


def measure(port: int, token: str, loads: int, before: str | None) -> dict[str, Any]:
    """Load the dashboard `loads` times; with `before`, with that commit's client files."""
    from playwright.sync_api import sync_playwright

    old = (
        {
            "/relay.js": _old_file(before, "relay/static/relay.js"),
            "/static/dashboard.js": _old_file(before, "relay/static/dashboard.js"),
        }
        if before
        else {}
    )
    base = f"http://127.0.0.1:{port}"
    per_load: list[dict[str, int]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            for _ in range(loads):
                context = browser.new_context(viewport={"width": 1360, "height": 900})
                page = context.new_page()
                for path, body in old.items():
                    page.route(f"{base}{path}", _serve(body))
                json_events: list[int] = []
                snapshot_rows: list[int] = []
                page.on("response", _count_into(json_events, snapshot_rows))
                opened = _metric(port, "relay_streams_opened_total")
                replayed = _metric(port, "relay_replayed_events_total")
                page.goto(f"{base}/?access_token={token}")
                page.wait_for_selector("#conn[data-status='Live']", timeout=30_000)
                last, quiet_since = -1, time.monotonic()
                while time.monotonic() - quiet_since < QUIET_SECONDS:
                    now = _metric(port, "relay_streams_opened_total")
                    if now != last:
                        last, quiet_since = now, time.monotonic()
                    time.sleep(0.1)
                load = {
                    "streams_opened": _metric(port, "relay_streams_opened_total") - opened,
                    "stream_replayed_events": _metric(port, "relay_replayed_events_total")
                    - replayed,
                    "json_events": sum(json_events),
                    "snapshot_rows": sum(snapshot_rows),
                }
                load["events_sent"] = (
                    load["stream_replayed_events"] + load["json_events"] + load["snapshot_rows"]
                )
                per_load.append(load)
                context.close()
        finally:
            browser.close()
    keys = (
        "streams_opened",
        "stream_replayed_events",
        "json_events",
        "snapshot_rows",
        "events_sent",
    )
    return {
        "loads": per_load,
        "mean": {k: sum(x[k] for x in per_load) / len(per_load) for k in keys},
        "total": {k: sum(x[k] for x in per_load) for k in keys},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pageload", description=__doc__)
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--positions", type=int, default=3500, help="changes in the log")
    parser.add_argument("--before", default="7e2e99e", help="commit of the 'before' client")
    args = parser.parse_args(argv)
    with _database() as dsn:
        head = write_history(dsn, args.positions)
        token = make_token(servers.SECRET, sub="demo-user", org_id="demo-org", ttl=3600)
        results: dict[str, Any] = {"changes": head, "loads": args.loads, "before": args.before}
        with servers.relay(dsn) as relay:
            results["before_issue_16"] = measure(relay.port, token, args.loads, args.before)
            results["after"] = measure(relay.port, token, args.loads, None)
    print(f"dashboard page loads (first visits), log of {head} changes, demo-org viewer")
    header = ("client", "streams/load", "SSE replayed", "JSON events", "snapshot rows", "sent/load")
    print(
        f"{header[0]:<18}{header[1]:>14}{header[2]:>14}{header[3]:>13}{header[4]:>15}"
        f"{header[5]:>11}"
    )
    for label, key in ((f"before ({args.before})", "before_issue_16"), ("after", "after")):
        m = results[key]["mean"]
        print(
            f"{label:<18}{m['streams_opened']:>14.1f}{m['stream_replayed_events']:>14.0f}"
            f"{m['json_events']:>13.0f}{m['snapshot_rows']:>15.0f}{m['events_sent']:>11.0f}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pageload.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
