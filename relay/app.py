"""The HTTP surface: Starlette routes wired to the hub, the listener and the pool.

Invariants: every request error is answered as JSON `{"error", "message"}`
with a 4xx status before a stream starts; an unexpected failure is logged
with its details and answered with a generic 503, never a stack trace.
Anonymous clients learn nothing about other clients: `/readyz` answers only
a status, `/metrics` is for operators (its own address, or loopback), the
demo's token route exists only in `relay demo` and answers loopback clients
only, and `POST /v1/broadcast` takes no cookie and no non-JSON body (a
cross-site form cannot forge one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from relay import logdb
from relay.auth import Authenticator, AuthError, JwksKeys, demo_tokens, token_from
from relay.broadcasts import TYPED_EVENTS, BroadcastRequest, schemas
from relay.catalog import Catalog
from relay.changes import system_frame
from relay.dsn import as_url
from relay.hub import SHUTDOWN
from relay.limits import Slot, StreamSlots, limit_key
from relay.listener import Listener
from relay.logreader import FLOORS, LogReader, Pruned
from relay.longpoll import changes_page
from relay.metrics import StreamStats, parse_address, registry_for, serve_metrics
from relay.principal import Principal
from relay.settings import Settings
from relay.snapshot import Limits, SnapshotRefused, SnapshotResponse, open_snapshot
from relay.stream import EventStream
from relay.subscriptions import RequestError, SubscriptionSet, parse_subscriptions, stale_reason
from relay.topicguard import Family, GuardedHub, family_index, replay_floors

log = logging.getLogger("relay.app")

MAX_POSITION = 2**63 - 1
FORWARDED = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


def is_loopback_client(request: Request) -> bool:
    """The peer is this machine and no proxy said it forwards someone else."""
    client = request.client
    if client is None:
        return False
    if any(k in FORWARDED for k, _ in request.scope.get("headers", ())):
        return False
    try:
        return ipaddress.ip_address(client.host).is_loopback
    except ValueError:
        return False


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def wants_snapshot(request: Request) -> bool:
    """The `snapshot` parameter: `true` or `false` (absent: false)."""
    value = request.query_params.get("snapshot")
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise RequestError(400, "invalid_parameter", "snapshot must be true or false")


def parse_last_event_id(value: str | None) -> tuple[int | None, bool]:
    """(position, ignored): ASCII decimal fitting a signed 64-bit integer, else ignored."""
    if value is None or value == "":
        return None, False
    if len(value) > 19 or not value.isascii() or not value.isdigit():
        return None, True
    n = int(value)
    if n > MAX_POSITION:
        return None, True
    return n, False


class Relay:
    """The running relay: settings, pool, catalog, hub and listener of one process."""

    def __init__(self, settings: Settings, dsn: str, secret: str | None) -> None:
        self.settings = settings
        self.dsn = dsn = as_url(dsn)
        jwks = None
        if settings.jwks_url or settings.jwks_file:
            jwks = JwksKeys(
                url=settings.jwks_url,
                path=settings.jwks_file,
                min_refresh=settings.jwks_min_refresh_seconds,
            )
        self.auth = Authenticator(
            secret,
            leeway=settings.jwt_leeway,
            jwks=jwks,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            org_claims=tuple(c.strip() for c in settings.jwt_org_claim.split(",") if c.strip()),
        )
        self.hub = GuardedHub(keepalive_seconds=settings.keepalive_seconds)
        self.hub.recheck = self.can_subscribe
        self.slots = StreamSlots(settings.max_streams_per_user)
        self._told_families = False
        self._metrics_server: asyncio.AbstractServer | None = None
        self.catalog = Catalog()
        self._catalog_loaded_at = -1.0
        self._catalog_lock = asyncio.Lock()
        self._told: set[tuple[int, str]] = set()
        self._pool: asyncpg.Pool | None = None
        self.stats = StreamStats()
        self.listener = Listener(
            dsn,
            self.hub,
            batch=settings.read_batch,
            poll_seconds=settings.poll_seconds,
            ready_max_lag=settings.ready_max_lag,
            on_catalog_change=self.refresh_catalog,
            application_name=settings.application_name,
            reads=self.stats.log_reads,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.demo_secret: str | None = None  # set in demo mode only
        self.prune_runs = 0
        self.last_head = 0
        self.metrics = registry_for(self)
        self.snapshot_gate = asyncio.Semaphore(settings.snapshot_concurrency)
        self.snapshot_limits = Limits(
            max_rows=settings.snapshot_max_rows,
            max_seconds=settings.snapshot_max_seconds,
            page_rows=settings.snapshot_page_rows,
        )

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "relay not started"
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=10,
            command_timeout=60,
            server_settings={"application_name": f"{self.settings.application_name}-reader"},
        )
        await self.refresh_catalog()
        await self.listener.start_position()
        if self.settings.metrics_address:
            host, port = parse_address(self.settings.metrics_address)
            self._metrics_server = await serve_metrics(
                self.render_metrics, host, port, self.settings.header_timeout_seconds
            )
        # Streams are long-lived: keep the start-up heap out of every full GC pass,
        # and collect the young generation less often (fewer loop stalls under load).
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        self._tasks = [
            asyncio.create_task(self.listener.run()),
            asyncio.create_task(self.hub.run_keepalives()),
            asyncio.create_task(self._prune_forever()),
        ]

    async def stop(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.close()
        retry = self.settings.retry_ms
        self.hub.close_all(SHUTDOWN, {"status": SHUTDOWN, "retry": retry}, retry_ms=retry)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.listener.stop()
        if self._pool is not None:
            await self._pool.close()

    async def prune_once(self) -> int:
        """Prune the log to the retention window in small steps; batches removed."""
        s = self.settings
        total = 0
        while True:
            async with self.pool.acquire() as conn:
                n = await logdb.prune(conn, s.retention_seconds, s.retention_count)
            total += n
            self.prune_runs += 1
            if n < 5000:
                return total

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.prune_interval_seconds)
            try:
                removed = await self.prune_once()
                if removed:
                    log.info("pruned the log", extra={"batches": removed})
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("pruning failed: %s", type(exc).__name__)

    async def refresh_catalog(self, *, unless_since: float | None = None) -> None:
        """Reload the catalog; with `unless_since`, skip if a load began after that time.

        One load at a time: requests that miss a table together share one reload.
        """
        async with self._catalog_lock:
            if unless_since is not None and self._catalog_loaded_at >= unless_since:
                return
            started = time.monotonic()
            async with self.pool.acquire() as conn:
                self.catalog = await logdb.load_catalog(conn)
                await self._load_families(conn)
            self._catalog_loaded_at = started
            self._tell_stale_subscriptions()

    def _tell_stale_subscriptions(self) -> None:
        """After DDL: a stream whose filter/select names a vanished column is told, once."""
        live = {id(s) for s in self.hub.subscribers}
        self._told = {k for k in self._told if k[0] in live}
        for s in list(self.hub.subscribers):
            for row in s.subs.rows:
                problem = stale_reason(row, self.catalog)
                key = (id(s), row.text)
                if problem is None or key in self._told:
                    continue
                self._told.add(key)
                if s.push(system_frame({"status": "SUBSCRIPTION_ERROR", **problem})):
                    s.wake()

    async def _load_families(self, conn: Any) -> None:
        try:
            rows = await logdb.load_topic_families(conn)
        except asyncpg.InsufficientPrivilegeError:
            if not self._told_families:
                self._told_families = True
                log.warning(
                    "cannot read relay.topic_families (grant select on it to the relay's "
                    "role, or run `relay migrate`): topics are not re-checked when the "
                    "row they rest on changes owner"
                )
            return
        self.hub.families = family_index(Family(*r) for r in rows)

    def _family_tables(self, topics: tuple[str, ...]) -> dict[tuple[str, str], list[Family]]:
        wanted = {t.split(":", 1)[0] for t in topics if ":" in t}
        out: dict[tuple[str, str], list[Family]] = {}
        for key, fams in self.hub.families.items():
            for f in fams:
                if f.family in wanted:
                    out.setdefault(key, []).append(f)
        return out

    async def principal(self, request: Request) -> Principal:
        return (await self.identify(request))[0]

    async def identify(
        self, request: Request, *, cookies: bool = True
    ) -> tuple[Principal, str | None]:
        """The verified principal and the token it came from (`cookies=False`: no cookie)."""
        token = token_from(
            request.headers, request.query_params, request.cookies if cookies else {}
        )
        return await self.auth.verify(token), token

    def take_slot(self, principal: Principal, token: str | None) -> Slot:
        """A stream slot of this token's owner, or 429 (checked and taken atomically)."""
        slot = self.slots.acquire(limit_key(principal, token or ""))
        if slot is None:
            n = self.settings.max_streams_per_user
            raise RequestError(
                429,
                "too_many_streams",
                f"this user already has {n} open streams or waiting long-polls "
                "(RELAY_MAX_STREAMS_PER_USER); close some, or carry several sub= on one",
            )
        return slot

    async def can_subscribe(self, principal: Principal, topic: str) -> bool:
        claims = dict(principal.claims)
        claims["org_ids"] = sorted(principal.orgs)
        async with self.pool.acquire() as conn:
            return await logdb.can_subscribe(conn, topic, claims)

    async def with_topic_floors(
        self, principal: Principal, subs: SubscriptionSet, after: int | None
    ) -> SubscriptionSet:
        """`subs` with the replay floors of its family topics (relay.topicguard)."""
        if principal.is_service or after is None or not subs.topics:
            return subs
        families = self._family_tables(subs.topics)
        if not families:
            return subs
        tables = sorted(families)
        floors: dict[str, int] = {}
        reader = LogReader(
            self.pool, batch=self.settings.read_batch, kind=FLOORS, reads=self.stats.log_reads
        )
        cursor = after
        while True:
            try:
                async for page in reader.pages(cursor, tables=tables, topics=[]):
                    for topic, pos in replay_floors(
                        page.changes, principal, families, subs.topics
                    ).items():
                        floors[topic] = max(floors.get(topic, 0), pos)
                    cursor = page.scanned_to
            except Pruned as exc:  # the stream resyncs; floors come from what is left
                cursor = max(cursor, exc.oldest)
                continue
            break
        return dataclasses.replace(subs, topic_floors=floors) if floors else subs

    async def render_metrics(self) -> bytes:
        try:
            async with self.pool.acquire() as conn:
                self.last_head = await logdb.current_position(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # lag is then computed against the last head seen
        return generate_latest(self.metrics)

    async def parse(self, request: Request, principal: Principal) -> SubscriptionSet:
        """Subscriptions of a request; an unknown table re-reads the catalog once."""
        s = self.settings
        params = request.query_params.multi_items()
        arrived = time.monotonic()
        for attempt in (1, 2):
            try:
                return parse_subscriptions(
                    params,
                    self.catalog,
                    principal,
                    max_subscriptions=s.max_subscriptions,
                    max_filter_length=s.max_filter_length,
                    max_in_values=s.max_in_values,
                )
            except RequestError as exc:
                if exc.code != "unknown_table" or attempt == 2:
                    raise
                await self.refresh_catalog(unless_since=arrived)
        raise AssertionError("unreachable")

    async def authorize_topics(self, principal: Principal, subs: SubscriptionSet) -> None:
        if principal.is_service or not subs.topics:
            return
        claims = dict(principal.claims)
        claims["org_ids"] = sorted(principal.orgs)
        known = {f.family for fams in self.hub.families.values() for f in fams}
        async with self.pool.acquire() as conn:
            unknown = any(t.split(":", 1)[0] not in known for t in subs.topics if ":" in t)
            if unknown:  # a family registered since the last load (it sends no NOTIFY)
                await self._load_families(conn)
            for topic in subs.topics:
                if not await logdb.can_subscribe(conn, topic, claims):
                    raise RequestError(
                        403,
                        "forbidden_topic",
                        f"topic {topic[:80]!r}: this token may not read it "
                        "(relay.can_subscribe denied)",
                    )


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _guarded(
    handler: Callable[[Request], Awaitable[Response | ASGIApp]],
) -> Callable[[Request], Awaitable[Response | ASGIApp]]:
    async def run(request: Request) -> Response | ASGIApp:
        try:
            return await handler(request)
        except SnapshotRefused as exc:
            return error(exc.status, exc.code, exc.message, exc.headers)
        except RequestError as exc:
            return error(exc.status, exc.code, exc.message)
        except AuthError as exc:
            return error(401, exc.code, exc.message)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            return error(503, "unavailable", "the database is unavailable; retry shortly")
        except Exception:
            log.exception("internal error on %s", request.url.path)
            return error(503, "internal_error", "internal error (logged on the server)")

    return run


class _Endpoint:
    """Adapts a handler that may return a raw ASGI app (the stream) to a route."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response | ASGIApp]]) -> None:
        self.handler = _guarded(handler)

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        request = Request(scope, receive)
        if "\x00" in request.url.query or "%00" in request.url.query:
            response: Response | ASGIApp = error(
                400, "invalid_parameter", "NUL character is not allowed in parameters"
            )
        else:
            response = await self.handler(request)
        if extra_headers:
            if isinstance(response, Response):
                response.raw_headers.extend(extra_headers)
            elif isinstance(response, _Slotted):
                response.stream.extra_headers = extra_headers
        await response(scope, receive, send)


class _Slotted:
    """A stream that holds a per-user slot until it ends (`relay.limits`)."""

    def __init__(self, stream: EventStream, slot: Slot) -> None:
        self.stream = stream
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream(scope, receive, send)
        finally:
            self.slot.release()


class _StreamsFirst:
    """The top-level ASGI app: `GET /v1/stream` goes straight to its endpoint.

    Starlette's middleware wraps every `send` of a response; for a stream that
    lives for hours and writes thousands of frames that is a large share of the
    relay's CPU. Streams are dispatched here, before the middleware, with the
    CORS headers of a listed origin added directly; everything else (preflight
    OPTIONS included) goes through the Starlette app.
    """

    def __init__(self, app: Starlette, stream: _Endpoint, cors_origins: list[str]) -> None:
        self.app = app
        self.stream = stream
        self.cors_origins = {o.encode() for o in cors_origins}
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/stream" and scope["method"] == "GET":
            extra: list[tuple[bytes, bytes]] = []
            if self.cors_origins:
                origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
                if origin in self.cors_origins:
                    extra = [
                        (b"access-control-allow-origin", origin),
                        (b"access-control-allow-credentials", b"true"),
                        (b"vary", b"Origin"),
                    ]
            await self.stream(scope, receive, send, extra)
            return
        await self.app(scope, receive, send)


def create_app(relay: Relay, *, start: bool = True) -> ASGIApp:
    """The ASGI app; with `start` the lifespan starts and stops the relay."""
    settings = relay.settings

    async def stream(request: Request) -> Response | ASGIApp:
        if request.method != "GET":  # Starlette adds HEAD to GET routes: no body, no stream
            return error(405, "method_not_allowed", "open the stream with GET")
        principal, token = await relay.identify(request)
        slot = relay.take_slot(principal, token)  # no await between check and take
        try:
            subs = await relay.parse(request, principal)
            await relay.authorize_topics(principal, subs)
            header = request.headers.get("last-event-id")
            raw = header if header is not None else request.query_params.get("last_event_id")
            last, ignored = parse_last_event_id(raw)
            subs = await relay.with_topic_floors(principal, subs, last)
            snapshot = None
            if wants_snapshot(request) and last is None:  # a resume never reloads
                snapshot = await open_snapshot(
                    relay.pool, relay.snapshot_gate, principal, subs, relay.snapshot_limits
                )
        except BaseException:
            slot.release()
            raise
        stream = EventStream(
            hub=relay.hub,
            pool=relay.pool,
            principal=principal,
            subs=subs,
            last_event_id=last,
            ignored_last_event_id=ignored,
            retry_ms=settings.retry_ms,
            max_events=settings.max_outbox_events,
            max_bytes=settings.max_outbox_bytes,
            read_batch=settings.read_batch,
            expiry_margin=settings.token_expiry_margin,
            close_grace=settings.close_grace_seconds,
            stats=relay.stats,
            snapshot=snapshot,
        )
        return _Slotted(stream, slot)

    async def snapshot(request: Request) -> Response | ASGIApp:
        if request.method != "GET":
            return error(405, "method_not_allowed", "take a snapshot with GET")
        principal = await relay.principal(request)
        subs = await relay.parse(request, principal)
        await relay.authorize_topics(principal, subs)
        return SnapshotResponse(
            await open_snapshot(
                relay.pool, relay.snapshot_gate, principal, subs, relay.snapshot_limits
            )
        )

    async def changes(request: Request) -> Response:
        principal, token = await relay.identify(request)
        waits = request.query_params.get("wait", "") not in ("", "0")
        # a waiting long-poll holds a connection like a stream: it takes a slot
        slot = relay.take_slot(principal, token) if waits else None
        try:
            subs = await relay.parse(request, principal)
            await relay.authorize_topics(principal, subs)
            after = request.query_params.get("after", "")
            if after.isascii() and after.isdigit() and len(after) <= 19:
                subs = await relay.with_topic_floors(principal, subs, int(after))
            return await changes_page(
                request,
                hub=relay.hub,
                pool=relay.pool,
                principal=principal,
                subs=subs,
                read_batch=settings.read_batch,
                max_bytes=settings.max_outbox_bytes,
                reads=relay.stats.log_reads,
            )
        finally:
            if slot is not None:
                slot.release()

    async def broadcast(request: Request) -> Response:
        # never by cookie: a browser would attach it to a cross-site form post
        principal, _ = await relay.identify(request, cookies=False)
        if not principal.is_service:
            return error(403, "forbidden", "only a service_role token may broadcast")
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return error(
                415,
                "unsupported_media_type",
                "send the broadcast as Content-Type: application/json",
            )
        try:
            async with asyncio.timeout(settings.body_timeout_seconds):
                raw = await _read_body(request, 1_000_000)
        except TimeoutError:
            return error(408, "request_timeout", "the request body did not arrive in time")
        if raw is None:
            return error(413, "too_large", "broadcast body is larger than 1 MB")
        try:
            body = BroadcastRequest.model_validate_json(raw)
            model = TYPED_EVENTS.get(body.event)
            if model is not None:
                model.model_validate(body.payload)
        except ValidationError as exc:
            return JSONResponse(
                {
                    "error": "invalid_payload",
                    "message": f"{exc.error_count()} validation error(s)",
                    "details": exc.errors(include_url=False, include_input=False),
                },
                status_code=422,
            )
        if "\x00" in body.topic or "\x00" in body.event:
            return error(400, "invalid_parameter", "NUL character is not allowed")
        try:
            async with relay.pool.acquire() as conn:
                position = await logdb.broadcast(
                    conn, body.topic, body.event, body.payload, body.org_id, body.user_id
                )
        except asyncpg.PostgresError as exc:
            if not str(exc.sqlstate).startswith("22"):  # not a data exception: re-raise
                raise
            return error(400, "invalid_payload", f"the database refused the payload: {exc}"[:200])
        return JSONResponse({"position": position}, status_code=202)

    async def broadcast_schema(request: Request) -> Response:
        return JSONResponse(schemas())

    async def metrics(request: Request) -> Response:
        if settings.metrics_address:
            return error(404, "not_found", "metrics are served on RELAY_METRICS_ADDRESS")
        if not is_loopback_client(request):
            return error(
                403,
                "forbidden",
                "metrics answer loopback clients only; set RELAY_METRICS_ADDRESS to serve "
                "them to a scraper on a separate address",
            )
        return Response(await relay.render_metrics(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        # only the status: positions and stream counts are for /metrics (operators)
        ready = relay.listener.ready
        body = {"status": "ready" if ready else "not_ready", "ready": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

    static = resources.files("relay").joinpath("static")

    async def index(request: Request) -> Response:
        return HTMLResponse(static.joinpath("index.html").read_text("utf-8"))

    async def relay_js(request: Request) -> Response:
        return Response(
            static.joinpath("relay.js").read_bytes(),
            media_type="text/javascript; charset=utf-8",
            headers={"cache-control": "no-cache"},
        )

    async def demo_tokens_route(request: Request) -> Response:
        if relay.demo_secret is None:
            return error(404, "not_found", "demo tokens exist only in `relay demo`")
        if not is_loopback_client(request):
            return error(403, "forbidden", "demo tokens are handed to loopback clients only")
        return JSONResponse(demo_tokens(relay.demo_secret), headers={"cache-control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start:
            await relay.start()
        try:
            yield
        finally:
            if start:
                await relay.stop()

    stream_endpoint = _Endpoint(stream)
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_credentials=True,
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "last-event-id"],
            )
        )
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/relay.js", relay_js, methods=["GET"]),
        Route("/demo/tokens", demo_tokens_route, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("relay", "static")]), name="static"),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/stream", stream_endpoint, methods=["GET"]),
        Route("/v1/changes", _Endpoint(changes), methods=["GET"]),
        Route("/v1/snapshot", _Endpoint(snapshot), methods=["GET"]),
        Route("/v1/broadcast", _Endpoint(broadcast), methods=["POST"]),
        Route("/v1/broadcast/schema", broadcast_schema, methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.relay = relay
    return _StreamsFirst(app, stream_endpoint, settings.cors_origins)
