"""The `relay` command: serve, demo, migrate, tail, token.

Invariants: the relay never starts open to the network: without
`RELAY_JWT_SECRET` or a JWKS, `relay serve` refuses to listen beyond loopback
(on loopback, with the embedded database, it makes a local secret and prints
a token on the console). Only `relay demo` has a token route, and it signs
with the demo's own secret, never with a configured one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import orjson

from relay.auth import demo_tokens
from relay.settings import Settings


def _setup_logging(settings: Settings) -> None:
    from relay.logs import setup_logging

    setup_logging(settings.log_format, settings.log_level)


def _database(settings: Settings, *, demo_ok: bool) -> tuple[str, Any]:
    """The DSN to use: RELAY_DATABASE_URL, or the embedded server (demo only)."""
    if settings.database_url:
        return settings.database_url, None
    if not demo_ok:
        sys.exit("relay: set RELAY_DATABASE_URL (or use `relay serve` for the embedded demo)")
    from relay.embedded import start_embedded

    print(f"relay: starting embedded PostgreSQL in {settings.data_dir}/pg ...", flush=True)
    return start_embedded(settings.data_dir)


def _serve(args: argparse.Namespace, *, with_worker: bool) -> None:
    from relay.app import Relay, create_app
    from relay.migrate import migrate
    from relay.server import make_server

    settings = Settings()
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    _setup_logging(settings)
    embedded = not settings.database_url
    demo = with_worker or args.demo_tokens
    has_jwks = bool(settings.jwks_url or settings.jwks_file)
    if not demo and not settings.jwt_secret and not has_jwks:
        if not is_loopback(settings.host):
            sys.exit(
                f"relay: refusing to listen on {settings.host} without authentication: "
                "set RELAY_JWT_SECRET (or RELAY_JWKS_URL/RELAY_JWKS_FILE), "
                "or listen on 127.0.0.1"
            )
        if not embedded:
            sys.exit(
                "relay: neither RELAY_JWT_SECRET nor RELAY_JWKS_URL/RELAY_JWKS_FILE is set; "
                "refusing to start without authentication "
                "(unset RELAY_DATABASE_URL to run the embedded database on 127.0.0.1)"
            )
    dsn, server = _database(settings, demo_ok=True)
    secret = settings.jwt_secret
    if embedded or with_worker:
        applied = migrate(dsn, demo=True)
        if applied:
            print(f"relay: migrated ({', '.join(applied)})", flush=True)
    if demo or (embedded and not secret and not has_jwks):
        from relay.embedded import demo_secret

        if demo and secret and with_worker:
            print(
                "relay demo: RELAY_JWT_SECRET is not used: demo tokens are signed with the "
                "demo's own secret",
                flush=True,
            )
        # the demo's own secret, never a configured one (`relay demo` signs tokens with it)
        secret = demo_secret(settings.data_dir)
    demo_mode = demo
    if args.workers > 1:
        try:
            code = asyncio.run(
                _supervise(args, settings, dsn, secret, with_worker=with_worker, demo=demo_mode)
            )
        finally:
            if server is not None:
                server.cleanup()
        sys.exit(code)
    relay = Relay(settings, dsn, secret)
    app = create_app(relay)
    url = f"http://{settings.host}:{settings.port}"
    if demo_mode and secret:
        relay.demo_secret = secret  # the token route of `relay demo` (loopback clients only)
        first = demo_tokens(secret)[0]
        print(f"relay: demo token ({first['label']}, 24 h): {first['token']}", flush=True)
        print(f"relay: open {url}/?access_token={first['token']}", flush=True)
    elif embedded and secret and not settings.jwt_secret:
        # printed here only: `relay serve` never hands out tokens over HTTP
        first = demo_tokens(secret)[0]
        print(f"relay: serving on {url} (loopback only: no RELAY_JWT_SECRET)", flush=True)
        print(f"relay: a local token ({first['label']}, 24 h): {first['token']}", flush=True)
    else:
        print(f"relay: serving on {url}", flush=True)
    uv = make_server(relay, app, settings.host, settings.port)
    sockets = [_reuse_port_socket(settings.host, settings.port)] if args.reuse_port else None

    async def main() -> None:
        worker: asyncio.Task[None] | None = None
        if with_worker:
            from relay.demo import run_worker

            worker = asyncio.create_task(run_worker(dsn))
        try:
            await uv.serve(sockets=sockets)
        finally:
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    try:
        run_loop(main())
    finally:
        if server is not None:
            server.cleanup()


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


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket several worker processes can share (the kernel spreads accepts)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


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
    env = {**os.environ, "RELAY_DATABASE_URL": dsn}
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
    demo_task: asyncio.Task[None] | None = None
    if with_worker:
        from relay.demo import run_worker

        demo_task = asyncio.create_task(run_worker(dsn))

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

    print(f"relay: {args.workers} workers on http://{settings.host}:{settings.port}", flush=True)
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

    settings = Settings()
    if args.database_url:
        settings.database_url = args.database_url
    dsn, server = _database(settings, demo_ok=True)
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

    conn = await asyncpg.connect(dsn)
    try:
        catalog = await logdb.load_catalog(conn)
    finally:
        await conn.close()
    principal = Principal(sub=None, orgs=frozenset(), role=SERVICE_ROLE, exp=None, claims={})
    params = [("sub", s) for s in subs] + [("topic", t) for t in topics]
    try:
        subset = parse_subscriptions(params, catalog, principal)
    except RequestError as exc:
        sys.exit(f"relay tail: {exc.message}")
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
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.stop()


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


async def _tail_url(
    url: str, token: str, subs: Sequence[str], topics: Sequence[str], after: int | None, count: int
) -> None:
    from relay.client import RelayClient

    n = 0
    async with RelayClient(url, token=token, last_id=after) as rc:
        async for change in rc.subscribe(*subs, topic=list(topics)):
            sys.stdout.write(change.model_dump_json() + "\n")
            sys.stdout.flush()
            n += 1
            if count and n >= count:
                return


def _tail_cmd(args: argparse.Namespace) -> None:
    settings = Settings()
    if args.url:
        if not args.token:
            sys.exit("relay tail: --url needs --token (a JWT the relay accepts)")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                _tail_url(args.url, args.token, args.subs, args.topic or [], args.after, args.count)
            )
        return
    dsn = args.database_url or settings.database_url
    if not dsn:
        sys.exit("relay tail: set RELAY_DATABASE_URL or pass --database-url")
    if not args.subs and not args.topic:
        sys.exit("relay tail: give at least one SUB (e.g. jobs:UPDATE) or --topic")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(dsn, args.subs, args.topic or [], args.count))


def _token_cmd(args: argparse.Namespace) -> None:
    from relay.auth import make_token

    settings = Settings()
    secret = settings.jwt_secret
    if not secret:
        from relay.embedded import demo_secret

        secret = demo_secret(settings.data_dir)
    print(
        make_token(
            secret,
            sub=args.sub,
            org_ids=args.org or None,
            role=args.role,
            ttl=args.ttl,
        )
    )


def _dsn_or_exit(args: argparse.Namespace, cmd: str) -> str:
    dsn = args.database_url or Settings().database_url
    if not dsn:
        sys.exit(f"relay {cmd}: set RELAY_DATABASE_URL or pass --database-url")
    return str(dsn)


def _status_cmd(args: argparse.Namespace) -> None:
    from relay.status import format_status, status

    settings = Settings()
    snap = status(_dsn_or_exit(args, "status"))
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

    dsn = _dsn_or_exit(args, args.cmd)
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
    except psycopg.Error as exc:
        sys.exit(f"relay {args.cmd}: {str(exc).strip()}")
    print(f"relay: {args.cmd}ed {args.table}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="relay", description="PostgreSQL row changes to browsers over SSE"
    )
    cmds = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in (
        ("serve", "run the relay (embedded Postgres when RELAY_DATABASE_URL is unset)"),
        ("demo", "run the relay plus a simulated worker writing plain SQL"),
    ):
        p = cmds.add_parser(name, help=help_)
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=None)
        p.add_argument("--workers", type=int, default=1, help="relay processes sharing the port")
        p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
        p.add_argument("--demo-tokens", action="store_true", help=argparse.SUPPRESS)
    p = cmds.add_parser("migrate", help="install/upgrade the relay schema")
    p.add_argument("--demo", action="store_true", help="also create the example tables")
    p.add_argument("--database-url", default=None)
    p = cmds.add_parser("tail", help="print matching changes as JSON lines")
    p.add_argument("subs", nargs="*", metavar="SUB", help="e.g. jobs:UPDATE:status=eq.running")
    p.add_argument("--topic", action="append", help="a broadcast topic (repeatable)")
    p.add_argument("--database-url", default=None, help="read the database directly")
    p.add_argument("--url", default=None, help="or read a relay (with --token)")
    p.add_argument("--token", default=None)
    p.add_argument("--after", type=int, default=None, help="with --url: resume after this")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p = cmds.add_parser("token", help="print a signed token (RELAY_JWT_SECRET or the demo's)")
    p.add_argument("--sub", default=None)
    p.add_argument("--org", action="append", help="an org id (repeatable)")
    p.add_argument("--role", default="authenticated")
    p.add_argument("--ttl", type=float, default=3600.0)
    p = cmds.add_parser("status", help="watched tables, log size and bounds, connected relays")
    p.add_argument("--database-url", default=None)
    p.add_argument("--json", action="store_true")
    p = cmds.add_parser("watch", help="start capturing a table (relay.watch)")
    p.add_argument("table")
    p.add_argument("--user-column", default=None)
    p.add_argument("--org-column", default=None)
    p.add_argument("--exclude", action="append", help="a column never captured (repeatable)")
    p.add_argument(
        "--no-old",
        action="store_true",
        help="log only the primary key of old row versions (smaller log)",
    )
    p.add_argument("--database-url", default=None)
    p = cmds.add_parser("unwatch", help="stop capturing a table (relay.unwatch)")
    p.add_argument("table")
    p.add_argument("--database-url", default=None)
    cmds.add_parser("config", help="print the configuration reference (markdown)")
    args = parser.parse_args(argv)
    logging.captureWarnings(True)
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


if __name__ == "__main__":
    main()
