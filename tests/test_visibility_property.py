"""Property: whatever rows, owners, moves and filters, no subscriber ever receives
a row version it does not own (and an owner of both versions always gets UPDATE).

The hub's routing is the one implementation behind both transports (/v1/stream
and /v1/changes), so it is exercised directly here, without a database.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.changes import Change
from relay.hub import Hub
from relay.principal import SERVICE_ROLE, Principal
from relay.subscriptions import parse_subscriptions
from tests.test_hub import CATALOG

ORGS = ["A", "B", "C"]
USERS = ["u1", "u2", "u3"]
FILTERS = [
    "",
    "status=eq.x",
    "status=neq.x",
    "org_id=eq.B",
    "user_id=is.null",
    "id=gt.3",
    "org_id=in.(A,C)",
    "status=like.%y%",
]

owner = st.tuples(st.sampled_from(USERS + [None]), st.sampled_from(ORGS + [None]))
row_state = st.tuples(owner, st.sampled_from(["x", "y", "xy"]))


@st.composite
def changes(draw: Any) -> list[Change]:
    out = []
    for pos in range(1, draw(st.integers(1, 25)) + 1):
        kind = draw(st.sampled_from("IUD"))
        (nu, no), ns = draw(row_state)
        (ou, oo), os_ = draw(row_state)
        new = {"id": pos, "user_id": nu, "org_id": no, "status": ns}
        old = {"id": pos, "user_id": ou, "org_id": oo, "status": os_}
        if kind == "I":
            out.append(
                Change(
                    pos,
                    "I",
                    "public",
                    "jobs",
                    None,
                    None,
                    nu,
                    no,
                    None,
                    None,
                    orjson.dumps(new).decode(),
                    None,
                    "t",
                )
            )
        elif kind == "U":
            out.append(
                Change(
                    pos,
                    "U",
                    "public",
                    "jobs",
                    None,
                    None,
                    nu,
                    no,
                    ou,
                    oo,
                    orjson.dumps(new).decode(),
                    orjson.dumps(old).decode(),
                    "t",
                )
            )
        else:
            out.append(
                Change(
                    pos,
                    "D",
                    "public",
                    "jobs",
                    None,
                    None,
                    ou,
                    oo,
                    None,
                    None,
                    None,
                    orjson.dumps(old).decode(),
                    "t",
                )
            )
    return out


principals = st.builds(
    lambda sub, orgs, service: Principal(
        sub=sub,
        orgs=frozenset(orgs),
        role=SERVICE_ROLE if service else "authenticated",
        exp=None,
        claims={},
    ),
    st.sampled_from(USERS + [None]),
    st.sets(st.sampled_from(ORGS), max_size=2),
    st.sampled_from([False, False, False, True]),  # mostly tenants, sometimes service_role
)
subscription = st.tuples(
    st.sampled_from(["*", "INSERT", "UPDATE", "DELETE"]), st.sampled_from(FILTERS)
)


def owns(p: Principal, user: Any, org: Any) -> bool:
    return (
        p.role == SERVICE_ROLE
        or (user is not None and user == p.sub)
        or (org is not None and org in p.orgs)
    )


@settings(max_examples=300, deadline=None)
@given(
    changes(),
    st.lists(
        st.tuples(principals, st.lists(subscription, min_size=1, max_size=3)),
        min_size=1,
        max_size=6,
    ),
)
def test_no_subscriber_receives_a_row_version_it_does_not_own(
    chs: list[Change], subscribers: list[tuple[Principal, list[tuple[str, str]]]]
) -> None:
    async def run() -> None:
        hub = Hub()
        subs = []
        for p, specs in subscribers:
            params = [("sub", f"jobs:{ev}:{flt}" if flt else f"jobs:{ev}") for ev, flt in specs]
            s = hub.subscribe(p, parse_subscriptions(params, CATALOG, p), max_events=10_000)
            s.replaying = False
            subs.append((p, specs, s))
        hub.publish(chs)
        by_pos = {c.position: c for c in chs}
        for p, specs, s in subs:
            for frame in s.outbox:
                lines = dict(line.split(": ", 1) for line in frame.decode().strip().split("\n"))
                ch = by_pos[int(lines["id"])]
                data = orjson.loads(lines["data"])
                new_owner = (ch.user_id, ch.org_id)
                old_owner = (ch.old_user_id, ch.old_org_id) if ch.kind == "U" else new_owner
                if data["new"]:
                    assert ch.kind != "D" and owns(p, *new_owner), (p, data)
                if data["old"]:
                    assert ch.kind != "I" and owns(p, *old_owner), (p, data)
                    if not owns(p, *new_owner) and ch.kind == "U":
                        assert set(data["old"]) == {"id"}  # moved away: key only
            delivered = {int(f.split(b"\n", 1)[0][4:]) for f in s.outbox}
            for ch in chs:  # completeness for unfiltered * subscriptions
                if (
                    ("*", "") in specs
                    and ch.kind == "U"
                    and owns(p, ch.user_id, ch.org_id)
                    and owns(p, ch.old_user_id, ch.old_org_id)
                ):
                    assert ch.position in delivered

    asyncio.run(run())
