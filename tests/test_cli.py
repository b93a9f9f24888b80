"""The DBA's command line: status, watch/unwatch, tail from the database, config reference."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relay.config_doc import END, START, markdown
from tests.conftest import RelayServer


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
