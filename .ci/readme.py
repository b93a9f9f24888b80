"""The README's Quickstart commands, for CI to run verbatim (stdlib only: run by python3).

    python3 .ci/readme.py command test|demo   print the command as the README gives it
    python3 .ci/readme.py check-demo          run the demo command, fetch the page, stop it

Invariant: the commands are read from README.md, never restated here, so CI
runs exactly what a new user copies.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def command(kind: str) -> str:
    """The one-line ```sh block of the Quickstart that runs the demo / the tests."""
    text = README.read_text()
    quick = text[text.index("## Quickstart") :]
    quick = quick[: quick.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)\n```", quick, re.S)
    needle = "relay demo" if kind == "demo" else "pytest"
    found = [b.strip() for b in blocks if needle in b]
    if len(found) != 1 or "\n" in found[0]:
        sys.exit(f"README Quickstart: expected one one-line ```sh block with {needle!r}: {found}")
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_demo() -> None:
    """Start the README's demo command (RELAY_PORT picks a free port), wait for the URL it
    prints, fetch the dashboard and a page of changes with its token, then stop it."""
    cmd = command("demo")
    port = free_port()
    print(f"$ {cmd}    (RELAY_PORT={port})", flush=True)
    env = {**os.environ, "RELAY_PORT": str(port)}
    env.pop("RELAY_DATABASE_URL", None)
    proc = subprocess.Popen(
        ["bash", "-c", cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    url = psql = None
    deadline = time.monotonic() + 600  # the command installs the package first
    try:
        while (url is None or psql is None) and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("relay: open "):
                url = line.removeprefix("relay: open ").strip()
            if line.startswith("relay: database (psql): "):
                psql = line.removeprefix("relay: database (psql): ").strip()
        if url is None or psql is None:
            sys.exit("the demo printed no URL and psql line:\n" + "".join(lines[-30:]))
        token = url.partition("access_token=")[2]
        page = _get(url)
        assert "relay" in page and "dashboard.js" in page, page[:200]
        base = url.partition("/?")[0]
        changes = json.loads(
            _get(f"{base}/v1/changes?sub=streams&limit=1", {"authorization": f"Bearer {token}"})
        )
        assert "position" in changes, changes
        print(f"ok: {url.partition('?')[0]} served the dashboard; /v1/changes answered", flush=True)
        print(f"ok: printed psql line: {psql}", flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            sys.exit("the demo did not stop within 60 s of SIGTERM")
    if code not in (0, -signal.SIGTERM):
        sys.exit(f"the demo exited with {code}")


def _get(url: str, headers: dict[str, str] | None = None) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.read().decode())


if __name__ == "__main__":
    if sys.argv[1:2] == ["command"] and len(sys.argv) == 3:
        print(command(sys.argv[2]))
    elif sys.argv[1:] == ["check-demo"]:
        check_demo()
    else:
        sys.exit(__doc__)
