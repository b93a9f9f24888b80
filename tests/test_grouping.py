"""Routing once per group: the hub decides once for receivers with identical routing
inputs, and every receiver still gets exactly what routing it alone would give."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.changes import Change
from relay.hub import Hub, Subscriber
from tests.test_hub import principal, subs

USERS = ["u1", "u2", "u3", None]
ORGS = ["A", "B"]
SUBSETS = [
    [("sub", "jobs")],
    [("sub", "jobs:*:status=eq.new")],
    [("sub", "jobs:UPDATE"), ("sub", "jobs:*:or=(status.eq.done,id.gt.3)"), ("select", "status")],
    [("sub", "jobs:INSERT"), ("select", "id"), ("sub", "jobs")],
]


def row_change(
    pos: int,
    kind: str,
    user: str | None,
    org: str | None,
    old_user: str | None,
    old_org: str | None,
) -> Change:
    new = orjson.dumps({"id": pos, "org_id": org, "user_id": user, "status": "new"}).decode()
    old = orjson.dumps({"id": pos, "org_id": old_org, "user_id": old_user, "status": "done"})
    return Change(
        position=pos,
        kind=kind,
        schema="public",
        table="jobs",
        topic=None,
        event=None,
        user_id=user if kind != "D" else old_user,
        org_id=org if kind != "D" else old_org,
        old_user_id=old_user if kind == "U" else None,
        old_org_id=old_org if kind == "U" else None,
        new_text=new if kind != "D" else None,
        old_text=old.decode() if kind in "UD" else None,
        commit_timestamp="2026-12-01T00:00:00.000Z",
    )


receivers = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.sets(st.sampled_from(ORGS)),
        st.booleans(),
        st.integers(0, len(SUBSETS) - 1),
    ),
    min_size=1,
    max_size=12,
)
changes = st.lists(
    st.tuples(
        st.sampled_from("IUD"),
        st.sampled_from(USERS),
        st.sampled_from([*ORGS, None]),
        st.sampled_from(USERS),
        st.sampled_from([*ORGS, None]),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(receivers, changes)
def test_grouped_delivery_equals_routing_each_receiver_alone(
    who: list[tuple[str | None, set[str], bool, int]],
    what: list[tuple[str, str | None, str | None, str | None, str | None]],
) -> None:
    async def main() -> None:
        hub = Hub()
        subscribed: list[Subscriber] = []
        for user, orgs, service, k in who:
            p = principal(user, *sorted(orgs), role="service_role" if service else None)
            s = hub.subscribe(p, subs(*SUBSETS[k], who=p))  # type: ignore[arg-type]
            subscribed.append(s)
        batch = [row_change(i + 1, *w) for i, w in enumerate(what)]
        hub.publish(batch)
        for s in subscribed:
            alone = [f for ch in batch if (f := s.route(ch)) is not None]
            assert s.outbox == alone, (s.principal, s.subs.describe())

    asyncio.run(main())


def test_a_group_shares_one_decision_and_one_frame() -> None:
    async def main() -> None:
        hub = Hub()
        members = [principal(f"user-{i}", "A") for i in range(50)]
        ss = [hub.subscribe(p, subs(("sub", "jobs"), who=p)) for p in members]  # type: ignore[arg-type]
        calls = 0
        original = Subscriber.route

        def counting(self: Subscriber, change: Any) -> bytes | None:
            nonlocal calls
            calls += 1
            return original(self, change)

        Subscriber.route = counting  # type: ignore[method-assign]
        try:
            hub.publish([row_change(1, "I", "writer", "A", None, None)])
            assert calls == 1
            assert all(s.outbox == [ss[0].outbox[0]] for s in ss)
            assert all(s.outbox[0] is ss[0].outbox[0] for s in ss)
            # the user the row names is decided alone (it owns by user column too)
            calls = 0
            hub.publish([row_change(2, "I", "user-7", "A", None, None)])
            assert calls == 2  # user-7 alone, then once for the rest of the group
            assert all(len(s.outbox) == 2 for s in ss)
            calls = 0
            hub.publish([row_change(3, "I", "user-7", "B", None, None)])
            assert calls == 1
            assert [len(s.outbox) for s in ss] == [2] * 7 + [3] + [2] * 42
        finally:
            Subscriber.route = original  # type: ignore[method-assign]

    asyncio.run(main())


def test_routing_bench_runs_and_both_paths_deliver_everything() -> None:
    from bench.routing import _measure

    row = asyncio.run(_measure(20, 5, 1))  # asserts every receiver got every change
    assert row["receivers"] == 20 and row["us_per_delivery_grouped"] > 0
