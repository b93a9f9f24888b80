"""The bench's own pieces, without servers: the load client's SSE parser and the report.

No timing assertions: `python -m bench --smoke` (CI) runs the whole suite.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from bench import report
from bench.loadclient import _Group, _Stream
from bench.scenarios import Config


def _chunked(body: bytes, pieces: int) -> bytes:
    """`body` as an HTTP/1.1 chunked stream of `pieces` chunks, then the end chunk."""
    step = max(1, len(body) // pieces)
    out = b""
    for i in range(0, len(body), step):
        part = body[i : i + step]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


def _feed(raw: bytes, split: int) -> tuple[_Group, _Stream]:
    async def run() -> tuple[_Group, _Stream]:
        g = _Group(latency=True)
        s = _Stream(g, b"", slow=False)
        for i in range(0, len(raw), split):
            s.data_received(raw[i : i + split])
        return g, s

    return asyncio.run(run())


def _ts(seconds_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, UTC).isoformat()


def test_parser_counts_relay_frames_at_any_split() -> None:
    ts = _ts(0.5)
    body = b'event: system\ndata: {"status":"SUBSCRIBED"}\n\n'
    for i in range(3):
        body += (
            b"id: %d\nevent: postgres_changes\ndata: " % (i + 1)
            + b'{"new":{"id": 1, "ts": "'
            + ts.encode()
            + b'"},"old":{}}\n\n'
        )
    body += b": keep-alive\n\n"
    body += b'event: system\ndata: {"status":"TOO_SLOW"}\n\n'
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    for split in (1, 7, 64, 10_000):
        g, s = _feed(head + _chunked(body, 5), split)
        assert s.hello.result() == 200
        assert g.frames == 3
        assert g.keepalives == 1
        assert g.too_slow == 1
        assert s.ended and g.server_closed == 1
        assert len(g.lat) == 3 and all(0.4 < x < 5 for x in g.lat)


def test_parser_reads_sse_starlette_framing() -> None:
    ts = _ts(0.1)
    body = b'event: system\r\ndata: {"status": "SUBSCRIBED"}\r\n\r\n'
    body += (
        b'event: postgres_changes\r\ndata: {"record":{"id":1,"ts":"' + ts.encode() + b'"}}\r\n\r\n'
    )
    body += b": ping - 2026-01-01 00:00:00\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    g, s = _feed(head + _chunked(body, 3), 5)
    assert s.hello.result() == 200
    assert g.frames == 1 and g.keepalives == 1 and len(g.lat) == 1


def test_parser_reports_http_errors() -> None:
    g, s = _feed(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}", 100)
    assert s.hello.result() == 401 and g.errors == 1


def test_report_renders_partial_results() -> None:
    steady: dict[str, Any] = {
        "deliveries_per_s": 1000,
        "p50_ms": 2.0,
        "p95_ms": 3.0,
        "p99_ms": 4.0,
        "cpu_us_per_delivery": 10.0,
    }
    results: dict[str, Any] = {
        "meta": {"smoke": True, "cores": 2},
        "scenarios": {
            "fan-out": {
                "subscribers": 20,
                "rate": 50.0,
                "relay": {
                    "steady": steady,
                    "ramp": [],
                    "max_deliveries_per_s": 60_000,
                    "max_at_rate": 200,
                },
                "baseline": {
                    "steady": steady,
                    "ramp": [],
                    "max_deliveries_per_s": 10_000,
                    "max_at_rate": 50,
                },
            },
            "catch-up": {"error": "RuntimeError: boom"},
        },
    }
    rows = report.rows(results)
    text = report.text_table(rows)
    assert "PASS" in text and "6.00x" in text and "ERROR" in text
    assert report.markdown_table(rows).startswith("| scenario |")


def test_smoke_sizes_are_smaller() -> None:
    tiny, full = Config.tiny(), Config.full()
    assert tiny.smoke and not full.smoke
    assert tiny.fan_subs < full.fan_subs and tiny.conn_n < full.conn_n
    assert tiny.catchup_rows < full.catchup_rows
