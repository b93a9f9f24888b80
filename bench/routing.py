"""`python -m bench.routing`: the hub's CPU per delivery, routing once per group
against routing every receiver alone, in the same process.

Prints a table and writes bench/results/routing.json. The load is the issue's:
N per-user tokens of one org, each with the same filtered subscription to an
org-owned table, and changes written by another user of that org (so every
token receives every change). Measured: `Hub.publish` (route + queue) per
delivery, no sockets — the part of fan-out grouping can change; the socket
write that follows is measured by `python -m bench` (scenario 1). The
baseline is the same hub with its grouping bypassed: each receiver routed on
its own, as before grouping existed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from relay.catalog import Catalog, Table
from relay.changes import Change
from relay.columns import Column
from relay.hub import Hub, Subscriber
from relay.principal import Principal
from relay.subscriptions import parse_subscriptions

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = Table(
    schema="public",
    name="jobs",
    user_column="user_id",
    org_column="org_id",
    pk=("id",),
    excluded=frozenset(),
    columns={
        "id": Column("id", "int4", "N"),
        "org_id": Column("org_id", "text", "S"),
        "user_id": Column("user_id", "text", "S"),
        "status": Column("status", "text", "S"),
    },
)
CATALOG = Catalog(tables={("public", "jobs"): TABLE})


def _change(position: int) -> Change:
    row = {"id": position, "org_id": "acme", "user_id": "writer", "status": "running"}
    return Change(
        position=position,
        kind="I",
        schema="public",
        table="jobs",
        topic=None,
        event=None,
        user_id="writer",
        org_id="acme",
        old_user_id=None,
        old_org_id=None,
        new_text=orjson.dumps(row).decode(),
        old_text=None,
        commit_timestamp="2026-12-01T00:00:00.000Z",
    )


def _publish_alone(hub: Hub, changes: Sequence[Change], receivers: Sequence[Subscriber]) -> None:
    """The baseline: what publish did before grouping — route each receiver alone."""
    for ch in changes:
        for s in receivers:
            frame = s.route(ch)
            if frame is not None:
                s.push(frame)


async def _measure(receivers_n: int, changes_n: int, rounds: int) -> dict[str, Any]:
    hub = Hub()
    receivers = []
    for i in range(receivers_n):
        who = Principal(sub=f"user-{i}", orgs=frozenset({"acme"}), role=None, exp=None, claims={})
        subs = parse_subscriptions([("sub", "jobs:*:status=eq.running")], CATALOG, who)
        s = hub.subscribe(who, subs, max_events=10**9, max_bytes=10**15)
        s.replaying = False
        receivers.append(s)
    best = {"grouped": float("inf"), "alone": float("inf")}
    position = 0
    for _ in range(rounds):
        for name in ("alone", "grouped"):
            batch = [_change(position + k + 1) for k in range(changes_n)]
            position += changes_n
            started = time.perf_counter()
            if name == "grouped":
                hub.publish(batch)
            else:
                _publish_alone(hub, batch, receivers)
            elapsed = time.perf_counter() - started
            delivered = sum(len(s.outbox) for s in receivers)
            assert delivered == changes_n * receivers_n, delivered
            for s in receivers:
                s.outbox = []
                s.outbox_bytes = 0
            best[name] = min(best[name], elapsed / delivered)
    return {
        "receivers": receivers_n,
        "us_per_delivery_grouped": round(best["grouped"] * 1e6, 3),
        "us_per_delivery_alone": round(best["alone"] * 1e6, 3),
        "ratio": round(best["grouped"] / best["alone"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    args = parser.parse_args(argv)
    levels = (10, 100) if args.smoke else (100, 1000, 10_000)
    rounds = 3 if args.smoke else 15
    rows = [asyncio.run(_measure(n, 50, rounds)) for n in levels]
    print(f"{'receivers':>9} {'grouped us':>11} {'alone us':>9} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['receivers']:>9} {r['us_per_delivery_grouped']:>11.3f} "
            f"{r['us_per_delivery_alone']:>9.3f} {r['ratio']:>6.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "routing.json").write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
