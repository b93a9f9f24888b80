"""`POST /v1/broadcast`: typed payloads, service role only, same delivery as SQL."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import RelayServer

PROGRESS = {
    "stream_id": "s1",
    "completed": 25,
    "total": 50,
    "percentage": 50.0,
    "last_updated": "2026-11-27T10:00:00Z",
}


def post(relay_server: RelayServer, body: Any, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{relay_server.url}/v1/broadcast", json=body, headers=headers, timeout=10)


def test_broadcast_is_delivered_with_its_position(relay_server: RelayServer) -> None:
    with relay_server.open({"topic": "stream-progress:s1"}) as c:
        r = post(
            relay_server,
            {"topic": "stream-progress:s1", "event": "progress-update", "payload": PROGRESS},
            relay_server.service_token(),
        )
        assert r.status_code == 202, r.text
        (ev,) = c.take(1)
    assert ev.event == "broadcast" and ev.id == r.json()["position"]
    assert ev.data == {
        "topic": "stream-progress:s1",
        "event": "progress-update",
        "payload": PROGRESS,
    }


def test_untyped_events_take_any_object(relay_server: RelayServer) -> None:
    body = {"topic": "t", "event": "custom", "payload": {"anything": [1, {"x": None}]}}
    assert post(relay_server, body, relay_server.service_token()).status_code == 202


def test_auth_and_validation(relay_server: RelayServer) -> None:
    body = {"topic": "t", "event": "milestone", "payload": {"stream_id": "s"}}
    assert post(relay_server, body, None).status_code == 401
    user = relay_server.token(sub="u", org_id="A")
    assert post(relay_server, body, user).status_code == 403
    r = post(relay_server, body, relay_server.service_token())
    assert r.status_code == 422
    missing = {tuple(d["loc"]) for d in r.json()["details"]}
    assert ("title",) in missing and ("timestamp",) in missing
    bad = {**PROGRESS, "percentage": 300}
    r = post(
        relay_server,
        {"topic": "t", "event": "progress-update", "payload": bad},
        relay_server.service_token(),
    )
    assert r.status_code == 422 and r.json()["details"][0]["loc"] == ["percentage"]
    for garbage in (b"not json", b"[]", b'{"topic": "t"}'):
        r = httpx.post(
            f"{relay_server.url}/v1/broadcast",
            content=garbage,
            headers={
                "Authorization": f"Bearer {relay_server.service_token()}",
                "Content-Type": "application/json",
            },
            timeout=10,
        )
        assert r.status_code == 422, garbage
    r = post(
        relay_server,
        {"topic": "t", "event": "e", "payload": {"s": "nul\u0000byte"}},
        relay_server.service_token(),
    )
    assert r.status_code == 400


def test_schema_is_published(relay_server: RelayServer) -> None:
    r = httpx.get(f"{relay_server.url}/v1/broadcast/schema", timeout=10)
    events = r.json()["events"]
    assert set(events) == {"progress-update", "agent-activity", "milestone"}
    assert "activity_type" in events["agent-activity"]["properties"]
