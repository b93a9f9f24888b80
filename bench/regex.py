"""`python -m bench.regex`: time one filter evaluation of pathological regexes on 10 KB.

Prints a table and writes bench/results/regex.json. Target (issue 15): one
evaluation of a `match`/`imatch` filter on a 10 KB value in at most 1 ms,
whatever the pattern. Python's `re` is shown for contrast on a 27-character
value only (on 10 KB it would not finish).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from relay.columns import Column
from relay.filters import parse_filter

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MS = 1.0
COLUMNS = {"name": Column(name="name", type_name="text", category="S", enum_labels=())}
CASES = [
    ("^(a+)+$", "a" * 10_000 + "!"),
    (r"^(\w+\s?)+$", ("Quarterly report for marketing " * 330)[:10_000] + "!"),
    ("(a|aa)+$", "a" * 10_000 + "!"),
    ("^(a|a?)+$", "a" * 10_000 + "!"),
    ("^[[:digit:]]+$", "1" * 10_000 + "x"),
]


def _per_eval_ms(
    call: Callable[[Mapping[str, Any]], bool], value: str, budget: float = 0.5
) -> float:
    n = 0
    started = time.perf_counter()
    while True:
        call({"name": value})
        n += 1
        elapsed = time.perf_counter() - started
        if elapsed > budget:
            return elapsed / n * 1000


def main() -> None:
    rows: list[dict[str, Any]] = []
    for pattern, value in CASES:
        for op in ("match", "imatch"):
            flt = parse_filter(f"name={op}.{pattern}", COLUMNS)
            ms = _per_eval_ms(flt.matches, value)
            rows.append({"pattern": pattern, "op": op, "bytes": len(value), "ms_per_eval": ms})
    started = time.perf_counter()
    re.search("^(a+)+$", "a" * 26 + "!")
    python_re_27 = (time.perf_counter() - started) * 1000
    print(f"{'pattern':<18} {'op':<7} {'bytes':>6} {'ms/eval':>9}  target <= {TARGET_MS} ms")
    for r in rows:
        ok = "ok" if r["ms_per_eval"] <= TARGET_MS else "MISSED"
        print(f"{r['pattern']:<18} {r['op']:<7} {r['bytes']:>6} {r['ms_per_eval']:>9.4f}  {ok}")
    print(f"(Python re, ^(a+)+$ on 27 characters: {python_re_27:.0f} ms)")
    RESULTS.mkdir(exist_ok=True)
    out = {"target_ms": TARGET_MS, "rows": rows, "python_re_27_chars_ms": python_re_27}
    (RESULTS / "regex.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
