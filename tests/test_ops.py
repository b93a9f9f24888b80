"""Operations: /metrics moves with traffic; logs carry no tokens or row values."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest

from tests.conftest import RelayServer


def scrape(relay_server: RelayServer) -> dict[str, float]:
    text = httpx.get(f"{relay_server.url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_metrics_move_with_streams_and_changes(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    before = scrape(relay_server)
    with relay_server.open({"sub": t}) as c:
        db.execute(f"insert into {t} select g, 'o' from generate_series(1, 5) g")
        c.take(5)
        during = scrape(relay_server)
        assert during["relay_open_streams"] >= before["relay_open_streams"] + 1
        assert during[f'relay_subscriptions{{table="public.{t}"}}'] == 1
        assert during["relay_changes_read_total"] >= before["relay_changes_read_total"] + 5
        assert during["relay_deliveries_total"] >= before["relay_deliveries_total"] + 5
        assert during["relay_bytes_sent_total"] > before["relay_bytes_sent_total"]
        assert during["relay_listener_connected"] == 1
        assert "relay_log_lag_positions" in during and "relay_log_lag_seconds" in during
    key = 'relay_disconnects_total{reason="client"}'
    # the close is counted once the server notices the client went away
    for _ in range(200):
        after = scrape(relay_server)
        if after[key] >= before[key] + 1:
            break
        c.closed.wait(0.05)
    assert after[key] >= before[key] + 1
    for name in (
        "relay_listener_reconnects_total",
        "relay_replayed_events_total",
        "relay_prune_runs_total",
        "relay_streams_opened_total",
    ):
        assert name in after


def test_logs_never_carry_tokens_or_rows(
    relay_server: RelayServer, db: Any, make_table: Any, caplog: pytest.LogCaptureFixture
) -> None:
    t = make_table("id int primary key, org_id text, secret text")
    token = relay_server.service_token()
    with caplog.at_level(logging.DEBUG):
        with relay_server.open({"sub": t}, token) as c:
            db.execute(f"insert into {t} values (1, 'o', 'row-secret-value')")
            c.take(1)
        bad = httpx.get(relay_server.stream_url({"sub": t}, token + "x"), timeout=10)
        assert bad.status_code == 401
        c.closed.wait(5)
    # pytest attaches its capture handler even to uvicorn.access, which uvicorn (with
    # access_log=False, as relay runs it) leaves without handlers and unpropagated;
    # tests/test_process.py checks a real process's output for tokens. The test's own
    # HTTP client (httpx, httpcore) logs its request URLs: not the relay's lines.
    records = [r for r in caplog.records if r.name.startswith(("relay", "uvicorn.error"))]
    assert relay_server.server.config.access_log is False
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records)
    assert token not in text and token[:40] not in text
    assert "row-secret-value" not in text
    assert re.search(r"stream closed", text)
