"""`/metrics`: the relay's counters in Prometheus text format.

Invariant: nothing on the hot path touches prometheus-client; the hub,
listener and streams keep plain integer counters, and a collector reads
them at scrape time (one registry per relay, so several relays in one
process do not collide).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
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
