"""`relay.client` routes by the relay's `ids`: each change names the subs it satisfies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.client import Change, RelayClient, _routed
from tests.conftest import RelayServer
from tests.test_browser import require_ids
from tests.test_client import take


def test_params_keep_each_select_after_its_own_sub() -> None:
    params, texts = RelayClient._params(
        ("jobs", ("jobs:INSERT", "id"), ("tasks", "id"), ("jobs", "id,name")),
        ["room"],
        {"jobs": "status"},
    )
    assert params == [
        ("sub", "jobs"),
        ("select", "status"),
        ("sub", "jobs:INSERT"),
        ("select", "id"),
        ("sub", "tasks"),
        ("select", "id"),
        ("sub", "jobs"),
        ("select", "id,name"),
        ("topic", "room"),
    ]
    assert texts == ("jobs", "jobs:INSERT", "tasks", "jobs")


def change(ids: Any, event: str = "postgres_changes") -> Change:
    return Change(id=5, event=event, data={"table": "jobs", "ids": ids})


def test_routed_names_the_subs_of_the_ids() -> None:
    subs = ("jobs:*:n=gt.10", "jobs:*:n=lt.10", "tasks")
    assert _routed(change([1]), subs).subscriptions == ("jobs:*:n=lt.10",)
    assert _routed(change([2, 0]), subs).subscriptions == ("tasks", "jobs:*:n=gt.10")
    assert _routed(change([0, 0]), subs).ids == (0, 0)
    assert _routed(change([0, 0]), subs).subscriptions == ("jobs:*:n=gt.10",)
    # garbage is routed nowhere, never raises
    for ids in (None, "0", [7], [-1], [True], ["0"], [1.0], {}):
        assert _routed(change(ids), subs).subscriptions == ()
    assert _routed(change([0], event="broadcast"), subs).subscriptions == ()


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_each_change_names_the_subscriptions_it_satisfies(
    relay_server: RelayServer, db: Any, make_table: Any, transport: str
) -> None:
    require_ids(relay_server, db, make_table)
    t = make_table("id int primary key, org_id text, n int, name text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'o', 5, 'a'), (2, 'o', 20, 'b'), (3, 'o', 10, 'c')")
    big, small = f"{t}:INSERT:n=gt.10", f"{t}:INSERT:n=lt.10"

    async def main() -> list[Change]:
        async with RelayClient(
            relay_server.url,
            token=relay_server.service_token(),
            last_id=start,
            transport=transport,  # type: ignore[arg-type]
        ) as rc:
            return await take(rc.subscribe((big, "name"), (small, "id"), f"{t}:DELETE", t), 3)

    got = asyncio.run(main())
    assert [(c.data["new"]["id"], c.subscriptions) for c in got] == [
        (1, (small, t)),
        (2, (big, t)),
        (3, (t,)),  # n=10: neither filter; the DELETE subscription never sees an INSERT
    ]
    # several subscriptions matched: one change, the union of their columns
    assert got[0].data["new"] == {"id": 1, "n": 5, "name": "a", "org_id": "o"}


def test_only_the_selected_columns_of_the_matching_subscription(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    require_ids(relay_server, db, make_table)
    t = make_table("id int primary key, org_id text, n int, name text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'o', 5, 'a'), (2, 'o', 20, 'b')")
    big, small = f"{t}:INSERT:n=gt.10", f"{t}:INSERT:n=lt.10"

    async def main() -> list[Change]:
        async with RelayClient(
            relay_server.url, token=relay_server.service_token(), last_id=start
        ) as rc:
            return await take(rc.subscribe((big, "name"), (small, "n")), 2)

    got = asyncio.run(main())
    assert [(c.data["new"], c.subscriptions) for c in got] == [
        ({"id": 1, "n": 5}, (small,)),
        ({"id": 2, "name": "b"}, (big,)),
    ]


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_each_select_reaches_the_relay_after_its_own_sub(
    relay_server: RelayServer, db: Any, make_table: Any, transport: str
) -> None:
    """httpx groups repeated query keys (sub=a&sub=b&select=x&select=y): not used for the query."""
    jobs = make_table("id int primary key, org_id text, status text", prefix="jobs")
    tasks = make_table("id int primary key, org_id text, status text", prefix="tasks")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {jobs} values (1, 'o', 'new')")
    db.execute(f"insert into {tasks} values (2, 'o', 'new')")

    async def main() -> list[Change]:
        async with RelayClient(
            relay_server.url,
            token=relay_server.service_token(),
            last_id=start,
            transport=transport,  # type: ignore[arg-type]
        ) as rc:
            return await take(rc.subscribe((jobs, "status"), (tasks, "id")), 2)

    got = asyncio.run(main())
    assert [(c.data["table"], c.data["new"]) for c in got] == [
        (jobs, {"id": 1, "status": "new"}),
        (tasks, {"id": 2}),
    ]
