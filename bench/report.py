"""The report: one table (text and markdown), the raw results as JSON, a PNG chart.

What it shows: for each scenario the relay's figure, the baseline's, how many
times better the relay is ("x better": > 1 means the relay wins, whichever
direction the metric goes), and the issue's target with PASS/MISS.

Invariant: the table is derived only from the results dict that is also
written as JSON, so every printed figure can be traced to the raw data.
Smoke runs are flagged: their sizes are too small for the targets to mean
anything, so PASS/MISS is shown but marked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Results = dict[str, Any]


@dataclass
class Row:
    scenario: str
    metric: str
    relay: str
    baseline: str = "-"
    better: str = "-"
    target: str = ""
    result: str = ""


def _n(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _better(relay: float | None, baseline: float | None, higher: bool) -> float | None:
    if not relay or not baseline:
        return None
    return relay / baseline if higher else baseline / relay


def _pass(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def rows(results: Results) -> list[Row]:
    """The table rows for whatever scenarios ran (errors become a row too)."""
    out: list[Row] = []
    r = results.get("scenarios", {})

    cal = r.get("calibration")
    if isinstance(cal, dict) and "error" not in cal:
        uv, aio = _get(cal, "uvloop", "cpu_us_per_send"), _get(cal, "asyncio", "cpu_us_per_send")
        out.append(
            Row(
                "0 floor",
                "bare ASGI app, CPU us per send (uvloop / stdlib loop)",
                f"{_n(uv, 1)} / {_n(aio, 1)}",
            )
        )

    fan = r.get("fan-out")
    if isinstance(fan, dict) and "error" not in fan:
        n, rate = fan["subscribers"], fan["rate"]
        rs, bs = fan["relay"]["steady"], fan["baseline"]["steady"]
        sc = f"1 fan-out {n}x{rate:.0f}/s"
        out.append(
            Row(
                sc,
                "deliveries/s",
                _n(rs["deliveries_per_s"]),
                _n(bs["deliveries_per_s"]),
                _x(_better(rs["deliveries_per_s"], bs["deliveries_per_s"], True)),
            )
        )
        for p, target in (("p50", 5.0), ("p95", None), ("p99", 25.0)):
            rv, bv = rs[f"{p}_ms"], bs[f"{p}_ms"]
            out.append(
                Row(
                    sc,
                    f"commit->receive {p} ms",
                    _n(rv, 1),
                    _n(bv, 1),
                    _x(_better(rv, bv, False)),
                    f"<= {target:g}" if target else "",
                    _pass(rv <= target if (target and rv is not None) else None),
                )
            )
        rc, bc = rs["cpu_us_per_delivery"], bs["cpu_us_per_delivery"]
        out.append(
            Row(sc, "server CPU us per delivery", _n(rc, 1), _n(bc, 1), _x(_better(rc, bc, False)))
        )
        rb, bb = fan["relay"].get("by_subscribers", {}), fan["baseline"].get("by_subscribers", {})
        for lv in sorted((int(k) for k in rb if int(k) != n), reverse=True):
            r1, b1 = rb[str(lv)], bb.get(str(lv), {})
            out.append(
                Row(
                    f"1 fan-out {lv}x{rate:.0f}/s",
                    "commit->receive p50 / p99 ms",
                    f"{_n(r1['p50_ms'], 1)} / {_n(r1['p99_ms'], 1)}",
                    f"{_n(b1.get('p50_ms'), 1)} / {_n(b1.get('p99_ms'), 1)}",
                    _x(_better(r1["p99_ms"], b1.get("p99_ms"), False)),
                )
            )
        rm, bm = fan["relay"]["max_deliveries_per_s"], fan["baseline"]["max_deliveries_per_s"]
        out.append(
            Row(
                "1 fan-out ramp",
                f"max deliveries/s (relay at {_n(fan['relay']['max_at_rate'])}/s, "
                f"baseline at {_n(fan['baseline']['max_at_rate'])}/s)",
                _n(rm),
                _n(bm),
                _x(_better(rm, bm, True)),
                ">= 50,000",
                _pass(rm >= 50_000 if rm else None),
            )
        )
        b = _better(rm, bm, True)
        out.append(
            Row(
                "1 fan-out ramp",
                "max deliveries/s, relay vs baseline",
                "",
                "",
                _x(b),
                ">= 3x",
                _pass(b >= 3 if b else None),
            )
        )

    sel = r.get("selective")
    if isinstance(sel, dict) and "error" not in sel:
        rl, bl = sel["relay"]["levels"], sel["baseline"]["levels"]
        levels = sorted(int(k) for k in rl)
        for lv in levels:
            rv, bv = rl[str(lv)]["cpu_us_per_change"], _get(bl, str(lv), "cpu_us_per_change")
            out.append(
                Row(
                    "2 selective",
                    f"server CPU us per change, {lv:,} user-scoped subs",
                    _n(rv),
                    _n(bv),
                    _x(_better(rv, bv, False)),
                )
            )
        lo, hi = levels[0], levels[-1]
        rgrow = rl[str(hi)]["cpu_us_per_change"] / rl[str(lo)]["cpu_us_per_change"]
        bhi, blo = _get(bl, str(hi), "cpu_us_per_change"), _get(bl, str(lo), "cpu_us_per_change")
        bgrow = bhi / blo if bhi and blo else None
        out.append(
            Row(
                "2 selective",
                f"CPU per change at {hi:,} / at {lo:,} subs",
                _x(rgrow),
                _x(bgrow),
                "",
                "<= 1.5x",
                _pass(rgrow <= 1.5),
            )
        )
        rv, bv = rl[str(hi)]["p99_ms"], _get(bl, str(hi), "p99_ms")
        out.append(
            Row(
                "2 selective",
                f"commit->receive p99 ms at {hi:,} subs",
                _n(rv, 1),
                _n(bv, 1),
                _x(_better(rv, bv, False)),
            )
        )

    con = r.get("connections")
    if isinstance(con, dict) and "error" not in con:
        rc, bc = con["relay"], con["baseline"]
        n = rc["streams"]
        sc = f"3 connections {n:,}"
        out.append(
            Row(
                sc,
                "seconds to open all (SUBSCRIBED received)",
                _n(rc["connect_s"], 1),
                _n(bc["connect_s"], 1),
                _x(_better(rc["connect_s"], bc["connect_s"], False)),
            )
        )
        rk, bk = rc["rss_kb_per_stream"], bc["rss_kb_per_stream"]
        out.append(
            Row(
                sc,
                "RSS KB per open stream",
                _n(rk, 1),
                _n(bk, 1),
                _x(_better(rk, bk, False)),
                "<= 20",
                _pass(rk <= 20),
            )
        )
        rp, bp = rc["idle_cpu_pct"], bc["idle_cpu_pct"]
        out.append(
            Row(
                sc,
                f"idle CPU % of a core (keep-alive every {con['keepalive_s']} s)",
                _n(rp, 2),
                _n(bp, 2),
                _x(_better(rp, bp, False)),
            )
        )

    wr = r.get("writes")
    if isinstance(wr, dict) and "error" not in wr:
        for mode, tps in wr.get("tps_by_commit_mode", {"on": wr["tps"]}).items():
            for w in sorted(tps["none"], key=int):
                rv, bv, nv = tps["relay"][w], tps["notify"][w], tps["none"][w]
                ok = rv >= 0.9 * bv if (w == "8" and mode == "on") else None
                out.append(
                    Row(
                        f"4 writes sync_commit={mode}",
                        f"inserts/s, {w} writer(s): watched vs NOTIFY trigger (no trigger: "
                        f"{_n(nv)})",
                        f"{_n(rv)} ({rv / nv:.2f})",
                        f"{_n(bv)} ({bv / nv:.2f})",
                        _x(_better(rv, bv, True)),
                        ">= 0.9x NOTIFY" if ok is not None else "",
                        _pass(ok),
                    )
                )

    cu = r.get("catch-up")
    if isinstance(cu, dict) and "error" not in cu:
        rc = cu["relay"]
        ok = rc["replayed"] == rc["behind"] and rc["live_after"] == rc["live_expected"]
        out.append(
            Row(
                "5 catch-up",
                f"events/s resuming {rc['behind']:,} behind, then live"
                + ("" if ok else " (INCOMPLETE)"),
                _n(rc["events_per_s"]),
                "no replay",
                "",
                ">= 50,000",
                _pass(rc["events_per_s"] >= 50_000 and ok),
            )
        )

    sl = r.get("slow consumers")
    if isinstance(sl, dict) and "error" not in sl:
        rs, bs = sl["relay"], sl["baseline"]
        sc = f"6 slow {sl['slow']} of {sl['normal'] + sl['slow']}"

        def p99s(d: dict[str, Any]) -> str:
            return f"{_n(d['without_slow']['p99_ms'], 1)} -> {_n(d['with_slow']['p99_ms'], 1)}"

        a, b = rs["without_slow"]["p99_ms"], rs["with_slow"]["p99_ms"]
        out.append(
            Row(
                sc,
                "others' p99 ms, without -> with stalled clients",
                p99s(rs),
                p99s(bs),
                "",
                "unchanged (<= 1.5x)",
                _pass(b <= 1.5 * a if a and b else None),
            )
        )
        out.append(
            Row(
                sc,
                "server RSS growth MB while they stall (peak)",
                _n(rs["rss_growth_mb"], 1),
                _n(bs["rss_growth_mb"], 1),
                "",
                "bounded",
                "",
            )
        )
        n_slow = sl["slow"]
        out.append(
            Row(
                sc,
                "stalled clients cut off by the server",
                f"{rs['slow_ended_by_server']}/{n_slow}",
                f"{bs['slow_ended_by_server']}/{n_slow}",
                "",
                "all",
                _pass(rs["slow_ended_by_server"] == n_slow),
            )
        )
        out.append(
            Row(
                sc,
                "frames held for them, delivered when they read again",
                f"{_n(rs['slow_frames_received'])} of {_n(rs['slow_frames_written_for_them'])}",
                f"{_n(bs['slow_frames_received'])} of {_n(bs['slow_frames_written_for_them'])}",
                "",
                "bounded",
                "",
            )
        )

    for name, res in r.items():
        if isinstance(res, dict) and "error" in res:
            out.append(Row(name, "ERROR", res["error"][:80]))
    return out


HEAD = ("scenario", "metric", "relay", "baseline", "x better", "target", "result")


def text_table(table: list[Row]) -> str:
    cells = [HEAD] + [
        (r.scenario, r.metric, r.relay, r.baseline, r.better, r.target, r.result) for r in table
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEAD))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("  ".join(v.ljust(widths[i]) for i, v in enumerate(c)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(table: list[Row]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in table:
        vals = (r.scenario, r.metric, r.relay, r.baseline, r.better, r.target, r.result)
        lines.append("| " + " | ".join(v.replace("|", "/") for v in vals) + " |")
    return "\n".join(lines)


def write(results: Results, out_dir: Path, stem: str) -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    paths = {
        "json": out_dir / f"{stem}.json",
        "md": out_dir / f"{stem}.md",
        "png": out_dir / f"{stem}.png",
    }
    payload = dict(results)
    payload["table"] = [r.__dict__ for r in table]
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    paths["md"].write_text(markdown_table(table) + "\n")
    try:
        chart(results, paths["png"])
    except Exception as exc:  # a chart must never lose the measurements
        paths["md"].write_text(markdown_table(table) + f"\n\n(chart failed: {exc})\n")
        del paths["png"]
    return paths


def chart(results: Results, path: Path) -> None:
    """Four panels: fan-out latency, ramp, selective CPU per change, write throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results.get("scenarios", {})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colors = {"relay": "#1f77b4", "baseline": "#d62728"}

    ax = axes[0][0]
    fan = r.get("fan-out")
    if isinstance(fan, dict) and "error" not in fan:
        xs = ["p50", "p95", "p99"]
        for k, (name, off) in enumerate((("relay", -0.2), ("baseline", 0.2))):
            st = fan[name]["steady"]
            ax.bar(
                [i + off for i in range(3)],
                [st[f"{p}_ms"] or 0 for p in xs],
                width=0.4,
                label=name,
                color=colors[name],
                zorder=k,
            )
        ax.set_xticks(range(3), xs)
        ax.set_yscale("log")
        ax.set_ylabel("commit -> receive, ms (log)")
        ax.set_title(f"1. fan-out {fan['subscribers']} subs x {fan['rate']:.0f} changes/s")
        ax.legend()

    ax = axes[0][1]
    if isinstance(fan, dict) and "error" not in fan:
        for name in ("relay", "baseline"):
            steps = fan[name]["ramp"]
            ax.plot(
                [s["offered_per_s"] for s in steps],
                [s["deliveries_per_s"] for s in steps],
                "o-",
                label=name,
                color=colors[name],
            )
        ax.axhline(50_000, ls="--", color="gray", lw=1, label="target 50,000/s")
        ax.set_xscale("log")
        ax.set_xlabel("offered deliveries/s (log)")
        ax.set_ylabel("achieved deliveries/s")
        ax.set_title("1. ramp: inserts/s x subscribers")
        ax.legend()

    ax = axes[1][0]
    sel = r.get("selective")
    if isinstance(sel, dict) and "error" not in sel:
        for name in ("relay", "baseline"):
            lv = sel[name]["levels"]
            ks = sorted(lv, key=int)
            ax.plot(
                [int(k) for k in ks],
                [lv[k]["cpu_us_per_change"] for k in ks],
                "o-",
                label=name,
                color=colors[name],
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("user-scoped subscribers (log)")
        ax.set_ylabel("server CPU us per change (log)")
        ax.set_title("2. selective: one receiver per change")
        ax.legend()

    ax = axes[1][1]
    wr = r.get("writes")
    if isinstance(wr, dict) and "error" not in wr:
        tps = wr["tps"]
        ws = sorted(tps["none"], key=int)
        kinds = [("none", "#7f7f7f"), ("relay", colors["relay"]), ("notify", colors["baseline"])]
        for k, (kind, color) in enumerate(kinds):
            ax.bar(
                [i + (k - 1) * 0.27 for i in range(len(ws))],
                [tps[kind][w] for w in ws],
                width=0.27,
                label={"none": "no trigger", "relay": "relay capture", "notify": "NOTIFY row"}[
                    kind
                ],
                color=color,
            )
        ax.set_xticks(range(len(ws)), [f"{w} writer(s)" for w in ws])
        ax.set_ylabel("inserts/s (1 row per transaction)")
        ax.set_title(f"4. write throughput ({wr['tool']})")
        ax.legend()

    meta = results.get("meta", {})
    fig.suptitle(
        f"relay vs naive baseline - {meta.get('cores', '?')} cores, "
        f"{'SMOKE sizes' if meta.get('smoke') else 'full run'}, {meta.get('date', '')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
