"""The README against the demo: every example marked `<!-- example: demo -->` is run, as
written, against a running `relay demo` (only the port differs: the README's 8080 becomes a
free port), and the demo's own promises (psql line, the folder's commands, the psql
experiment) are checked.

Examples not marked are for the reader's own setup (their own database, proxy, compose
file) and say so where they stand.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
MARK = re.compile(r"<!-- example: (demo|demo-setup) -->\n```(\w+)\n(.*?)\n```", re.S)
EXAMPLES = [(kind, lang, body) for kind, lang, body in MARK.findall(README)]
SETUP = next(body for kind, _, body in EXAMPLES if kind == "demo-setup")
BIN = str(Path(sys.executable).parent)


@dataclass
class Demo:
    folder: Path
    port: int
    url: str
    token: str
    psql: str
    proc: subprocess.Popen[str]

    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        return {**clean, "PATH": f"{BIN}:{os.environ['PATH']}"}

    def relay(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relay.cli", *args],
            cwd=self.folder,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def dsn(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.folder}/.relay-data/pg"


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    """`relay demo` in a folder of its own (embedded database), its worker five times faster."""
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as d:
        yield from _demo(Path(d))


def _demo(folder: Path) -> Iterator[Demo]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "demo", "--port", str(port), "--pace", "0.2"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    found: dict[str, str] = {}
    lines: list[str] = []
    drain: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + 120
    try:
        while len(found) < 3:
            assert time.monotonic() < deadline, "".join(lines)
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                assert proc.poll() is None, "".join(lines)
                continue
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            for key, prefix in (
                ("url", "relay: open "),
                ("psql", "relay: database (psql): "),
                ("token", "relay: demo token "),
            ):
                if line.startswith(prefix):
                    found[key] = line.removeprefix(prefix).strip()
        # stdout must keep draining, or the demo blocks on a full pipe
        drain = subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
        d = Demo(
            folder=folder,
            port=port,
            url=found["url"],
            token=found["token"].rpartition(": ")[2],
            psql=found["psql"],
            proc=proc,
        )
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # the examples need a running job and a stream of demo-org
        with psycopg.connect(d.dsn()) as conn:
            while not conn.execute(
                "select 1 from jobs where org_id = 'demo-org' and status = 'running'"
            ).fetchone():
                assert time.monotonic() < deadline, "the demo worker wrote no running job"
                time.sleep(0.2)
        yield d
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if drain is not None:
            drain.wait(10)
    assert proc.returncode in (0, -signal.SIGTERM), proc.returncode


def run_example(demo: Demo, lang: str, body: str, timeout: float = 45) -> tuple[int | None, str]:
    """Run one README example after the setup block; a command that keeps running (a stream,
    `relay tail`) passes once it has printed its first line. Returns (exit code, stdout)."""
    body = body.replace("127.0.0.1:8080", f"127.0.0.1:{demo.port}")
    if lang == "sql":
        script = f"psql \"$DB\" -v ON_ERROR_STOP=1 -X -q <<'SQL'\n{body}\nSQL"
    elif lang == "python":
        script = f"exec {sys.executable} - <<'PY'\n{body}\nPY"
    else:
        script = body
    proc = subprocess.Popen(
        ["bash", "-ec", f"{SETUP}\n{script}"],
        cwd=demo.folder,
        env=demo.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = ""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                out += line
                if line.strip() and proc.poll() is None and lang != "sql":
                    # a long-running example answered: give it a moment to end by itself
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(0.5)
                    if proc.poll() is None:
                        return None, out
        else:
            pytest.fail(f"no output within {timeout} s from:\n{body}")
        proc.wait(timeout)
        err = proc.stderr.read()
        assert proc.returncode == 0, f"{body}\nexit {proc.returncode}\n{out}\n{err}"
        return proc.returncode, out
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


@pytest.mark.parametrize(
    ("lang", "body"),
    [(lang, body) for kind, lang, body in EXAMPLES if kind == "demo"],
    ids=[f"{lang}:{body.splitlines()[0][:40]}" for kind, lang, body in EXAMPLES if kind == "demo"],
)
def test_readme_example_runs_against_the_demo(demo: Demo, lang: str, body: str) -> None:
    _, out = run_example(demo, lang, body)
    assert out.strip(), f"no output from:\n{body}"
    assert '"error"' not in out and "Traceback" not in out, out


def test_the_examples_are_found() -> None:
    langs = [lang for kind, lang, _ in EXAMPLES if kind == "demo"]
    assert len(langs) >= 8 and {"sh", "sql", "python"} <= set(langs), langs
    assert {"TOKEN", "SERVICE_TOKEN", "STREAM_ID", "DB"} <= set(re.findall(r"export (\w+)=", SETUP))
    # every variable an example uses is defined by the setup block
    defined = set(re.findall(r"export (\w+)=", SETUP)) | {"PWD", "PATH", "AFTER"}
    for _kind, _, body in EXAMPLES:
        for var in re.findall(r"\$\{?(\w+)", body):
            assert var in defined, (var, body)


def test_demo_prints_a_working_psql_line_and_its_folder_shares_the_database(demo: Demo) -> None:
    assert demo.url.startswith(f"http://127.0.0.1:{demo.port}/?access_token=")
    psql = shutil.which("psql")
    if psql:
        r = subprocess.run(
            f"{demo.psql} -Atc 'select count(*) > 0 from relay.watched'",
            shell=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (r.returncode, r.stdout.strip()) == (0, "t"), r.stderr
    # status, token, watch/unwatch and tail find the demo's database and secret
    r = demo.relay("status", "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert any(w["table"] == "public.jobs" for w in snap["watched"])
    token = demo.relay("token", "--sub", "demo-user", "--org", "demo-org").stdout.strip()
    r2 = httpx.get(
        f"http://127.0.0.1:{demo.port}/v1/changes?sub=jobs&limit=1",
        headers={"authorization": f"Bearer {token}"},
    )
    assert r2.status_code == 200, r2.text
    with psycopg.connect(demo.dsn(), autocommit=True) as conn:
        conn.execute("create table if not exists notes (id int primary key, org_id text)")
    assert demo.relay("watch", "notes").returncode == 0
    assert demo.relay("unwatch", "notes").returncode == 0
    r = demo.relay("tail", "streams", "--count", "1", timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["event"], r.stderr


def test_the_psql_experiment_a_failed_job_stays_failed(demo: Demo) -> None:
    """The README's UPDATE: the page shows the job failed and the worker leaves it so."""
    with psycopg.connect(demo.dsn(), autocommit=True) as conn:
        update = next(b for k, _, b in EXAMPLES if k == "demo" and "UPDATE jobs" in b)
        after = conn.execute("select relay.current_position()").fetchone()[0]
        t0 = conn.execute("select now()").fetchone()[0]
        # the worker only ever completes jobs (it fails them only when it restarts), so a job
        # failed since t0 is the one the README's statement failed; between two of the worker's
        # jobs none is running, so run it again until it has caught one
        deadline = time.monotonic() + 60
        while True:
            run_example(demo, "sh", update)
            row = conn.execute(
                "select id, status, updated_at from jobs where org_id = 'demo-org' "
                "and status = 'failed' and updated_at >= %s",
                (t0,),
            ).fetchone()
            if row:
                break
            assert time.monotonic() < deadline, "the README's UPDATE never found a running job"
        job, failed = row[0], tuple(row[1:])
        # the worker goes on: wait for 8 more progress updates of demo-org's streams, each one
        # after a chance to advance the job, then the job must be as the person left it
        seen = 0
        mark = conn.execute("select relay.current_position()").fetchone()[0]
        deadline = time.monotonic() + 90
        while seen < 8:
            assert time.monotonic() < deadline, f"the worker advanced only {seen} times"
            seen += conn.execute(
                "select count(*) from relay.changes c join relay.batches b on b.id = c.batch "
                "where c.table_name = 'streams' and c.kind = 'UPDATE' "
                "and c.new->>'org_id' = 'demo-org' and b.base + c.ord - 1 > %s",
                (mark,),
            ).fetchone()[0]
            mark = conn.execute("select relay.current_position()").fetchone()[0]
            time.sleep(0.3)
        assert (
            conn.execute("select status, updated_at from jobs where id = %s", (job,)).fetchone()
            == failed
        )
    # Dana sees the failed job through the relay
    r = httpx.get(
        f"http://127.0.0.1:{demo.port}/v1/changes?sub=jobs&after={after}&limit=1000",
        headers={"authorization": f"Bearer {demo.token}"},
    )
    assert r.status_code == 200, r.text
    mine = [e["data"]["new"] for e in r.json()["events"] if e["data"]["new"].get("id") == str(job)]
    assert mine and mine[-1]["status"] == "failed", mine  # the last change of that job


def test_relay_js_size_claim_is_true() -> None:
    m = re.search(r"served at `/relay.js` \(under (\d+) KB( gzipped)?", README)
    assert m, "the README states relay.js's size"
    source = (ROOT / "relay" / "static" / "relay.js").read_bytes()
    size = len(gzip.compress(source)) if m.group(2) else len(source)
    assert size < int(m.group(1)) * 1000, size


def test_demo_viewers_match_the_readme() -> None:
    from relay.auth import demo_tokens
    from relay.demo import ORGS

    labels = [t["label"] for t in demo_tokens("x" * 32)]
    assert labels[0].startswith("Dana") and labels[1].startswith("Omar")
    assert [o for o, _ in ORGS] == ["demo-org", "other-org"]
    assert "Dana (`demo-user` of demo-org)" in README
    assert "relay token --sub demo-user --org demo-org" in SETUP
