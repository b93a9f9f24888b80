"""Tokens from an identity provider: JWKS (RS256/ES256, kid, rotation), aud/iss, claim paths."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.conftest import RelayServer, start_relay


def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = RSAAlgorithm if alg == "RS256" else ECAlgorithm
    d = json.loads(algo.to_jwk(private.public_key()))
    d.update({"kid": kid, "alg": alg, "use": "sig"})
    return d


def sign(private: Any, kid: str, alg: str = "RS256", **claims: Any) -> str:
    body = {"exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, private, algorithm=alg, headers={"kid": kid})


def status(srv: RelayServer, token: str, table: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", srv.stream_url({"sub": table}, token)) as r:
            if r.status_code != 200:
                r.read()
            return r


@pytest.fixture
def keys() -> dict[str, Any]:
    return {"k1": rsa_key(), "k2": rsa_key(), "e1": ec.generate_private_key(ec.SECP256R1())}


@pytest.fixture
def jwks_file(tmp_path: Path, keys: dict[str, Any]) -> Path:
    p = tmp_path / "jwks.json"
    p.write_text(
        json.dumps({"keys": [jwk(keys["k1"], "k1", "RS256"), jwk(keys["e1"], "e1", "ES256")]})
    )
    return p


def test_jwks_file_rotation_and_algorithms(
    dsn: str, make_table: Any, keys: dict[str, Any], jwks_file: Path
) -> None:
    t = make_table("id int primary key, org_id text")
    srv = start_relay(dsn, jwks_file=str(jwks_file), jwks_min_refresh_seconds=0)
    try:
        assert status(srv, sign(keys["k1"], "k1", org_id="A"), t).status_code == 200
        assert status(srv, sign(keys["e1"], "e1", "ES256", org_id="A"), t).status_code == 200
        # a key the JWKS does not have yet
        r = status(srv, sign(keys["k2"], "k2", org_id="A"), t)
        assert r.status_code == 401 and "kid" in r.json()["message"]
        # signed with k2 but claiming to be k1
        r = status(srv, sign(keys["k2"], "k1", org_id="A"), t)
        assert r.status_code == 401 and "signature" in r.json()["message"]
        # the provider rotates: k2 added, k1 retired
        jwks_file.write_text(json.dumps({"keys": [jwk(keys["k2"], "k2", "RS256")]}))
        assert status(srv, sign(keys["k2"], "k2", org_id="A"), t).status_code == 200
        r = status(srv, sign(keys["k1"], "k1", org_id="A"), t)
        assert r.status_code == 401
        # HS256 with the shared secret still works alongside
        assert status(srv, srv.service_token(), t).status_code == 200
        # no kid
        r = status(srv, jwt.encode({"exp": time.time() + 60}, keys["k2"], algorithm="RS256"), t)
        assert r.status_code == 401 and "kid" in r.json()["message"]
    finally:
        srv.stop()


@pytest.fixture
def jwks_url(keys: dict[str, Any]) -> Iterator[tuple[str, list[int]]]:
    hits: list[int] = []
    body = json.dumps({"keys": [jwk(keys["k1"], "k1", "RS256")]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(1)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", hits
    finally:
        server.shutdown()


def test_jwks_url_is_cached_and_unknown_kids_cannot_hammer_it(
    dsn: str, make_table: Any, keys: dict[str, Any], jwks_url: tuple[str, list[int]]
) -> None:
    t = make_table("id int primary key, org_id text")
    url, hits = jwks_url
    srv = start_relay(dsn, jwks_url=url)
    try:
        for _ in range(3):
            assert status(srv, sign(keys["k1"], "k1", org_id="A"), t).status_code == 200
        for i in range(5):
            assert status(srv, sign(keys["k2"], f"made-up-{i}", org_id="A"), t).status_code == 401
        assert len(hits) == 1
    finally:
        srv.stop()


def test_audience_issuer_and_nested_org_claim(
    dsn: str, db: Any, make_table: Any, keys: dict[str, Any], jwks_file: Path
) -> None:
    t = make_table("id int primary key, org_id text")
    srv = start_relay(
        dsn,
        jwks_file=str(jwks_file),
        jwt_audience="relay",
        jwt_issuer="https://idp.example",
        jwt_org_claim="app_metadata.org_id",
    )
    try:
        good = {
            "aud": "relay",
            "iss": "https://idp.example",
            "sub": "u1",
            "app_metadata": {"org_id": "A"},
        }
        r = status(srv, sign(keys["k1"], "k1", **{**good, "aud": "other"}), t)
        assert r.status_code == 401 and "aud" in r.json()["message"]
        r = status(srv, sign(keys["k1"], "k1", **{**good, "iss": "https://evil"}), t)
        assert r.status_code == 401 and "iss" in r.json()["message"]
        r = status(srv, sign(keys["k1"], "k1", **{k: v for k, v in good.items() if k != "aud"}), t)
        assert r.status_code == 401
        token = sign(keys["k1"], "k1", **good)
        with srv.open({"sub": t}, token) as c:
            db.execute(f"insert into {t} values (1, 'B'), (2, 'A')")
            (ev,) = c.take(1)
        assert ev.data["new"]["id"] == 2  # the org came from app_metadata.org_id
    finally:
        srv.stop()


def test_streams_per_user_limit(dsn: str, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    srv = start_relay(dsn, max_streams_per_user=2)
    try:
        tok = srv.token(sub="u1", org_id="A")
        with srv.open({"sub": t}, tok), srv.open({"sub": t}, tok):
            r = httpx.get(srv.stream_url({"sub": t}, tok), timeout=10)
            assert r.status_code == 429 and r.json()["error"] == "too_many_streams"
            other = srv.token(sub="u2", org_id="A")
            with srv.open({"sub": t}, other):
                pass
    finally:
        srv.stop()
