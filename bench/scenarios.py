"""The scenarios of issue 6, each run against the relay and then the baseline.

What each measures (server CPU is user+system seconds of the server process
during the window, from psutil; latency is commit->receive from the `ts`
column; deliveries are frames counted by the load client):
- calibration: CPU per send of a bare ASGI app (the floor on this machine);
- 1 fan-out: N subscribers of one org, R changes/s -> deliveries/s, latency
  p50/p95/p99, server CPU per delivery; then a ramp of the insert rate
  (multi-row inserts above 100/s) until deliveries/s stop growing or p99
  explodes -> the maximum deliveries/s;
- 2 selective: 10 / 1,000 / 10,000 subscribers each scoped to its own user,
  changes for random subscribed users (one delivery each) -> server CPU per
  change, which should not grow with the number of subscribers;
- 3 connections: 10,000 idle streams on one process -> time to connect them,
  RSS per stream, CPU while idle with keep-alives every 15 s;
- 4 writes: pgbench insert throughput, unwatched vs relay-watched vs the
  naive NOTIFY trigger, 1 and 8 writers (the capture's cost to writers);
- 5 catch-up: one stream resuming N changes behind -> events/s until live;
- 6 slow consumers: the fan-out load, then 100 more subscribers that stop
  reading -> RSS growth, whether they are cut off, the others' p99.

Invariants: one system runs at a time (never both competing for the two
cores); every server is a fresh subprocess stopped at the end of its
scenario; every wait is bounded; the same load client, rows and tokens are
used for both systems. On each server a "sentinel" stream is opened first
and kept (broadcaster 0.3.1 loses subscribers that subscribe concurrently
while its channel has none; opening one first avoids measuring that bug).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import asyncpg
import numpy as np

from bench import servers
from bench.database import NAIVE_TABLE, RELAY_TABLE, BenchDatabase
from bench.loadclient import GroupStats, LoadClient
from bench.servers import Server
from bench.writer import BODY, insert_bulk, write_rows
from relay.auth import make_token

SERVER_CM = Callable[[], contextlib.AbstractContextManager[Server]]
NO_KEEPALIVE = 3600.0  # for windows that measure changes, not keep-alives


@dataclass(frozen=True)
class Config:
    """Sizes of one run (`smoke()` for CI, `full()` for the real figures)."""

    smoke: bool
    fan_subs: int = 1000
    fan_levels: tuple[int, ...] = (100,)  # also measured on the way up to fan_subs
    fan_rate: float = 50.0
    fan_seconds: float = 4.0
    ramp_rates: tuple[float, ...] = (50, 100, 200, 400, 800, 1600)
    ramp_seconds: float = 3.0
    sel_levels: tuple[int, ...] = (10, 1000, 10_000)
    sel_changes: int = 100
    sel_rate: float = 25.0
    conn_n: int = 10_000
    idle_seconds: float = 16.0
    write_rounds: int = 4  # interleaved 1-second pgbench slices per configuration
    writers: tuple[int, ...] = (1, 8)
    write_modes: tuple[str, ...] = ("on", "off")  # synchronous_commit
    catchup_rows: int = 100_000
    slow_normal: int = 1000
    slow_n: int = 100
    slow_rate: float = 50.0
    slow_seconds: tuple[float, float] = (6.0, 10.0)
    slow_body: int = 1000
    slow_outbox_bytes: int = 128 * 1024
    floor_streams: int = 100
    floor_frames: int = 2000
    relay_uvloop: bool = False

    @staticmethod
    def full(**kw: Any) -> Config:
        return Config(smoke=False, **kw)

    @staticmethod
    def tiny(**kw: Any) -> Config:
        """Smoke sizes: every code path, a few seconds each."""
        return Config(
            smoke=True,
            fan_subs=20,
            fan_levels=(5,),
            fan_seconds=1.0,
            ramp_rates=(200,),
            ramp_seconds=1.0,
            sel_levels=(10, 50),
            sel_changes=20,
            sel_rate=20.0,
            conn_n=100,
            idle_seconds=1.0,
            write_rounds=1,
            write_modes=("on",),
            catchup_rows=2000,
            slow_normal=20,
            slow_n=5,
            slow_seconds=(0.5, 1.5),
            slow_outbox_bytes=16 * 1024,
            floor_streams=10,
            floor_frames=500,
            **kw,
        )


@dataclass
class Bench:
    """What the scenarios share: the database, the load client, the config."""

    db: BenchDatabase
    client: LoadClient
    cfg: Config
    log: Callable[[str], None] = print
    ttl: float = 4 * 3600

    def relay(self, **settings: str | int | float) -> contextlib.AbstractContextManager[Server]:
        return servers.relay(self.db.dsn, force_uvloop=self.cfg.relay_uvloop, **settings)

    def baseline(self, **kw: Any) -> contextlib.AbstractContextManager[Server]:
        return servers.baseline(self.db.dsn, **kw)

    def token(self, sub: str, org: str | None = None) -> str:
        return make_token(servers.SECRET, sub=sub, org_id=org, ttl=self.ttl)

    def path(self, table: str, token: str, **extra: str | int) -> str:
        return "/v1/stream?" + urlencode({"sub": table, "access_token": token, **extra})

    def fan_paths(self, table: str, n: int, org: str = "o1", prefix: str = "fan") -> list[str]:
        return [self.path(table, self.token(f"{prefix}-{i}", org)) for i in range(n)]

    async def sentinel(self, srv: Server, table: str) -> None:
        """One stream first and kept open (see the module docstring)."""
        r = await self.client.open("sentinel", srv.port, [self.path(table, self.token("s", "s"))])
        if r.ok != 1:
            raise RuntimeError(f"{srv.name}: sentinel stream failed: {r.errors}")


# ------------------------------------------------------------------ helpers


async def settle(bench: Bench, seconds: float, srv: Server | None = None) -> None:
    """Let a server finish what it was doing (shorter at smoke sizes).

    With `srv`, also wait (at most 20 s) until it is quiet: under 5% of a core
    for two 0.25 s samples in a row, so a window never pays for the previous
    step (closing thousands of streams, a garbage collection).
    """
    await asyncio.sleep(seconds / 5 if bench.cfg.smoke else seconds)
    if srv is None:
        return
    deadline = time.monotonic() + (1 if bench.cfg.smoke else 20)
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        c0 = srv.cpu()
        await asyncio.sleep(0.25)
        quiet = quiet + 1 if srv.cpu() - c0 < 0.0125 else 0


def percentiles(lat_seconds: Sequence[float] | np.ndarray[Any, Any]) -> dict[str, float | None]:
    a = np.asarray(lat_seconds, dtype=float) * 1000.0
    if a.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(a.max()), 2),
    }


async def open_all(bench: Bench, group: str, srv: Server, paths: Sequence[str], **kw: Any) -> Any:
    r = await bench.client.open(group, srv.port, paths, **kw)
    if r.failed:
        raise RuntimeError(f"{srv.name}: {r.failed} of {len(paths)} streams failed: {r.errors}")
    return r


@dataclass
class Window:
    """One measured write: rows written, frames received, CPU of server and client."""

    rows: int
    expected: int
    stats: GroupStats
    seconds: float
    server_cpu: float
    client_cpu: float
    write_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self, processes: int) -> dict[str, Any]:
        s = self.stats
        deliveries_per_s = s.frames / self.seconds if self.seconds > 0 else 0.0
        return {
            "rows": self.rows,
            "expected": self.expected,
            "delivered": s.frames,
            "missing": max(0, self.expected - s.frames),
            "deliveries_per_s": round(deliveries_per_s),
            "server_cpu_s": round(self.server_cpu, 3),
            "cpu_us_per_delivery": round(self.server_cpu / s.frames * 1e6, 2) if s.frames else None,
            "client_cpu_util": round(self.client_cpu / (self.seconds * processes), 2)
            if self.seconds > 0
            else None,
            "write_seconds": round(self.write_seconds, 2),
            "too_slow": s.too_slow,
            **percentiles(s.latencies),
            **self.extra,
        }


async def measured_write(
    bench: Bench,
    srv: Server,
    group: str,
    table: str,
    *,
    rate: float,
    seconds: float,
    org: str,
    users: Sequence[str],
    per_row: int,
    drain: float = 15.0,
    body: str = BODY,
) -> Window:
    """Write at `rate` for `seconds`; wait until every frame arrived (or `drain` more s)."""
    client = bench.client
    await client.reset(group)
    cpu0, ccpu0 = srv.cpu(), client.cpu_seconds()
    t0 = time.time()
    w = await write_rows(
        bench.db.dsn, table, rate=rate, seconds=seconds, org_id=org, users=users, body=body
    )
    expected = w.rows * per_row
    await client.wait_frames(group, expected, drain)
    cpu1, ccpu1 = srv.cpu(), client.cpu_seconds()
    stats = await client.collect(group)
    end = stats.last_frame_at if stats.frames else time.time()
    return Window(
        rows=w.rows,
        expected=expected,
        stats=stats,
        seconds=max(1e-6, end - t0),
        server_cpu=cpu1 - cpu0,
        client_cpu=ccpu1 - ccpu0,
        write_seconds=w.seconds,
    )


def ratio(relay: float | None, baseline: float | None, higher_is_better: bool) -> float | None:
    """How many times better the relay is (> 1: relay better)."""
    if not relay or not baseline:
        return None
    return round(relay / baseline if higher_is_better else baseline / relay, 2)


# ------------------------------------------------------------- calibration


async def calibration(bench: Bench) -> dict[str, Any]:
    """CPU per send of a bare ASGI SSE app, uvloop and stdlib asyncio loop."""
    cfg = bench.cfg
    out: dict[str, Any] = {}
    loops = ("uvloop",) if cfg.smoke else ("uvloop", "asyncio")
    for loop in loops:
        with servers.floor(loop) as srv:
            group = f"floor-{loop}"
            cpu0 = srv.cpu()
            t0 = time.time()
            paths = [f"/v1/stream?n={cfg.floor_frames}"] * cfg.floor_streams
            await bench.client.open(group, srv.port, paths, latency=False)
            expected = cfg.floor_streams * cfg.floor_frames
            s = await bench.client.wait_frames(group, expected, 60)
            cpu = srv.cpu() - cpu0
            await bench.client.close(group)
            out[loop] = {
                "sends": s.frames,
                "cpu_us_per_send": round(cpu / s.frames * 1e6, 2) if s.frames else None,
                "seconds": round(s.last_frame_at - t0, 2),
            }
            bench.log(f"  floor ({loop}): {out[loop]['cpu_us_per_send']} us CPU per send")
    return out


# ------------------------------------------------------------ 1. fan-out


async def _fanout_one(bench: Bench, start: SERVER_CM, table: str) -> dict[str, Any]:
    cfg, client = bench.cfg, bench.client
    procs = client.processes
    with start() as srv:
        await bench.sentinel(srv, table)
        paths = bench.fan_paths(table, cfg.fan_subs)
        levels = sorted({n for n in cfg.fan_levels if n < cfg.fan_subs} | {cfg.fan_subs})
        by_subs: dict[str, Any] = {}
        opened = 0
        for n in levels:
            r = await open_all(bench, "fan", srv, paths[opened:n])
            opened = n
            await settle(bench, 0.5, srv)
            w = await measured_write(
                bench,
                srv,
                "fan",
                table,
                rate=cfg.fan_rate,
                seconds=cfg.fan_seconds,
                org="o1",
                users=["writer"],
                per_row=n,
            )
            by_subs[str(n)] = w.summary(procs) | {"connect_s": round(r.seconds, 2)}
            bench.log(
                f"  {srv.name} {n} subs: {by_subs[str(n)]['deliveries_per_s']}/s, "
                f"p50 {by_subs[str(n)]['p50_ms']} ms, p99 {by_subs[str(n)]['p99_ms']} ms, "
                f"{by_subs[str(n)]['cpu_us_per_delivery']} us/delivery"
            )
        steady = by_subs[str(cfg.fan_subs)]
        steps: list[dict[str, Any]] = []
        for rate in cfg.ramp_rates:
            if not srv.alive():
                break
            await settle(bench, 0.2, srv)
            w = await measured_write(
                bench,
                srv,
                "fan",
                table,
                rate=rate,
                seconds=cfg.ramp_seconds,
                org="o1",
                users=["writer"],
                per_row=cfg.fan_subs,
                drain=cfg.ramp_seconds + 12,
            )
            step = w.summary(procs) | {
                "rate": rate,
                "offered_per_s": round(rate * cfg.fan_subs),
            }
            kept_up = (
                step["missing"] == 0
                and step["deliveries_per_s"] >= 0.85 * step["offered_per_s"]
                and (step["p99_ms"] or 0) < 1000
            )
            step["kept_up"] = kept_up
            steps.append(step)
            bench.log(
                f"  {srv.name} ramp {rate:.0f}/s: {step['deliveries_per_s']}/s of "
                f"{step['offered_per_s']}, p99 {step['p99_ms']} ms, "
                f"client util {step['client_cpu_util']}"
            )
            if not kept_up:
                break
        best = max(steps, key=lambda s: s["deliveries_per_s"]) if steps else None
        return {
            "steady": steady,
            "by_subscribers": by_subs,
            "ramp": steps,
            "max_deliveries_per_s": best["deliveries_per_s"] if best else None,
            "max_at_rate": best["rate"] if best else None,
            "max_p99_ms": best["p99_ms"] if best else None,
            "server_processes": 1,
        }


async def fanout(bench: Bench) -> dict[str, Any]:
    relay = await _fanout_one(bench, bench.relay, RELAY_TABLE)
    baseline = await _fanout_one(bench, bench.baseline, NAIVE_TABLE)
    return {
        "subscribers": bench.cfg.fan_subs,
        "rate": bench.cfg.fan_rate,
        "relay": relay,
        "baseline": baseline,
    }


# --------------------------------------------- 2. selective, 3. connections


def _user_paths(bench: Bench, table: str, lo: int, hi: int) -> list[str]:
    return [bench.path(table, bench.token(f"u{i}")) for i in range(lo, hi)]


def _bounds(levels: Sequence[int], top: int) -> list[int]:
    return sorted({0, *levels, top})


async def _selective_one(bench: Bench, start: SERVER_CM, table: str) -> dict[str, Any]:
    """Open the largest level in groups, then measure from the largest level down."""
    cfg, client = bench.cfg, bench.client
    top = max(cfg.sel_levels)
    bounds = _bounds(cfg.sel_levels, top)
    groups = [(f"sel-{lo}", lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)]
    out: dict[str, Any] = {"levels": {}}
    with start() as srv:
        await bench.sentinel(srv, table)
        for name, lo, hi in groups:
            await open_all(bench, name, srv, _user_paths(bench, table, lo, hi))
        for level in sorted(cfg.sel_levels, reverse=True):
            for name, lo, _hi in groups:
                if lo >= level:
                    await client.close(name)
            await settle(bench, 0.5, srv)
            live = [name for name, lo, _hi in groups if lo < level]
            await client.reset(*live)
            cpu0, t0 = srv.cpu(), time.time()
            w = await write_rows(
                bench.db.dsn,
                table,
                rate=cfg.sel_rate,
                seconds=cfg.sel_changes / cfg.sel_rate,
                org_id="sel",
                users=[f"u{i}" for i in range(level)],
            )
            deadline = time.monotonic() + 90
            frames, lat = 0, np.zeros(0)
            stable_since, last = time.monotonic(), -1
            while time.monotonic() < deadline:
                frames = sum([(await client.stats(g)).frames for g in live])
                if frames >= w.rows:
                    break
                if frames != last:
                    last, stable_since = frames, time.monotonic()
                elif time.monotonic() - stable_since > 10:
                    break
                await asyncio.sleep(0.05)
            cpu = srv.cpu() - cpu0
            elapsed = time.time() - t0
            lat = np.concatenate(
                [np.frombuffer((await client.collect(g)).latencies, dtype=float) for g in live]
            )
            res = {
                "subscribers": level,
                "changes": w.rows,
                "delivered": frames,
                "cpu_us_per_change": round(cpu / w.rows * 1e6, 1),
                "seconds": round(elapsed, 2),
                **percentiles(lat),
            }
            out["levels"][str(level)] = res
            bench.log(
                f"  {srv.name} selective @{level}: {res['cpu_us_per_change']} us CPU/change, "
                f"p99 {res['p99_ms']} ms, delivered {frames}/{w.rows}"
            )
    return out


async def selective(bench: Bench) -> dict[str, Any]:
    relay = await _selective_one(
        bench, lambda: bench.relay(keepalive_seconds=NO_KEEPALIVE), RELAY_TABLE
    )
    baseline = await _selective_one(
        bench, lambda: bench.baseline(ping_seconds=NO_KEEPALIVE), NAIVE_TABLE
    )
    return {
        "keepalive": "off (3600 s) in this scenario, for both",
        "relay": relay,
        "baseline": baseline,
    }


async def _connections_one(bench: Bench, start: SERVER_CM, table: str) -> dict[str, Any]:
    cfg, client = bench.cfg, bench.client
    with start() as srv:
        await bench.sentinel(srv, table)
        await open_all(bench, "warm", srv, _user_paths(bench, table, 0, 20))
        await client.close("warm")
        await settle(bench, 1.0, srv)
        rss0 = srv.rss()
        cpu0 = srv.cpu()
        r = await open_all(bench, "idle", srv, _user_paths(bench, table, 0, cfg.conn_n))
        connect_cpu = srv.cpu() - cpu0
        await settle(bench, 1.0, srv)
        rss1 = srv.rss()
        await client.reset("idle")
        cpu1, t1 = srv.cpu(), time.monotonic()
        await asyncio.sleep(cfg.idle_seconds)
        idle_cpu = srv.cpu() - cpu1
        idle_s = time.monotonic() - t1
        st = await client.stats("idle")
        res = {
            "streams": r.ok,
            "connect_s": round(r.seconds, 2),
            "connects_per_s": round(r.ok / r.seconds) if r.seconds else None,
            "connect_cpu_us_per_stream": round(connect_cpu / r.ok * 1e6),
            "rss_before_mb": round(rss0 / 2**20, 1),
            "rss_after_mb": round(rss1 / 2**20, 1),
            "rss_kb_per_stream": round((rss1 - rss0) / r.ok / 1024, 1),
            "idle_seconds": round(idle_s, 1),
            "idle_cpu_pct": round(idle_cpu / idle_s * 100, 2),
            "keepalives_received": st.keepalives,
            "server_closed": st.server_closed,
        }
        bench.log(
            f"  {srv.name}: {r.ok} streams in {res['connect_s']} s, "
            f"{res['rss_kb_per_stream']} KB RSS/stream, idle CPU {res['idle_cpu_pct']}% "
            f"({st.keepalives} keep-alives)"
        )
        return res


async def connections(bench: Bench) -> dict[str, Any]:
    relay = await _connections_one(bench, bench.relay, RELAY_TABLE)
    baseline = await _connections_one(bench, bench.baseline, NAIVE_TABLE)
    return {"keepalive_s": 15, "relay": relay, "baseline": baseline}


# ----------------------------------------------------------------- 4. writes


async def writes(bench: Bench) -> dict[str, Any]:
    """Insert throughput (one row per transaction) by trigger kind, writers, commit mode.

    Commit latency (WAL flush) on a shared disk swings a lot from second to
    second, so the three tables are measured in interleaved one-second slices,
    several rounds, and the median is kept. `synchronous_commit=off` takes the
    disk out and leaves the triggers' CPU cost (and NOTIFY's commit lock).
    """
    cfg = bench.cfg
    tables = {"none": "w_plain", "relay": "w_watched", "notify": "w_notify"}
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        m: {k: {str(w): [] for w in cfg.writers} for k in tables} for m in cfg.write_modes
    }
    pgbench = shutil.which("pgbench")
    tool = "pgbench" if pgbench else "asyncpg"
    conn = await asyncpg.connect(bench.db.dsn)
    try:
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("checkpoint")  # not during the slices, if we may
    finally:
        await conn.close()
    kinds = list(tables)
    with tempfile.TemporaryDirectory(prefix="relay-bench-w-") as tmp:
        for rnd in range(cfg.write_rounds):
            for mode in cfg.write_modes:
                for writers in cfg.writers:
                    order = kinds[rnd % 3 :] + kinds[: rnd % 3]
                    for kind in order:
                        table = tables[kind]
                        if pgbench:
                            tps = await asyncio.to_thread(
                                _run_pgbench, pgbench, bench.db.dsn, tmp, table, writers, cfg, mode
                            )
                        else:
                            tps = await _asyncpg_writers(bench.db.dsn, table, writers, 1.0, mode)
                        samples[mode][kind][str(writers)].append(tps)
    tps_med = {
        m: {k: {w: round(float(np.median(v)), 1) for w, v in ws.items()} for k, ws in ks.items()}
        for m, ks in samples.items()
    }
    for mode, ks in tps_med.items():
        for w in map(str, cfg.writers):
            bench.log(
                f"  synchronous_commit={mode}, {w} writer(s): "
                + ", ".join(f"{k} {ks[k][w]:,.0f}/s" for k in tables)
            )
    return {
        "tool": tool,
        "slices": cfg.write_rounds,
        "tps": tps_med["on"],
        "tps_by_commit_mode": tps_med,
        "samples": samples,
    }


def _run_pgbench(
    pgbench: str, dsn: str, tmp: str, table: str, writers: int, cfg: Config, mode: str
) -> float:
    script = os.path.join(tmp, f"{table}.sql")
    with open(script, "w") as f:
        f.write(
            f"\\set u random(1, 1000)\n"
            f"insert into public.{table} (org_id, user_id, body)"
            f" values ('o1', 'u' || :u, '{BODY}');\n"
        )
    argv = [
        pgbench,
        "-n",
        "-M",
        "prepared",
        "-c",
        str(writers),
        "-j",
        str(min(writers, os.cpu_count() or 1)),
        *(["-t", str(800 // writers)] if cfg.smoke else ["-T", "1"]),
        "-f",
        script,
        dsn,
    ]
    env = {**os.environ, "PGOPTIONS": f"-c synchronous_commit={mode}"}
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    m = re.search(r"tps = ([0-9.]+)", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed ({p.returncode}): {p.stderr[-500:]}")
    return float(m.group(1))


async def _asyncpg_writers(dsn: str, table: str, writers: int, seconds: float, mode: str) -> float:
    """Fallback without pgbench: `writers` connections inserting in a loop (client-bound)."""
    stmt = f"insert into public.{table} (org_id, user_id, body) values ('o1', $1, $2)"
    done = 0
    stop = time.monotonic() + seconds

    async def one(i: int) -> None:
        nonlocal done
        conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": mode})
        try:
            while time.monotonic() < stop:
                await conn.execute(stmt, f"u{i}", BODY)
                done += 1
        finally:
            await conn.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(writers)))
    return done / (time.monotonic() - t0)


# --------------------------------------------------------------- 5. catch-up


async def catchup(bench: Bench) -> dict[str, Any]:
    cfg, client = bench.cfg, bench.client
    n = cfg.catchup_rows
    with bench.relay() as srv:
        conn = await asyncpg.connect(bench.db.dsn)
        try:
            start_pos = int(await conn.fetchval("select relay.current_position()"))
            t_ins = time.monotonic()
            await insert_bulk(bench.db.dsn, RELAY_TABLE, n, org_id="cu", user_id="cu-w")
            insert_s = time.monotonic() - t_ins
            head = int(await conn.fetchval("select relay.current_position()"))
        finally:
            await conn.close()
        await _relay_caught_up(srv, head, 60)
        cpu0, t0 = srv.cpu(), time.time()
        path = bench.path(RELAY_TABLE, bench.token("cu-reader", "cu"), last_event_id=start_pos)
        await open_all(bench, "catchup", srv, [path], latency=False)
        s = await client.wait_frames("catchup", n, 120)
        cpu = srv.cpu() - cpu0
        replay_s = max(1e-6, s.last_frame_at - t0)
        # then live: a few more rows must arrive on the same stream
        live_rows = 10
        w = await write_rows(
            bench.db.dsn, RELAY_TABLE, rate=100, seconds=live_rows / 100, org_id="cu", users=["x"]
        )
        s2 = await client.wait_frames("catchup", n + w.rows, 15)
        await client.close("catchup")
    res = {
        "behind": n,
        "insert_s": round(insert_s, 2),
        "replayed": s.frames,
        "replay_s": round(replay_s, 3),
        "events_per_s": round(s.frames / replay_s),
        "cpu_us_per_event": round(cpu / s.frames * 1e6, 2) if s.frames else None,
        "live_after": s2.frames - s.frames,
        "live_expected": w.rows,
    }
    bench.log(
        f"  relay: {s.frames} of {n} in {res['replay_s']} s = {res['events_per_s']}/s, "
        f"then live {res['live_after']}/{w.rows}"
    )
    return {
        "relay": res,
        "baseline": {"supported": False, "why": "NOTIFY is not stored: nothing to resume from"},
    }


async def _relay_caught_up(srv: Server, head: int, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    url = f"http://127.0.0.1:{srv.port}/readyz"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())
            if int(json.loads(body).get("position") or 0) >= head:
                return
        await asyncio.sleep(0.1)


# --------------------------------------------------------- 6. slow consumers


async def _slow_one(bench: Bench, start: SERVER_CM, table: str) -> dict[str, Any]:
    cfg, client = bench.cfg, bench.client
    procs = client.processes
    body = "y" * cfg.slow_body
    phase_a, phase_b = cfg.slow_seconds
    with start() as srv:
        await bench.sentinel(srv, table)
        await open_all(bench, "normal", srv, bench.fan_paths(table, cfg.slow_normal))
        await settle(bench, 0.5, srv)

        async def window(seconds: float) -> Window:
            return await measured_write(
                bench,
                srv,
                "normal",
                table,
                rate=cfg.slow_rate,
                seconds=seconds,
                org="o1",
                users=["writer"],
                per_row=cfg.slow_normal,
                body=body,
            )

        a = await window(phase_a)
        rss_a = srv.rss()
        slow_paths = bench.fan_paths(table, cfg.slow_n, prefix="slow")
        # A stalled phone: Ethernet-sized segments, a small receive window, then no reads.
        await open_all(bench, "slow", srv, slow_paths, slow=True, rcvbuf=4096, mss=1448)
        rss_peak = rss_b0 = srv.rss()

        async def sample() -> None:
            nonlocal rss_peak
            while True:
                rss_peak = max(rss_peak, srv.rss())
                await asyncio.sleep(0.25)

        sampler = asyncio.ensure_future(sample())
        try:
            b = await window(phase_b)
        finally:
            sampler.cancel()
        rss_b1 = srv.rss()
        cut_before_resume = (await client.stats("slow")).server_closed
        await client.resume("slow")
        deadline = time.monotonic() + (1.0 if cfg.smoke else 3.0)
        while time.monotonic() < deadline:
            s = await client.stats("slow")
            if s.too_slow + s.server_closed >= 2 * cfg.slow_n:
                break
            await asyncio.sleep(0.1)
        s = await client.stats("slow")
        await client.close("slow")
    sa, sb = a.summary(procs), b.summary(procs)
    return {
        "without_slow": {k: sa[k] for k in ("p50_ms", "p99_ms", "cpu_us_per_delivery", "missing")},
        "with_slow": {k: sb[k] for k in ("p50_ms", "p99_ms", "cpu_us_per_delivery", "missing")},
        "rss_mb_before_slow": round(rss_a / 2**20, 1),
        "rss_growth_mb": round((rss_peak - rss_b0) / 2**20, 1),
        "rss_growth_end_mb": round((rss_b1 - rss_b0) / 2**20, 1),
        "slow_clients": cfg.slow_n,
        "slow_told_too_slow": s.too_slow,
        "slow_ended_by_server": s.server_closed,
        "slow_ended_before_resume": cut_before_resume,
        "slow_frames_received": s.frames,
        "slow_frames_written_for_them": b.rows * cfg.slow_n,
    }


async def slow_consumers(bench: Bench) -> dict[str, Any]:
    cfg = bench.cfg
    relay = await _slow_one(
        bench, lambda: bench.relay(max_outbox_bytes=cfg.slow_outbox_bytes), RELAY_TABLE
    )
    bench.log(f"  relay: {relay}")
    baseline = await _slow_one(bench, bench.baseline, NAIVE_TABLE)
    bench.log(f"  baseline: {baseline}")
    return {
        "normal": cfg.slow_normal,
        "slow": cfg.slow_n,
        "rate": cfg.slow_rate,
        "row_body_bytes": cfg.slow_body,
        "relay_max_outbox_bytes": cfg.slow_outbox_bytes,
        "relay": relay,
        "baseline": baseline,
    }


SCENARIOS: dict[str, tuple[str, Callable[[Bench], Any]]] = {
    "0": ("calibration", calibration),
    "1": ("fan-out", fanout),
    "2": ("selective", selective),
    "3": ("connections", connections),
    "4": ("writes", writes),
    "5": ("catch-up", catchup),
    "6": ("slow consumers", slow_consumers),
}
