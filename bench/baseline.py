"""The naive baseline: what a competent Python developer writes in an afternoon.

A trigger `pg_notify`s every row of its table as JSON
(`json_build_object('table', ..., 'type', TG_OP, 'record', row_to_json(NEW))`,
see `bench.database.NOTIFY_TRIGGER`); one uvicorn process runs this Starlette
app; `broadcaster[postgres]` LISTENs (asyncpg) and hands every notification
to every open stream's queue; each stream decodes it, keeps the rows its
token owns (row's `user_id` equals the token's `sub`, or its `org_id` the
token's `org_id` - the same tenant rule as the relay) and forwards them with
sse-starlette's `EventSourceResponse`.

Invariant: honest and idiomatic - library defaults, no sabotage, and no
tricks the relay is not allowed either. It is measured with the same load
client, the same rows and the same tokens as the relay. It has what this
design has by nature: no replay (NOTIFY is fire-and-forget), unbounded
per-stream queues, every stream woken for every change.

Run: `python -m bench.baseline --port P` with `BENCH_BASELINE_DSN` and
`BENCH_JWT_SECRET` in the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import AsyncIterator

import jwt
from broadcaster import Broadcast
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

CHANNEL = "bench_changes"


def create_app(dsn: str, secret: str, ping: float | None = None) -> Starlette:
    """The baseline ASGI app: `/v1/stream?sub=TABLE&access_token=JWT` and `/readyz`.

    `ping` is sse-starlette's keep-alive interval (None: its default, 15 s).
    """
    broadcast = Broadcast(dsn)

    async def stream(request: Request) -> Response:
        try:
            claims = jwt.decode(
                request.query_params.get("access_token", ""), secret, algorithms=["HS256"]
            )
        except jwt.InvalidTokenError:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        user_id = claims.get("sub")
        org_id = claims.get("org_id")
        table = request.query_params.get("sub", "").split(":")[0]

        async def events() -> AsyncIterator[dict[str, str]]:
            async with broadcast.subscribe(CHANNEL) as subscriber:
                yield {"event": "system", "data": json.dumps({"status": "SUBSCRIBED"})}
                async for event in subscriber:  # type: ignore[union-attr]
                    if event is None:
                        break
                    change = json.loads(event.message)
                    if change["table"] != table:
                        continue
                    row = change["record"] or {}
                    if (org_id is not None and row.get("org_id") == org_id) or (
                        user_id is not None and row.get("user_id") == user_id
                    ):
                        yield {"event": "postgres_changes", "data": event.message}

        return EventSourceResponse(events(), ping=ping)

    async def readyz(request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broadcast:
            yield

    return Starlette(
        routes=[Route("/v1/stream", stream), Route("/readyz", readyz)], lifespan=lifespan
    )


def main() -> None:
    import uvicorn

    from bench.loadclient import raise_nofile_limit

    parser = argparse.ArgumentParser(description="the naive SSE baseline (bench only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile_limit()
    ping = os.environ.get("BENCH_PING_SECONDS")
    app = create_app(
        os.environ["BENCH_BASELINE_DSN"],
        os.environ["BENCH_JWT_SECRET"],
        float(ping) if ping else None,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
