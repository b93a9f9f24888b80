"""`/metrics`: the relay's counters in Prometheus text format.

Invariants: nothing on the hot path touches prometheus-client; the hub,
listener and streams keep plain integer counters, and a collector reads
them at scrape time (one registry per relay, so several relays in one
process do not collide). The figures are for operators: they are served
on `RELAY_METRICS_ADDRESS` when set, else to loopback clients only.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from relay.app import Relay


@dataclass
class StreamStats:
    """Counters the SSE streams and long-polls add to."""

    bytes_sent: int = 0
    replayed: int = 0
    opened: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)
    # log reads (one SQL statement each) by reader: listener, stream, longpoll, floors
    log_reads: Counter[str] = field(default_factory=Counter)


class RelayCollector(Collector):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        r = self.relay
        hub, lst, st = r.hub, r.listener, r.stats
        g = GaugeMetricFamily("relay_open_streams", "SSE streams open now")
        g.add_metric([], len(hub.subscribers))
        yield g
        g = GaugeMetricFamily(
            "relay_subscriptions", "open streams subscribed, by table", labels=["table"]
        )
        for (schema, table), count in hub.stream_counts().items():
            g.add_metric([f"{schema}.{table}"], count)
        yield g
        counters = (
            ("relay_streams_opened", "SSE streams opened", st.opened),
            ("relay_changes_read", "changes read from the log", lst.changes_read),
            ("relay_deliveries", "events queued to streams (live)", hub.delivered),
            ("relay_bytes_sent", "bytes written to SSE streams", st.bytes_sent),
            ("relay_listener_reconnects", "listener reconnections", lst.reconnects),
            ("relay_replayed_events", "events sent from the log on resume", st.replayed),
            ("relay_prune_runs", "pruning steps run by this relay", r.prune_runs),
        )
        for name, help_, value in counters:
            c = CounterMetricFamily(name, help_)
            c.add_metric([], value)
            yield c
        c = CounterMetricFamily("relay_disconnects", "streams ended, by reason", labels=["reason"])
        for reason in ("client", "TOO_SLOW", "TOKEN_EXPIRED", "SHUTDOWN", "error"):
            c.add_metric([reason], st.disconnects.get(reason, 0))
        yield c
        c = CounterMetricFamily(
            "relay_log_reads", "pages read from the log, by reader", labels=["reader"]
        )
        for reader in ("listener", "stream", "longpoll", "floors"):
            c.add_metric([reader], st.log_reads.get(reader, 0))
        yield c
        head = r.last_head
        read = lst.position or 0
        g = GaugeMetricFamily(
            "relay_log_lag_positions", "newest position in the database minus newest read"
        )
        g.add_metric([], max(0, head - read))
        yield g
        g = GaugeMetricFamily(
            "relay_log_lag_seconds", "seconds since the listener was last caught up"
        )
        g.add_metric([], 0.0 if head <= read else time.monotonic() - lst.caught_up_at)
        yield g
        g = GaugeMetricFamily("relay_listener_connected", "1 while the listener is connected")
        g.add_metric([], 1 if lst.connected else 0)
        yield g


def registry_for(relay: Relay) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RelayCollector(relay))
    return reg


async def serve_metrics(
    render: Callable[[], Awaitable[bytes]], host: str, port: int, header_timeout: float = 5.0
) -> asyncio.AbstractServer:
    """A minimal HTTP listener for operators: `GET /metrics` only, one request per connection.

    Kept apart from the public port so that which tables have subscribers and how
    fast the log moves are visible to the scraper, not to anyone who can reach
    the relay. A client that does not send its request head in `header_timeout`
    seconds is dropped.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(header_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].split(b" ")
            if len(line) == 3 and line[0] in (b"GET", b"HEAD") and line[1] == b"/metrics":
                body = await render()
                status, ctype = b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            if line[0] == b"HEAD":
                body_out = b""
            else:
                body_out = body
            writer.write(
                b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, ctype, len(body)) + body_out
            )
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=16384)


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9090` for IPv6) -> (host, port); ValueError if malformed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
