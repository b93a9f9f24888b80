"""The demo's simulated worker: plain SQL writes, as our users' services make them.

Invariant: it only ever writes rows and calls `relay.broadcast` in ordinary
transactions (psycopg, nothing of relay's imported); everything the dashboard
shows reaches it through the relay. Progress bars move because a trigger on
`stream_items` (sql/demo/001_demo.sql) broadcasts `progress-update` after each
statement; the worker sends agent activities and milestones itself. It writes
for two organisations at once, so a viewer of one never sees the other's rows.

A person in psql comes first: the worker only advances a job whose status is
still `running` and a stream whose status is still `active` (it checks, under
a row lock, in the transaction that would write). A job or stream whose status
someone changed by hand is left as they left it, and the worker moves on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

log = logging.getLogger("relay.demo")

ORGS: tuple[tuple[str, str], ...] = (("demo-org", "demo-user"), ("other-org", "other-user"))
TARGET = 50
MILESTONES = (25, 50, 75, 100)
KEEP = {"streams": 6, "jobs": 6, "bulk_enrichment_jobs": 6, "agent_tasks": 12}

SEGMENTS = [
    "Series A fintechs in Berlin",
    "Climate-tech startups in the Nordics",
    "B2B SaaS scale-ups in Lisbon",
    "Healthtech companies in Boston",
    "Logistics platforms in Rotterdam",
    "AI infrastructure in Paris",
    "Developer tools in Amsterdam",
    "E-commerce brands in Madrid",
]
PREFIXES = [
    "Acme",
    "Northwind",
    "Globex",
    "Initech",
    "Hooli",
    "Vandelay",
    "Soylent",
    "Umbrella",
    "Stark",
    "Wayne",
    "Wonka",
    "Tyrell",
    "Cyberdyne",
    "Aperture",
    "Massive",
    "Pied Piper",
    "Blue Sun",
    "Oscorp",
    "Gringotts",
    "Monarch",
    "Nakatomi",
    "Virtucon",
    "Duff",
    "Ollivander",
]
SUFFIXES = ["Labs", "Analytics", "Cloud", "Systems", "Health", "Logistics", "AI", "Pay", "Works"]
DIRECTORIES = [
    "Crunchbase",
    "G2",
    "Capterra",
    "Product Hunt",
    "Clutch",
    "AngelList",
    "GetApp",
    "TrustRadius",
    "Dealroom",
    "BetaList",
    "SaaSworthy",
    "AlternativeTo",
]
AGENTS = [
    ("scout", "Scout", "discovery"),
    ("enricher", "Enricher", "enrichment"),
    ("scorer", "Scorer", "qualification"),
    ("writer", "Writer", "outreach"),
]
FAILURES = ["rate limited by the data provider", "website timed out", "no contact page found"]


async def run_worker(
    dsn: str, *, pace: float = 1.0, orgs: Sequence[tuple[str, str]] = ORGS
) -> None:
    """Forever, for each org: fill a stream to its target, with jobs, enrichment and tasks.

    `pace` scales every pause (0.2 is five times faster).
    """
    await asyncio.gather(
        *(_org_forever(dsn, org, user, pace, i * 1.3) for i, (org, user) in enumerate(orgs))
    )


async def _org_forever(dsn: str, org: str, user: str, pace: float, delay: float) -> None:
    await asyncio.sleep(delay * pace)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="relay-demo"
            ) as conn:
                worker = OrgWorker(conn, org, user, pace)
                await worker.check_trigger()
                await worker.recover()
                while True:
                    await worker.round()
        except asyncio.CancelledError:
            raise
        except psycopg.Error as exc:
            log.warning("demo worker (%s): %s; retrying", org, exc)
            await asyncio.sleep(2)


def _company() -> str:
    return f"{random.choice(PREFIXES)} {random.choice(SUFFIXES)}"


class OrgWorker:
    """One organisation's simulated services, writing through one connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], org: str, user: str, pace: float):
        self.conn = conn
        self.org = org
        self.user = user
        self.pace = pace
        self.trigger = True
        self.enrich_id: Any = None
        self.enrich_total = 0
        self.enrich_done = 0
        self.enrich_idle = 0
        self.tasks: list[tuple[Any, str, str]] = []  # (id, status, company)
        self.job_done = False
        self.released: list[Any] = []  # ids of jobs and streams someone else took over

    async def check_trigger(self) -> None:
        """Databases migrated before the progress trigger existed: send progress ourselves."""
        cur = await self.conn.execute(
            "select exists (select 1 from pg_trigger where tgname = 'stream_items_progress_ins')"
        )
        row = await cur.fetchone()
        self.trigger = bool(row and row[0])

    async def recover(self) -> None:
        """A previous run was stopped mid-round: close what it left in flight."""
        async with self.conn.transaction():
            for query in (
                "update streams set status = 'stopped' where org_id = %s and status = 'active'",
                "update jobs set status = 'failed', completed_at = now(), "
                "metadata = metadata || '{\"current_directory\": null}' "
                "where org_id = %s and status = 'running'",
                "update directory_submissions set status = 'failed', "
                "error_log = 'worker restarted' where org_id = %s and status = 'processing'",
                "update bulk_enrichment_jobs set status = 'cancelled' "
                "where org_id = %s and status in ('pending', 'running')",
                "update agent_tasks set status = 'failed' "
                "where org_id = %s and status in ('pending', 'in_progress')",
            ):
                await self.conn.execute(query, (self.org,))

    async def still(self, row_id: Any, table: str, status: str, *, lock: bool = False) -> bool:
        """Is this row still ours, i.e. in the status we left it? (False once a person
        changed its status or deleted it: from then on the worker leaves it alone.)"""
        cur = await self.conn.execute(
            sql.SQL("select status from {} where id = %s" + (" for update" if lock else "")).format(
                sql.Identifier(table)
            ),
            (row_id,),
        )
        row = await cur.fetchone()
        if row is not None and row[0] == status:
            return True
        if row_id not in self.released:
            self.released.append(row_id)
            log.info(
                "demo worker (%s): %s %s was changed by hand; leaving it", self.org, table, row_id
            )
        return False

    async def sleep(self, lo: float, hi: float) -> None:
        await asyncio.sleep(self.pace * random.uniform(lo, hi))

    async def one(self, query: str, params: Sequence[Any] = ()) -> Any:
        cur = await self.conn.execute(query, params)
        row = await cur.fetchone()
        assert row is not None
        return row[0]

    async def broadcast(self, topic: str, event: str, payload: dict[str, Any]) -> None:
        stamp = "last_updated" if event == "progress-update" else "timestamp"
        await self.conn.execute(
            "select relay.broadcast(%s, %s, %s::jsonb || jsonb_build_object(%s::text, now()), %s)",
            (topic, event, Jsonb(payload), stamp, self.org),
        )

    async def activity(
        self, stream_id: Any, agent: tuple[str, str, str], kind: str, message: str
    ) -> None:
        agent_id, name, agent_type = agent
        await self.broadcast(
            f"stream-progress:{stream_id}",
            "agent-activity",
            {
                "id": str(uuid.uuid4()),
                "stream_id": str(stream_id),
                "agent_id": agent_id,
                "agent_name": name,
                "agent_type": agent_type,
                "activity_type": kind,
                "message": message,
            },
        )

    async def milestone(self, stream_id: Any, kind: str, title: str, description: str) -> None:
        await self.broadcast(
            f"stream-progress:{stream_id}",
            "milestone",
            {
                "stream_id": str(stream_id),
                "type": kind,
                "title": title,
                "description": description,
                "data": {"target": TARGET},
            },
        )

    async def round(self) -> None:
        """One stream from creation to its target, then tidy up old rows."""
        segment = random.choice(SEGMENTS)
        stream_id = await self.one(
            "insert into streams (org_id, name, status, target_metrics) "
            "values (%s, %s, 'active', %s) returning id",
            (self.org, segment, Jsonb({"target": TARGET, "min_quality": 70})),
        )
        directories = random.sample(DIRECTORIES, len(DIRECTORIES))
        self.job_done = False
        job_id = await self.one(
            "insert into jobs (org_id, user_id, status, started_at, metadata) "
            "values (%s, %s, 'running', now(), %s) returning id",
            (
                self.org,
                self.user,
                Jsonb({"name": f"Directory listings · {segment}", "stream_id": str(stream_id)}),
            ),
        )
        for agent in AGENTS[:3]:
            await self.activity(stream_id, agent, "started", f"started on “{segment}”")
            await self.sleep(0.2, 0.5)
        completed = 0
        reached: set[int] = set()
        submission: Any = None
        while completed < TARGET:
            await self.sleep(0.8, 2.2)
            n = min(random.randint(1, 5), TARGET - completed)
            names = [_company() for _ in range(n)]
            if not await self.still(stream_id, "streams", "active"):
                break
            async with self.conn.transaction():
                # one statement for the burst: the trigger sends one progress-update
                await self.conn.execute(
                    "insert into stream_items (stream_id, org_id, company_name, stage, "
                    "quality_score) select %s, %s, c, 'discovered', q "
                    "from unnest(%s::text[], %s::numeric[]) as t(c, q)",
                    (
                        stream_id,
                        self.org,
                        names,
                        [round(random.uniform(52, 98), 1) for _ in names],
                    ),
                )
                await self.conn.execute(
                    "update stream_items set stage = case stage when 'discovered' then 'enriched' "
                    "else 'qualified' end where id in (select id from stream_items "
                    "where stream_id = %s and stage <> 'qualified' and quality_score >= 70 "
                    "order by created_at limit %s)",
                    (stream_id, random.randint(1, 4)),
                )
                completed += n
                await self.conn.execute(
                    "update streams set progress = %s where id = %s",
                    (Jsonb({"completed": completed, "total": TARGET}), stream_id),
                )
                if not self.trigger:
                    await self.broadcast(
                        f"stream-progress:{stream_id}",
                        "progress-update",
                        {
                            "stream_id": str(stream_id),
                            "completed": completed,
                            "total": TARGET,
                            "percentage": round(100 * completed / TARGET, 1),
                        },
                    )
                await self.activity(
                    stream_id,
                    AGENTS[0],
                    "progress",
                    f"found {', '.join(names[:2])}" + (f" and {n - 2} more" if n > 2 else ""),
                )
            pct = 100 * completed // TARGET
            for m in MILESTONES:
                if pct >= m and m not in reached:
                    reached.add(m)
                    await self.milestone(
                        stream_id,
                        f"{m}%",
                        f"{m}% of the target",
                        f"{completed} of {TARGET} companies found",
                    )
            if random.random() < 0.7:
                submission = await self.directory_step(job_id, directories, completed, submission)
            await self.enrichment_step()
            await self.task_step(stream_id, names)
            if random.random() < 0.5:
                agent = random.choice(AGENTS[1:3])
                if random.random() < 0.12:
                    await self.activity(stream_id, agent, "failed", random.choice(FAILURES))
                else:
                    verb = "enriched" if agent[0] == "enricher" else "scored"
                    await self.activity(stream_id, agent, "progress", f"{verb} {names[0]}")
        if completed >= TARGET:
            await self.milestone(
                stream_id,
                "target_reached",
                "Target reached",
                f"{TARGET} companies found for “{segment}”",
            )
        await self.directory_step(job_id, directories, completed, submission, final=True)
        async with self.conn.transaction():
            for agent in AGENTS[:3]:
                await self.activity(stream_id, agent, "completed", "finished")
            await self.conn.execute(
                "update streams set status = 'completed' where id = %s and status = 'active'",
                (stream_id,),
            )
        for _ in range(4):  # let the last tasks finish their drafts
            await self.sleep(0.6, 1.2)
            await self.task_step(stream_id, [])
        await self.tidy()
        await self.sleep(2.5, 4.0)

    async def directory_step(
        self,
        job_id: Any,
        directories: list[str],
        completed: int,
        submission: Any,
        final: bool = False,
    ) -> Any:
        """Finish the directory being processed, start the next one, update the job."""
        if self.job_done:
            return None
        async with self.conn.transaction():
            if not await self.still(job_id, "jobs", "running", lock=True):
                self.job_done = True
                if submission is not None:
                    await self.conn.execute(
                        "update directory_submissions set status = 'failed', "
                        "error_log = 'job stopped by hand' where id = %s and status = 'processing'",
                        (submission,),
                    )
                return None
            ok = failed = 0
            if submission is not None:
                failed = int(random.random() < 0.18)
                ok = 1 - failed
                await self.conn.execute(
                    "update directory_submissions set status = %s, submitted_at = now(), "
                    "error_log = %s where id = %s",
                    (
                        "failed" if failed else "submitted",
                        random.choice(FAILURES) if failed else None,
                        submission,
                    ),
                )
            done = self.job_done = final or not directories
            current = None if done else directories.pop()
            if current is not None:
                submission = await self.one(
                    "insert into directory_submissions (job_id, org_id, directory_name, status) "
                    "values (%s, %s, %s, 'processing') returning id",
                    (job_id, self.org, current),
                )
            else:
                submission = None
            await self.conn.execute(
                "update jobs set directories_completed = directories_completed + %s, "
                "directories_failed = directories_failed + %s, progress_percentage = %s, "
                "metadata = metadata || %s, status = %s, "
                "completed_at = case when %s then now() end where id = %s",
                (
                    ok,
                    failed,
                    100 if done else round(min(99.0, 100 * completed / TARGET), 2),
                    Jsonb({"current_directory": current}),
                    "completed" if done else "running",
                    done,
                    job_id,
                ),
            )
        return submission

    async def enrichment_step(self) -> None:
        """A bulk enrichment job for the user: pending, running, completed; then another."""
        if self.enrich_id is None:
            self.enrich_idle -= 1
            if self.enrich_idle > 0:
                return
            self.enrich_total = random.randint(12, 40)
            self.enrich_done = 0
            self.enrich_id = await self.one(
                "insert into bulk_enrichment_jobs (org_id, user_id, status, progress) "
                "values (%s, %s, 'pending', %s) returning id",
                (
                    self.org,
                    self.user,
                    Jsonb(
                        {
                            "total": self.enrich_total,
                            "completed": 0,
                            "failed": 0,
                            "current_batch": 0,
                        }
                    ),
                ),
            )
            return
        self.enrich_done = min(self.enrich_total, self.enrich_done + random.randint(2, 7))
        finished = self.enrich_done >= self.enrich_total
        await self.conn.execute(
            "update bulk_enrichment_jobs set status = %s, progress = %s where id = %s",
            (
                "completed" if finished else "running",
                Jsonb(
                    {
                        "total": self.enrich_total,
                        "completed": self.enrich_done,
                        "failed": 0,
                        "current_batch": self.enrich_done // 5 + 1,
                    }
                ),
                self.enrich_id,
            ),
        )
        if finished:
            self.enrich_id = None
            self.enrich_idle = random.randint(2, 5)

    async def task_step(self, stream_id: Any, names: list[str]) -> None:
        """Agent tasks: pending -> in_progress -> completed with a draft."""
        moved: list[tuple[Any, str, str]] = []
        for task_id, status, company in self.tasks:
            if status == "pending" and random.random() < 0.6:
                await self.conn.execute(
                    "update agent_tasks set status = 'in_progress' where id = %s", (task_id,)
                )
                status = "in_progress"
            elif status == "in_progress" and random.random() < 0.5:
                draft = (
                    f"Hi {company} team — we noticed you're growing fast and thought our "
                    "directory listings could help more buyers find you. Worth a quick call?"
                )
                await self.conn.execute(
                    "update agent_tasks set status = 'completed', draft = %s where id = %s",
                    (draft, task_id),
                )
                await self.activity(stream_id, AGENTS[3], "completed", f"draft ready for {company}")
                status = "completed"
            if status != "completed":
                moved.append((task_id, status, company))
        self.tasks = moved
        if names and random.random() < 0.45:
            company = names[0]
            task_id = await self.one(
                "insert into agent_tasks (org_id, agent_id, contact_id, status) "
                "values (%s, 'writer', %s, 'pending') returning id",
                (self.org, company),
            )
            self.tasks.append((task_id, "pending", company))
            await self.activity(stream_id, AGENTS[3], "started", f"drafting an email to {company}")

    async def tidy(self) -> None:
        """Keep the demo tables small: only the newest rows of this org (and what a person
        took over by hand, until the worker restarts)."""
        live = [t[0] for t in self.tasks] + self.released
        if self.enrich_id is not None:
            live.append(self.enrich_id)
        for table, keep in KEEP.items():
            await self.conn.execute(
                sql.SQL(
                    "delete from {t} where org_id = %s and id <> all(%s) and id not in "
                    "(select id from {t} where org_id = %s order by created_at desc limit %s)"
                ).format(t=sql.Identifier(table)),
                (self.org, live, self.org, keep),
            )
