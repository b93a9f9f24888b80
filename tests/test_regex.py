"""`match`/`imatch` regexes: Postgres' answers, linear time, refusals at subscribe time.

Postgres itself is the oracle: every (pattern, value) pair is asked as
`value ~ pattern` / `value ~* pattern` and the relay's evaluation must agree;
a pattern Postgres rejects must be rejected too. Patterns the relay refuses
although Postgres runs them are exactly the documented ones (backtracking).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
import pytest

from relay.regex import RegexError, compile_regex
from tests.conftest import RelayServer

PATTERNS = [
    "^h.*o$",
    "WORLD",
    "^[[:digit:]]+$",
    "[[:alpha:]]+[[:space:]][[:upper:]]",
    "^[^[:digit:]]*$",
    "[[:punct:]]",
    "[[:xdigit:]]{4}",
    "^a{2,3}$",
    "a{2,}",
    r"\d+",
    r"^\w+$",
    r"\s",
    r"\S+",
    r"\yfor\y",
    r"\Yor",
    r"^a.c$",
    r"a\.c",
    "^$",
    "(foo|bar)baz",
    "x*",
    "^(a+)+$",
    r"^(\w+\s?)+$",
    "(?i)hello",
    "***=a.c",
    "***:^ab",
    r"\x41",
    r"[\d]+",
    r"[a\-z]",
    "[]a]",
    "[^]a]",
    "a|",
    "colou?r",
    "ab*?c",
    "a{0}b",
    r"end\Z",
    r"^\Astart",
    "a$",
    "^line",
    "[[:alnum:]_]+@",
    "(((((a)))))",
    "(" * 200 + "a" + ")" * 200,
    "a{1,255}",
]

VALUES = [
    "hello",
    "HELLO world",
    "12345",
    "abc Def",
    "a.c",
    "abc",
    "aa",
    "aaa",
    "aaaa",
    "",
    "foobaz",
    "barbaz",
    "Quarterly report for marketing!",
    "colour",
    "color",
    "line1\nline2",
    "x\nend",
    "start",
    "user_1@example.com",
    "deadBEEF",
    "a" * 26 + "!",
    "a" * 40,
    "forward for",
    "tab\there",
    "]",
    "A",
]

# Postgres runs these; the relay refuses them on purpose (see relay.regex).
REFUSED = [
    (r"(a)\1", "back-reference"),
    ("a(?=b)", "lookahead"),
    ("a(?!b)", "lookahead"),
    ("(?<=a)b", "lookahead"),
    ("(?<!a)b", "lookahead"),
    (r"\mfoo", "not supported"),
    ("[[.a.]]", "not supported"),
    ("[[=a=]]", "not supported"),
]

# Postgres rejects these as well.
INVALID = ["(", "[a-", "a{256}", "a{3,2}", "*a", "a**", "[[:nope:]]", "\\"]


def _pg(db: psycopg.Connection[Any], value: str, pattern: str, op: str) -> bool | None:
    """Postgres' answer, or None if Postgres rejects the pattern."""
    try:
        with db.transaction():
            row = db.execute(f"select %s {op} %s", (value, pattern)).fetchone()
            assert row is not None
            return bool(row[0])
    except psycopg.errors.InvalidRegularExpression:
        return None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_answers_match_postgres(db: psycopg.Connection[Any], pattern: str) -> None:
    for insensitive, op in ((False, "~"), (True, "~*")):
        search = compile_regex(pattern, insensitive)
        for value in VALUES:
            want = _pg(db, value, pattern, op)
            assert want is not None, f"Postgres rejects {pattern!r}"
            got = search(value) is not None
            assert got == want, f"{value!r} {op} {pattern!r}: relay {got}, Postgres {want}"


@pytest.mark.parametrize(("pattern", "reason"), REFUSED)
def test_backtracking_constructs_are_refused(
    db: psycopg.Connection[Any], pattern: str, reason: str
) -> None:
    assert _pg(db, "ab", pattern, "~") is not None  # Postgres runs it ...
    with pytest.raises(RegexError, match=reason):  # ... the relay will not
        compile_regex(pattern, False)


@pytest.mark.parametrize("pattern", INVALID)
def test_patterns_postgres_rejects_are_rejected(db: psycopg.Connection[Any], pattern: str) -> None:
    assert _pg(db, "a", pattern, "~") is None
    with pytest.raises(RegexError):
        compile_regex(pattern, False)


def test_pathological_patterns_on_10_kb_are_fast() -> None:
    """Correctness of the answers; the time per evaluation is reported by bench/regex.py.

    The loose bound here only catches exponential behaviour (Python's `re` needs
    years for these inputs), never a slow machine.
    """
    value = "a" * 10_000 + "!"
    words = "Quarterly report for marketing " * 330 + "!"
    for pattern, text in (("^(a+)+$", value), (r"^(\w+\s?)+$", words), ("(a|aa)+$", value)):
        search = compile_regex(pattern, False)
        started = time.perf_counter()
        assert search(text) is None
        assert time.perf_counter() - started < 1.0


def test_subscribe_time_400_and_no_stall(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    """From outside: back-references are a 400; a pathological filter on a tenant's own
    huge row does not delay another tenant's delivery or /healthz."""
    t = make_table("id int primary key, org_id text, name text")
    bad = relay_server.open(
        {"sub": f"{t}:*:name=match.(a)\\1"},
        token=relay_server.token(sub="u", org_id="evil"),
        subscribed=False,
    )
    with bad:
        assert bad.status == 400 and "back-reference" in bad.body["message"]
    evil = [
        relay_server.open(
            {"sub": f"{t}:*:name=match.^(a+)+$"}, token=relay_server.token(org_id="evil")
        )
        for _ in range(4)
    ]
    victim = relay_server.open({"sub": t}, token=relay_server.token(org_id="victim"))
    try:
        db.execute(f"insert into {t} values (1, 'evil', %s)", ("a" * 10_000 + "!",))
        db.execute(f"insert into {t} values (2, 'victim', 'hello')")
        got = victim.next(10)
        assert got.data["new"]["id"] == 2
        assert httpx.get(f"{relay_server.url}/healthz", timeout=5).status_code == 200
        # a long-poll with a pathological pattern answers at once, repeatedly
        token = relay_server.token(org_id="evil")
        for _ in range(3):
            r = httpx.get(
                f"{relay_server.url}/v1/changes",
                params={"sub": f"{t}:*:name=match.^(\\w+\\s?)+$", "after": "0", "limit": "5"},
                headers={"authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert r.status_code == 200
    finally:
        for c in evil:
            c.close()
        victim.close()


def test_posix_bracket_class_delivers(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, name text")
    c = relay_server.open({"sub": f"{t}:INSERT:name=match.^[[:digit:]]+$"})
    with c:
        db.execute(f"insert into {t} values (1, 'o', 'abc'), (2, 'o', '12345')")
        assert c.next(10).data["new"]["id"] == 2
