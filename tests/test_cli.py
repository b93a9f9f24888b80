"""The DBA's command line: status, watch/unwatch, tail from the database, config reference."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from relay.auth import make_token
from relay.config_doc import END, START, markdown
from tests.conftest import SECRET, RelayServer, free_port


def relay_cli(dsn: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args, "--database-url", dsn],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_readme_config_reference_is_generated() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme[readme.index(START) + len(START) : readme.index(END)].strip()
    assert block == markdown()


def test_watch_status_unwatch(
    relay_server: RelayServer, dsn: str, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, owner text, team text, pw text", watch=None)
    r = relay_cli(
        dsn, "watch", t, "--user-column", "owner", "--org-column", "team", "--exclude", "pw"
    )
    assert r.returncode == 0, r.stderr
    relay_server.caught_up(db)
    db.execute(f"insert into {t} values (1, 'u', 'g', 'secret')")
    relay_server.caught_up(db)
    # the relay reports its position about once a second; wait for it to show up
    deadline = time.monotonic() + 15
    while True:
        r = relay_cli(dsn, "status", "--json")
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        if snap["relays"]:
            break
        assert time.monotonic() < deadline, "no relay reported in pg_stat_activity"
        time.sleep(0.2)
    w = next(x for x in snap["watched"] if x["table"] == f"public.{t}")
    assert (w["user_column"], w["org_column"], w["excluded"]) == ("owner", "team", ["pw"])
    assert snap["log"]["newest_position"] >= snap["log"]["oldest_position"] - 1
    assert all(x["lag"] >= 0 for x in snap["relays"])
    text = relay_cli(dsn, "status").stdout
    assert f"public.{t}" in text and "user_column=owner" in text and "Connected relays" in text
    r = relay_cli(dsn, "watch", t, "--user-column", "nope")
    assert r.returncode != 0 and "nope" in r.stderr
    assert relay_cli(dsn, "unwatch", t).returncode == 0
    assert db.execute(
        "select count(*) from relay.watched where table_name = %s", (t,)
    ).fetchone() == (0,)


def test_tail_from_the_database(dsn: str, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, status text")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "tail",
            f"{t}:UPDATE:status=eq.running",
            "--database-url",
            dsn,
            "--count",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        db.execute(f"insert into {t} values (1, 'o', 'new'), (2, 'o', 'new')")
        # tail starts at the head when it connects: write until it has seen one
        out, err = "", ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            db.execute(f"update {t} set status = 'running' where id = 2")
            db.execute(f"update {t} set status = 'new' where id = 2")
            try:
                out, err = proc.communicate(timeout=0.3)
                break
            except subprocess.TimeoutExpired:
                continue
        if not out:
            proc.kill()
            out, err = proc.communicate()
        assert out, f"tail printed nothing; stderr: {err}"
        line = json.loads(out.splitlines()[0])
        assert line["event"] == "postgres_changes"
        assert line["data"]["new"] == {"id": 2, "org_id": "o", "status": "running"}
    finally:
        proc.kill()


# ---- a new user's first ten minutes: one-line failures, help, version -------------------------


def run_in(
    folder: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`relay ARGS` in `folder` with no RELAY_* variable but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=folder,
        env={**clean, **(env or {})},
    )


def assert_one_line(r: subprocess.CompletedProcess[str], *words: str) -> str:
    """A non-zero exit with exactly one line on stderr, naming each of `words`."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def dead_url() -> str:
    return f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"


def test_version_and_every_option_described() -> None:
    from relay import cli

    r = subprocess.run(
        [sys.executable, "-m", "relay.cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("relay 0."), r
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, (name, action.dest)
            takes_value = action.nargs != 0 and action.option_strings
            if takes_value and not isinstance(action, argparse._AppendAction):
                assert "default" in action.help, (name, action.dest, action.help)
    assert "seconds" in sub.choices["token"]._option_string_actions["--ttl"].help


def test_an_empty_folder_gets_one_line_errors_and_no_database_or_secret(tmp_path: Path) -> None:
    assert_one_line(run_in(tmp_path, "token", "--sub", "u"), "RELAY_JWT_SECRET", "relay demo")
    for args in (["status"], ["tail", "jobs"], ["watch", "jobs"], ["unwatch", "jobs"]):
        assert_one_line(run_in(tmp_path, *args), "RELAY_DATABASE_URL", "relay demo")
    assert list(tmp_path.iterdir()) == [], "a command created files in an empty folder"


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env = {"RELAY_DATABASE_URL": dead_url(), "RELAY_JWT_SECRET": "s" * 32}
    for args in (["status"], ["tail", "jobs"], ["watch", "jobs"], ["migrate"]):
        assert_one_line(run_in(tmp_path, *args, env=env), "cannot connect", "RELAY_DATABASE_URL")
    port = str(free_port())
    line = assert_one_line(run_in(tmp_path, "serve", "--port", port, env=env), "cannot connect")
    assert "startup failed" not in line.lower()


def test_a_database_without_the_relay_schema_says_migrate(
    tmp_path: Path, pg_admin_dsn: str
) -> None:
    env = {"RELAY_DATABASE_URL": pg_admin_dsn, "RELAY_JWT_SECRET": "s" * 32}
    with psycopg.connect(pg_admin_dsn) as conn:
        if conn.execute("select to_regnamespace('relay') is not null").fetchone() == (True,):
            pytest.skip("the admin database has a relay schema")
    assert_one_line(run_in(tmp_path, "status", env=env), "relay migrate")
    assert_one_line(run_in(tmp_path, "serve", "--port", str(free_port()), env=env), "migrate")


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("RELAY_CORS_ORIGINS", "app.example.com", ["RELAY_CORS_ORIGINS", "not an origin"]),
        ("RELAY_CORS_ORIGINS", '["https://a.example", "ftp://b"]', ["RELAY_CORS_ORIGINS"]),
        ("RELAY_CORS_ORIGINS", "https://app.example/path", ["RELAY_CORS_ORIGINS"]),
        ("RELAY_CORS_ORIGINS", '["https://a.example"', ["RELAY_CORS_ORIGINS", "JSON"]),
        ("RELAY_DATABASE_URL", "mysql://root@db/app", ["RELAY_DATABASE_URL"]),
        ("RELAY_DATABASE_URL", "not a url", ["RELAY_DATABASE_URL"]),
        ("RELAY_JWKS_URL", "keys.json", ["RELAY_JWKS_URL", "http"]),
        ("RELAY_PORT", "eighty", ["RELAY_PORT"]),
    ],
)
def test_a_bad_setting_stops_serve_naming_the_variable(
    tmp_path: Path, variable: str, value: str, words: list[str]
) -> None:
    env = {"RELAY_JWT_SECRET": "s" * 32, "RELAY_PORT": str(free_port()), variable: value}
    line = assert_one_line(run_in(tmp_path, "serve", env=env, timeout=30), *words)
    assert "root@db" not in line  # a DSN may hold a password: never echoed
    assert list(tmp_path.iterdir()) == []


def test_lists_take_comma_and_json_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.settings import Settings

    for raw in (
        "https://a.example, https://b.example:8443/",
        '["https://a.example", "https://b.example:8443"]',
    ):
        monkeypatch.setenv("RELAY_CORS_ORIGINS", raw)
        monkeypatch.setenv("RELAY_JWT_ORG_CLAIM", '["app_metadata.org_id", "org_ids"]')
        s = Settings()
        assert s.cors_origins == ["https://a.example", "https://b.example:8443"]
        assert s.jwt_org_claim == "app_metadata.org_id,org_ids"


def test_serve_applies_a_json_list_of_origins(tmp_path: Path, dsn: str) -> None:
    port = free_port()
    env = {
        "RELAY_DATABASE_URL": dsn,
        "RELAY_JWT_SECRET": SECRET,
        "RELAY_CORS_ORIGINS": '["https://app.example"]',
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--port", str(port)],
        env={**clean, **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        token = make_token(SECRET, sub="svc", role="service_role")
        r = httpx.get(
            f"{url}/v1/changes?sub=jobs&limit=1",
            headers={"authorization": f"Bearer {token}", "origin": "https://app.example"},
        )
        assert r.status_code == 200, r.text
        assert r.headers.get("access-control-allow-origin") == "https://app.example"
    finally:
        proc.terminate()
        proc.wait(30)


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else proc.returncode
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "relay did not become ready"
        time.sleep(0.05)


def test_a_taken_port_fails_before_any_output_or_write(tmp_path: Path, dsn: str, db: Any) -> None:
    head = db.execute("select relay.current_position()").fetchone()[0]
    streams = db.execute("select count(*) from streams").fetchone()[0]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        env = {"RELAY_DATABASE_URL": dsn, "RELAY_JWT_SECRET": SECRET}
        for cmd in ("serve", "demo"):
            r = run_in(tmp_path, cmd, "--port", port, env=env)
            assert_one_line(r, port, "in use", "--port")
            assert r.stdout == "", r.stdout  # no "open http://..." for a server that is not
        r = run_in(tmp_path, "serve", "--port", port, "--workers", "2", env=env)
        assert_one_line(r, "in use")
    # the demo's worker never started: nothing was written
    assert db.execute("select count(*) from streams").fetchone()[0] == streams
    assert db.execute("select relay.current_position()").fetchone()[0] == head


def test_tail_through_a_relay_reports_failures_in_one_line(
    tmp_path: Path, relay_server: RelayServer
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert_one_line(
        run_in(tmp_path, "tail", "jobs", "--url", dead, "--token", "x", timeout=30),
        "cannot reach",
        dead,
    )
    assert time.monotonic() - started < 25
    assert_one_line(
        run_in(tmp_path, "tail", "jobs", "--url", relay_server.url, "--token", "bad"),
        "refused the token",
        "relay token",
    )
    token = relay_server.service_token()
    assert_one_line(
        run_in(
            tmp_path, "tail", "jobs:UPDATE:nope=eq.1", "--url", relay_server.url, "--token", token
        ),
        "400",
        "nope",
    )
    assert_one_line(
        run_in(tmp_path, "tail", "jobs", "--url", "relay:8080", "--token", token), "--url"
    )


def test_tail_from_the_database_reports_a_bad_filter_in_one_line(tmp_path: Path, dsn: str) -> None:
    r = run_in(tmp_path, "tail", "jobs:UPDATE:status=zz.1", env={"RELAY_DATABASE_URL": dsn})
    assert_one_line(r, "zz")
    r = run_in(tmp_path, "tail", "no_such_table", env={"RELAY_DATABASE_URL": dsn})
    assert_one_line(r, "no_such_table")
