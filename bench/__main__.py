"""`python -m bench [--smoke]`: run the scenarios, print the table, write the results.

Invariant: bounded and clean. The smoke run (CI) uses tiny sizes and ends in
well under a minute; the full run in under ten minutes on two cores. Every
subprocess (servers, load client workers, the embedded PostgreSQL) is
stopped on the way out, also on errors and Ctrl-C. Exit status: 0 when every
scenario ran (targets missed or not: they are measurements), 1 when one
failed to run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.database import bench_database
from bench.loadclient import LoadClient, raise_nofile_limit
from bench.scenarios import SCENARIOS, Bench, Config

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=RESULTS.parent.parent,
        )
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


async def run(cfg: Config, only: list[str], clients: int, log: Any) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"scenarios": {}}
    with bench_database() as db:
        meta = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "smoke": cfg.smoke,
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "postgres": db.server_version,
            "embedded_postgres": db.embedded,
            "git": _git_commit(),
            "load_client_processes": clients,
            "relay_processes": 1,
            "baseline_processes": 1,
            "relay_loop": "uvloop (forced)" if cfg.relay_uvloop else "as shipped (relay serve)",
            "config": cfg.__dict__,
        }
        results["meta"] = meta
        log(
            f"bench: {meta['cores']} cores ({meta['cpu']}), PostgreSQL {db.server_version}"
            f"{' (embedded)' if db.embedded else ''}; load client: {clients} processes "
            "(asyncio+uvloop, raw sockets); relay: 1 process; baseline: 1 uvicorn process"
        )
        client = LoadClient(clients)
        client.start()
        try:
            bench = Bench(db=db, client=client, cfg=cfg, log=log)
            for key, (name, fn) in SCENARIOS.items():
                if only and key not in only:
                    continue
                log(f"[{key}] {name} ...")
                t0 = time.monotonic()
                try:
                    results["scenarios"][name] = await fn(bench)
                except Exception as exc:
                    traceback.print_exc()
                    results["scenarios"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"[{key}] {name}: {time.monotonic() - t0:.1f} s")
        finally:
            client.stop()
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="relay vs a naive baseline, same load client"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): < 60 s")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario numbers, e.g. 1,3 (0 = calibration)"
    )
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument(
        "--relay-uvloop",
        action="store_true",
        help="run `relay serve` with uvloop's loop policy (what it would gain)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    cfg = Config.tiny if args.smoke else Config.full
    config = cfg(relay_uvloop=args.relay_uvloop)
    only = [s.strip() for s in args.only.split(",") if s.strip()]

    def log(msg: str) -> None:
        print(msg, flush=True)

    results = asyncio.run(run(config, only, args.clients, log))
    stem = "smoke" if args.smoke else "bench-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    paths = report.write(results, args.out, stem)
    table = report.rows(results)
    print()
    print(report.text_table(table))
    print()
    if args.smoke:
        print("(smoke sizes: PASS/MISS are not meaningful at this scale)")
    print(f"elapsed {results['meta']['elapsed_s']} s; wrote " + ", ".join(map(str, paths.values())))
    failed = [n for n, r in results["scenarios"].items() if isinstance(r, dict) and "error" in r]
    if failed:
        print(f"scenarios that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
