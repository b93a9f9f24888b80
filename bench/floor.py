"""The floor: what one SSE send costs on this machine, with nothing else around it.

A bare ASGI app (no framework, no database) under uvicorn sends a ready
230-byte `postgres_changes` frame `n` times per stream, one `send` per
frame, as in docs/architecture.md, "Measured floor". CPU per send of this
process is the cost any SSE server pays per delivery; everything a server
spends above it per delivery is its own overhead. It is run with uvloop
(what `uvicorn.run` picks by default) and with the stdlib asyncio loop.

Invariant: the same load client reads it, so the figure is comparable with
the relay's and the baseline's CPU per delivery from the same run.

Run: `python -m bench.floor --port P --loop uvloop|asyncio`.
"""

from __future__ import annotations

import argparse
from typing import Any

FRAME = (
    b"id: 1\nevent: postgres_changes\ndata: "
    + b'{"schema":"public","table":"t","eventType":"INSERT","new":{"id":1,"body":"'
    + b"x" * 106
    + b'"},"old":{}}\n\n'
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/readyz` -> 200; `/v1/stream?n=N` -> SUBSCRIBED, then N frames, one send each."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/readyz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    n = 0
    for part in scope["query_string"].split(b"&"):
        if part.startswith(b"n="):
            n = int(part[2:])
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    hello = b'event: system\ndata: {"status":"SUBSCRIBED"}\n\n'
    await send({"type": "http.response.body", "body": hello, "more_body": True})
    for _ in range(n):
        await send({"type": "http.response.body", "body": FRAME, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="bare ASGI SSE sender (bench calibration)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
