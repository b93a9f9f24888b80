"""Hostile and broken clients cannot hurt anyone else (issue 15).

Every test mounts the attack from outside, as the client or database role
that would mount it: raw sockets, forged tokens, concurrent opens, cross-site
posts, an ownership change under an open stream, anonymous operators' routes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from tests.conftest import SECRET, RelayServer, free_port, start_relay


@pytest.fixture
def table(make_table: Any) -> str:
    return str(make_table("id int primary key, org_id text, user_id text, name text"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Any, payload: Any, key: str = SECRET) -> str:
    """An HS256 token with any header and payload, correctly signed."""
    signing = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    sig = hmac.new(key.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + _b64(sig)


def _get(url: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, headers=headers, timeout=10, **kw)


# --- 2. connections ------------------------------------------------------------------


@pytest.fixture
def strict_relay(dsn: str) -> Iterator[RelayServer]:
    srv = start_relay(dsn, header_timeout_seconds=1.0, max_connections=12)
    try:
        yield srv
    finally:
        srv.stop()


def _connect(srv: RelayServer) -> socket.socket:
    port = int(srv.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes | None = None) -> float:
    """Seconds until the server closed `sock` (sending `trickle` every 0.2 s meanwhile)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        if trickle is not None:
            try:
                sock.sendall(trickle)
            except OSError:
                return time.monotonic() - started
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
        if data == b"" or data.startswith(b"HTTP/1.1 408"):
            return time.monotonic() - started
    raise AssertionError(f"connection still open after {seconds} s")


def test_silent_socket_is_closed(strict_relay: RelayServer) -> None:
    with _connect(strict_relay) as s:
        assert _closed_within(s, 8) < 8


def test_trickling_head_is_closed(strict_relay: RelayServer) -> None:
    with _connect(strict_relay) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert _closed_within(s, 8, trickle=b"X-Slow: 1\r\n") < 8


def test_keepalive_request_after_a_response_is_timed_out_too(strict_relay: RelayServer) -> None:
    with _connect(strict_relay) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert _closed_within(s, 8, trickle=b"X-Slow: 1\r\n") < 8


def test_connections_beyond_the_bound_are_refused_streams_unaffected(
    dsn: str, db: Any, table: str
) -> None:
    srv = start_relay(dsn, header_timeout_seconds=60.0, max_connections=8)
    idle: list[socket.socket] = []
    try:
        stream = srv.open({"sub": table})
        with stream:
            refused = 0
            for _ in range(20):
                s = _connect(srv)
                idle.append(s)
                s.settimeout(0.3)
                try:
                    first = s.recv(4096)
                except TimeoutError:
                    continue  # accepted and waiting for its request
                assert first.startswith(b"HTTP/1.1 503"), first[:80]
                assert b"too_many_connections" in first
                refused += 1
            assert refused >= 12  # 8 allowed in all, one of them the stream
            db.execute(f"insert into {table} values (1, 'o', null, 'still flowing')")
            assert stream.next(10).data["new"]["name"] == "still flowing"
            for s in idle:
                s.close()
            idle.clear()
            deadline = time.monotonic() + 10
            while httpx.get(f"{srv.url}/healthz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline
    finally:
        for s in idle:
            s.close()
        srv.stop()


# --- 3. tokens -----------------------------------------------------------------------


def _exp() -> int:
    return int(time.time()) + 600


MALFORMED = {
    "crit": lambda: forge({"alg": "HS256", "crit": ["x"], "x": 1}, {"exp": _exp()}),
    "crit_not_list": lambda: forge({"alg": "HS256", "crit": "x"}, {"exp": _exp()}),
    "kid_number": lambda: forge({"alg": "HS256", "kid": 5}, {"exp": _exp()}),
    "kid_object": lambda: forge({"alg": "HS256", "kid": {"a": 1}}, {"exp": _exp()}),
    "alg_list": lambda: forge({"alg": ["HS256"]}, {"exp": _exp()}),
    "header_list": lambda: forge([1, 2], {"exp": _exp()}),
    "payload_list": lambda: forge({"alg": "HS256"}, [1]),
    "exp_string": lambda: forge({"alg": "HS256"}, {"exp": str(_exp()), "sub": "u"}),
    "exp_bool": lambda: forge({"alg": "HS256"}, {"exp": True}),
    "nbf_string": lambda: forge({"alg": "HS256"}, {"exp": _exp(), "nbf": "0"}),
    "b64_false": lambda: forge({"alg": "HS256", "b64": False}, {"exp": _exp()}),
    "garbage": lambda: "....",
    "garbage2": lambda: "eyJ.eyJ.x",
    "unicode": lambda: "ä.ö.ü",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_token_is_401(relay_server: RelayServer, table: str, name: str) -> None:
    token = MALFORMED[name]()
    if token.isascii():
        r = _get(f"{relay_server.url}/v1/changes", token, params={"sub": table})
    else:  # not sendable in a header: the query parameter
        r = _get(f"{relay_server.url}/v1/changes", params={"sub": table, "access_token": token})
    assert r.status_code == 401, (r.status_code, r.text)
    body = r.json()
    assert body["error"] in ("invalid_token", "token_expired") and body["message"]
    assert "Traceback" not in r.text


def test_string_exp_cannot_open_an_endless_stream(relay_server: RelayServer, table: str) -> None:
    c = relay_server.open({"sub": table}, token=MALFORMED["exp_string"](), subscribed=False)
    with c:
        assert c.status == 401 and "'exp' must be a number" in c.body["message"]


def test_asymmetric_alg_pointing_at_the_wrong_key_type_is_401(
    dsn: str, tmp_path: Path, table: str
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    public.update({"kid": "e1", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public]}))
    srv = start_relay(dsn, jwks_file=str(path))
    try:
        claims = {"exp": _exp(), "sub": "u", "org_id": "o"}
        for tok in (
            jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "e1"}),
            forge({"alg": "RS256", "kid": "e1"}, claims),
            forge({"alg": "ES256", "kid": 7}, claims),
        ):
            r = _get(f"{srv.url}/v1/changes", tok, params={"sub": table})
            assert r.status_code == 401, (r.status_code, r.text)
        good = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e1"})
        assert _get(f"{srv.url}/v1/changes", good, params={"sub": table}).status_code == 200
    finally:
        srv.stop()


# --- 4. long-poll expiry -------------------------------------------------------------


def test_long_poll_answers_by_exp(relay_server: RelayServer, db: Any, table: str) -> None:
    exp = int(time.time()) + 2
    token = forge({"alg": "HS256"}, {"exp": exp, "sub": "u", "org_id": "o"})
    out: dict[str, Any] = {}

    def poll() -> None:
        r = _get(
            f"{relay_server.url}/v1/changes",
            token,
            params={"sub": table, "wait": "25"},
        )
        out["at"] = time.time()
        out["response"] = r

    t = threading.Thread(target=poll)
    t.start()
    t.join(timeout=exp - time.time() + 1.5)  # the answer is due at exp
    db.execute(f"insert into {table} values (1, 'o', null, 'after exp')")
    t.join(timeout=30)
    assert "response" in out, "the long-poll was still waiting after its token expired"
    r = out["response"]
    assert r.status_code == 200 and r.json()["events"] == []
    assert out["at"] <= exp + 1.0


# --- 5. per-user stream limit --------------------------------------------------------


def _open_status(url: str, headers: dict[str, str]) -> tuple[int, httpx.Client, Any]:
    client = httpx.Client(timeout=20)
    cm = client.stream("GET", url, headers=headers)
    r = cm.__enter__()
    return r.status_code, client, cm


def test_stream_limit_holds_under_concurrent_opens(dsn: str, db: Any, table: str) -> None:
    srv = start_relay(dsn, max_streams_per_user=5)
    opened: list[tuple[int, httpx.Client, Any]] = []
    try:
        head = srv.caught_up(db)
        tok = srv.token(sub="racer", org_id="o")
        url = srv.stream_url({"sub": table}, tok)
        with ThreadPoolExecutor(30) as pool:
            opened = list(
                pool.map(lambda _: _open_status(url, {"Last-Event-ID": str(head)}), range(30))
            )
        codes = [c for c, _, _ in opened]
        assert codes.count(200) == 5, codes
        assert set(codes) == {200, 429}
    finally:
        for _, client, cm in opened:
            cm.__exit__(None, None, None)
            client.close()
        srv.stop()


def test_tokens_without_sub_are_limited(dsn: str, table: str) -> None:
    srv = start_relay(dsn, max_streams_per_user=2)
    try:
        tok = srv.token(org_id="o")  # no sub
        with srv.open({"sub": table}, tok), srv.open({"sub": table}, tok):
            r = httpx.get(srv.stream_url({"sub": table}, tok), timeout=10)
            assert r.status_code == 429 and r.json()["error"] == "too_many_streams"
            # a waiting long-poll holds a slot as well
            r = _get(f"{srv.url}/v1/changes", tok, params={"sub": table, "wait": "1"})
            assert r.status_code == 429
            # another token of the same org is another credential
            with srv.open({"sub": table}, srv.token(org_id="o", jti="other")):
                pass
        # slots come back when streams end
        with srv.open({"sub": table}, tok):
            pass
    finally:
        srv.stop()


# --- 6. token routes -----------------------------------------------------------------


def _relay_cmd(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_DATA_DIR": str(tmp_path / "data"), "RELAY_LOG_FORMAT": "text"})
    env.update(extra)
    return env


def test_serve_without_secret_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        p = _relay_cmd(["serve", "--host", host], _clean_env(tmp_path), timeout=30)
        assert p.returncode != 0
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "refusing to listen" in lines[0], p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "data" / "pg").exists()  # refused before starting anything


def test_docker_default_cmd_is_safe() -> None:
    """The image runs `relay serve` on 0.0.0.0: with no secret that must refuse."""
    text = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    assert 'CMD ["serve"]' in text and "RELAY_HOST=0.0.0.0" in text
    assert "RELAY_JWT_SECRET=" not in text.replace("-e RELAY_JWT_SECRET=", "")


def _wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "relay did not start"
        time.sleep(0.1)


def test_plain_serve_has_no_token_route_and_demo_never_signs_with_the_secret(
    tmp_path: Path, dsn: str
) -> None:
    port = free_port()
    # plain `relay serve` on loopback with the embedded database and no secret
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--port", str(port)],
        env=_clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        r = httpx.get(f"http://127.0.0.1:{port}/demo/tokens", timeout=5)
        assert r.status_code == 404 and "token" not in r.text.lower().replace("tokens exist", "")
    finally:
        proc.terminate()
        proc.wait(30)
    # `relay demo` with a production secret configured: its tokens are not signed with it
    port = free_port()
    prod = "production-secret-0123456789-0123456789"
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "demo", "--port", str(port)],
        env=_clean_env(tmp_path, RELAY_JWT_SECRET=prod, RELAY_DATABASE_URL=dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        r = httpx.get(f"http://127.0.0.1:{port}/demo/tokens", timeout=5)
        assert r.status_code == 200
        for entry in r.json():
            with pytest.raises(jwt.InvalidSignatureError):
                jwt.decode(entry["token"], prod, algorithms=["HS256"])
        # a request a local proxy forwards for someone else is not a loopback client
        r = httpx.get(
            f"http://127.0.0.1:{port}/demo/tokens",
            headers={"X-Forwarded-For": "203.0.113.9"},
            timeout=5,
        )
        assert r.status_code == 403
    finally:
        proc.terminate()
        proc.wait(30)


# --- 7. broadcast forgery ------------------------------------------------------------


def test_broadcast_is_json_only_and_never_by_cookie(relay_server: RelayServer) -> None:
    url = f"{relay_server.url}/v1/broadcast"
    service = relay_server.service_token()
    body = json.dumps({"topic": "t1", "event": "e", "payload": {"a": 1}})
    foreign = {"origin": "https://evil.example"}
    # a cross-site form: the browser attaches the cookie, the content type is a "simple" one
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = httpx.post(
            url,
            content=body,
            headers={**foreign, "content-type": ctype, "cookie": f"relay_token={service}"},
            timeout=10,
        )
        assert r.status_code == 401, (ctype, r.status_code, r.text)
        r = httpx.post(
            url,
            content=body,
            headers={"content-type": ctype, "authorization": f"Bearer {service}"},
            timeout=10,
        )
        assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = httpx.post(
        url,
        content=body,
        headers={"content-type": "application/json", "cookie": f"relay_token={service}"},
        timeout=10,
    )
    assert r.status_code == 401
    r = httpx.post(
        url,
        content=body,
        headers={
            "content-type": "application/json; charset=utf-8",
            "authorization": f"Bearer {service}",
        },
        timeout=10,
    )
    assert r.status_code == 202


# --- 8. topic access follows ownership -----------------------------------------------


@pytest.fixture
def family(db: Any, make_table: Any) -> tuple[str, str]:
    t = make_table("id int primary key, org_id text")
    fam = f"fam{uuid.uuid4().hex[:8]}"
    db.execute("select relay.register_topic_family(%s, %s)", (fam, f"public.{t}"))
    return fam, t


def _broadcast(db: Any, topic: str, n: int) -> int:
    db.execute("select relay.broadcast(%s, 'progress', %s::jsonb)", (topic, json.dumps({"n": n})))
    row = db.execute(
        "select max(b.base + c.ord - 1) from relay.changes c join relay.batches b "
        "on b.id = c.batch where c.kind = 'B' and c.topic = %s",
        (topic,),
    ).fetchone()
    return int(row[0])


def test_stream_loses_topic_when_its_row_changes_owner(
    relay_server: RelayServer, db: Any, family: tuple[str, str], table: str
) -> None:
    fam, t = family
    db.execute(f"insert into {t} values (43, 'A')")
    relay_server.caught_up(db)
    token = relay_server.token(sub="ua", org_id="A")
    c = relay_server.open([("topic", f"{fam}:43"), ("sub", table)], token=token)
    with c:
        _broadcast(db, f"{fam}:43", 1)
        first = c.next(10)
        assert first.event == "broadcast" and first.data["payload"] == {"n": 1}
        db.execute(f"update {t} set org_id = 'B' where id = 43")
        _broadcast(db, f"{fam}:43", 2)  # org-less: only topic access guards it
        db.execute(f"insert into {table} values (1, 'A', null, 'sentinel')")
        seen: list[Any] = []
        revoked = False
        while not (revoked and any(e.event == "postgres_changes" for e in seen)):
            e = c.next(10)
            seen.append(e)
            revoked = revoked or (e.event == "system" and e.data.get("status") == "TOPIC_REVOKED")
        assert not [e for e in seen if e.event == "broadcast"], seen
        _broadcast(db, f"{fam}:43", 3)
        db.execute(f"insert into {table} values (2, 'A', null, 'sentinel 2')")
        e = c.next(10)
        assert e.event == "postgres_changes" and e.data["new"]["id"] == 2


def test_replay_does_not_serve_the_previous_owners_broadcasts(
    relay_server: RelayServer, db: Any, family: tuple[str, str]
) -> None:
    fam, t = family
    db.execute(f"insert into {t} values (44, 'A')")
    start = int(db.execute("select relay.current_position()").fetchone()[0])
    _broadcast(db, f"{fam}:44", 1)  # A's
    db.execute(f"update {t} set org_id = 'B' where id = 44")
    mine = _broadcast(db, f"{fam}:44", 2)  # B's
    relay_server.caught_up(db)
    token = relay_server.token(sub="ub", org_id="B")
    r = _get(
        f"{relay_server.url}/v1/changes",
        token,
        params={"topic": f"{fam}:44", "after": str(start)},
    )
    assert r.status_code == 200
    assert [(e["id"], e["data"]["payload"]) for e in r.json()["events"]] == [(mine, {"n": 2})]
    c = relay_server.open([("topic", f"{fam}:44"), ("last_event_id", str(start))], token=token)
    with c:
        e = c.next(10)
        assert e.event == "broadcast" and e.data["payload"] == {"n": 2}


# --- 11. caching and operators' routes -----------------------------------------------


def test_cacheable_pages_vary_by_credentials(
    relay_server: RelayServer, db: Any, table: str
) -> None:
    start = int(db.execute("select relay.current_position()").fetchone()[0])
    db.execute(f"insert into {table} values (1, 'o', null, 'a'), (2, 'o', null, 'b')")
    relay_server.caught_up(db)
    token = relay_server.token(sub="u", org_id="o")
    r = _get(
        f"{relay_server.url}/v1/changes",
        token,
        params={"sub": table, "after": str(start), "limit": "1"},
    )
    assert r.json()["more"] is True
    assert "max-age" in r.headers["cache-control"]
    vary = {v.strip().lower() for v in r.headers["vary"].split(",")}
    assert {"authorization", "cookie"} <= vary


def test_readyz_tells_only_the_status(relay_server: RelayServer, table: str) -> None:
    with relay_server.open({"sub": table}):
        body = httpx.get(f"{relay_server.url}/readyz", timeout=5).json()
    assert set(body) <= {"status", "ready"} and body["status"] == "ready"


def test_metrics_are_for_operators_only(dsn: str, relay_server: RelayServer) -> None:
    forwarded = httpx.get(
        f"{relay_server.url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5
    )
    assert forwarded.status_code == 403 and "relay_subscriptions" not in forwarded.text
    port = free_port()
    srv = start_relay(dsn, metrics_address=f"127.0.0.1:{port}")
    try:
        assert httpx.get(f"{srv.url}/metrics", timeout=5).status_code == 404
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert r.status_code == 200 and "relay_open_streams" in r.text
        assert httpx.get(f"http://127.0.0.1:{port}/v1/stream", timeout=5).status_code == 404
    finally:
        srv.stop()
