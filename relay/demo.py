"""The demo's simulated worker: plain SQL writes, as our users' services make them.

Invariant: it only ever writes rows and calls `relay.broadcast` in ordinary
transactions; everything the dashboard shows reaches it through the relay.
"""

from __future__ import annotations

import asyncio
import logging
import random

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("relay.demo")

ORG = "demo-org"
USER = "demo-user"
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka"]
DIRECTORIES = ["Crunchbase", "G2", "Capterra", "ProductHunt", "Clutch", "AngelList"]


async def run_worker(dsn: str, *, pace: float = 1.0) -> None:
    """Forever: fill a stream, progress a job and an enrichment job, then start over."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                while True:
                    await _one_round(conn, pace)
        except asyncio.CancelledError:
            raise
        except psycopg.Error as exc:
            log.warning("demo worker: %s; retrying", exc)
            await asyncio.sleep(2)


async def _one_round(conn: psycopg.AsyncConnection, pace: float) -> None:
    total = 20
    cur = await conn.execute(
        "insert into streams (org_id, name, status, target_metrics) "
        "values (%s, %s, 'active', %s) returning id",
        (ORG, f"Prospects {random.randint(100, 999)}", Jsonb({"target": total})),
    )
    row = await cur.fetchone()
    assert row is not None
    stream_id = row[0]
    cur = await conn.execute(
        "insert into jobs (org_id, user_id, status, started_at) "
        "values (%s, %s, 'running', now()) returning id",
        (ORG, USER),
    )
    row = await cur.fetchone()
    assert row is not None
    job_id = row[0]
    cur = await conn.execute(
        "insert into bulk_enrichment_jobs (org_id, user_id, status, progress) "
        "values (%s, %s, 'running', %s) returning id",
        (ORG, USER, Jsonb({"total": total, "completed": 0, "failed": 0})),
    )
    row = await cur.fetchone()
    assert row is not None
    enrich_id = row[0]
    topic = f"stream-progress:{stream_id}"
    for i in range(1, total + 1):
        await asyncio.sleep(pace * random.uniform(0.3, 0.9))
        async with conn.transaction():
            await conn.execute(
                "insert into stream_items (stream_id, org_id, company_name, stage, quality_score) "
                "values (%s, %s, %s, %s, %s)",
                (
                    stream_id,
                    ORG,
                    random.choice(COMPANIES),
                    "enriched",
                    round(random.uniform(50, 99), 2),
                ),
            )
            await conn.execute(
                "update streams set progress = %s where id = %s",
                (Jsonb({"completed": i, "total": total}), stream_id),
            )
            await conn.execute(
                "select relay.broadcast(%s, 'progress-update', %s, %s)",
                (
                    topic,
                    Jsonb(
                        {
                            "stream_id": str(stream_id),
                            "completed": i,
                            "total": total,
                            "percentage": round(100 * i / total, 1),
                        }
                    ),
                    ORG,
                ),
            )
            failed = random.random() < 0.15
            await conn.execute(
                "insert into directory_submissions (job_id, org_id, directory_name, status, "
                "submitted_at, error_log) values (%s, %s, %s, %s, now(), %s)",
                (
                    job_id,
                    ORG,
                    random.choice(DIRECTORIES),
                    "failed" if failed else "submitted",
                    "timeout" if failed else None,
                ),
            )
            await conn.execute(
                "update jobs set directories_completed = directories_completed + %s, "
                "directories_failed = directories_failed + %s, progress_percentage = %s "
                "where id = %s",
                (0 if failed else 1, 1 if failed else 0, round(100 * i / total, 2), job_id),
            )
            await conn.execute(
                "update bulk_enrichment_jobs set progress = %s where id = %s",
                (
                    Jsonb({"total": total, "completed": i, "failed": 0, "current_batch": i // 5}),
                    enrich_id,
                ),
            )
            if i * 4 % total == 0:
                await conn.execute(
                    "select relay.broadcast(%s, 'milestone', %s, %s)",
                    (
                        topic,
                        Jsonb(
                            {
                                "stream_id": str(stream_id),
                                "type": f"{100 * i // total}%",
                                "title": f"{100 * i // total}% reached",
                                "description": f"{i} of {total} items",
                            }
                        ),
                        ORG,
                    ),
                )
    await conn.execute("update streams set status = 'completed' where id = %s", (stream_id,))
    await conn.execute(
        "update jobs set status = 'completed', completed_at = now() where id = %s", (job_id,)
    )
    await conn.execute(
        "update bulk_enrichment_jobs set status = 'completed' where id = %s", (enrich_id,)
    )
    await asyncio.sleep(pace * 2)
