"""Bad input gets a clear 4xx JSON error (or is handled), never a 500 or a hang."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest

from tests.conftest import SECRET, RelayServer
from tests.sse import SSEClient


def get(relay_server: RelayServer, query: str, **kw: Any) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(f"{relay_server.url}/v1/stream?{query}", **kw)


def service(relay_server: RelayServer) -> str:
    return "access_token=" + relay_server.service_token()


@pytest.fixture
def table(make_table: Any) -> str:
    return str(make_table("id int primary key, org_id text, n int, status text"))


@pytest.mark.parametrize(
    "query, code, needle",
    [
        ("", "no_subscription", "sub="),
        ("sub=", "invalid_sub", "empty"),
        ("topic=", "invalid_topic", "empty"),
        ("sub=no_such_table", "unknown_table", "no_such_table"),
        ("sub=relay.changes", "unknown_table", "relay.changes"),
        ("sub={t}:BOGUS", "invalid_event", "BOGUS"),
        ("sub={t}:*:nope=eq.1", "invalid_filter", "nope"),
        ("sub={t}:*:n=gt.abc", "invalid_filter", "abc"),
        ("sub={t}:*:n=like.1%25", "invalid_filter", "like"),
        ("sub={t}:*:status=match.%22(%22", "invalid_filter", "regular expression"),
        ("sub={t}:*:n=eq", "invalid_filter", ""),
        ("sub={t}:*:n=zz.1", "invalid_filter", "zz"),
        ("sub={t}:*:status=eq.%22unclosed", "invalid_filter", ""),
        ("sub={t}&select=nope", "unknown_column", "nope"),
        ("select=n", "invalid_select", "sub"),
        ("sub={t}&select=", "invalid_select", "empty"),
        ("sub={t}:*:status=eq.a%00b", "invalid_parameter", "NUL"),
        ("sub={t}%00", "invalid_parameter", "NUL"),
        ("sub={t};drop table jobs", "unknown_table", "drop table"),
        ("sub={t}:*:status=eq.'; drop table jobs; --", None, None),
    ],
)
def test_malformed_subscriptions(
    relay_server: RelayServer, table: str, query: str, code: str | None, needle: str | None
) -> None:
    q = query.replace("{t}", table)
    r = get(relay_server, q + "&" + service(relay_server)) if code else None
    if code is None:  # SQL-looking strings are data: a valid filter, an empty match
        with relay_server.open([("sub", q.split("=", 1)[1])]) as c:
            assert c.hello.data["status"] == "SUBSCRIBED"
        return
    assert r is not None
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == code
    assert needle is None or needle.lower() in body["message"].lower()


def test_huge_parameter_is_rejected_quickly(relay_server: RelayServer, table: str) -> None:
    url = f"{relay_server.url}/v1/stream?sub={table}:*:status=eq.{'x' * 20_000}&"
    with SSEClient(url + service(relay_server)).open() as c:
        assert c.status == 400
        assert "longer" in c.body["message"]
    # 100 KB in the request line: refused by the HTTP server itself, still a 400
    url = f"{relay_server.url}/v1/stream?sub={table}:*:status=eq.{'x' * 100_000}&"
    with SSEClient(url + service(relay_server)).open() as c:
        assert c.status == 400


def test_in_list_limit(relay_server: RelayServer, table: str) -> None:
    values = ",".join(str(i) for i in range(101))
    r = get(relay_server, f"sub={table}:*:n=in.({values})&{service(relay_server)}")
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_filter"


def test_too_many_subscriptions(relay_server: RelayServer, table: str) -> None:
    q = "&".join([f"sub={table}"] * 51)
    r = get(relay_server, f"{q}&{service(relay_server)}")
    assert r.status_code == 400
    assert r.json()["error"] == "too_many_subscriptions"


def _token(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


@pytest.mark.parametrize(
    "token, needle",
    [
        (None, "no token"),
        ("garbage", "well-formed"),
        ("a.b.c", "well-formed"),
        (
            _token({"sub": "u", "exp": time.time() + 60}, key="wrong-secret-0123456789-0123456789"),
            "signature",
        ),
        (_token({"sub": "u", "exp": time.time() - 10}), "expired"),
        (_token({"sub": "u"}), "exp"),
        (jwt.encode({"sub": "u", "exp": time.time() + 60}, None, algorithm="none"), "algorithm"),
    ],
)
def test_bad_tokens_get_401(
    relay_server: RelayServer, table: str, token: str | None, needle: str
) -> None:
    q = f"sub={table}" + (f"&access_token={quote(token)}" if token is not None else "")
    r = get(relay_server, q)
    assert r.status_code == 401, r.text
    assert needle in r.json()["message"]
    assert "Traceback" not in r.text


def test_token_sources(relay_server: RelayServer, table: str) -> None:
    good = relay_server.service_token()
    with httpx.Client(timeout=10) as client:
        for kw in (
            {"headers": {"Authorization": f"Bearer {good}"}},
            {"cookies": {"relay_token": good}},
        ):
            with client.stream("GET", f"{relay_server.url}/v1/stream?sub={table}", **kw) as r:
                assert r.status_code == 200
        # the header wins over a bad query token
        with client.stream(
            "GET",
            f"{relay_server.url}/v1/stream?sub={table}&access_token=garbage",
            headers={"Authorization": f"Bearer {good}"},
        ) as r:
            assert r.status_code == 200


def test_health_and_ready(relay_server: RelayServer) -> None:
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{relay_server.url}/healthz").status_code == 200
        r = client.get(f"{relay_server.url}/readyz")
        assert r.status_code == 200 and r.json()["ready"] is True


def test_client_that_vanishes_is_forgotten(relay_server: RelayServer, table: str) -> None:
    hub = relay_server.relay.hub
    before = set(hub.subscribers)
    c = relay_server.open({"sub": table})
    mine = [s for s in hub.subscribers if s not in before and table in str(s.subs)]
    assert len(mine) == 1
    c.close()
    deadline = time.monotonic() + 10
    while mine[0] in hub.subscribers:
        assert time.monotonic() < deadline, "subscriber not removed after disconnect"
        time.sleep(0.01)


def test_head_is_not_a_stream(relay_server: RelayServer, table: str) -> None:
    r = httpx.head(f"{relay_server.url}/v1/stream?sub={table}&{service(relay_server)}", timeout=10)
    assert r.status_code == 405
