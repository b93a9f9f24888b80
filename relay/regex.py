"""Postgres regular expressions (`~`, `~*`) evaluated by RE2, in time linear in the input.

`compile_regex` translates a Postgres ARE (advanced regular expression) to RE2
syntax and compiles it once; the result's `search` answers whether the value
contains a match, as `value ~ pattern` would.

Invariants:
- Evaluation never backtracks: RE2 runs in time linear in the value's length
  whatever the pattern (`^(a+)+$` on 10 KB costs what `^a+$` costs), with
  memory bounded by `MAX_MEM` per pattern.
- A pattern is either translated to one with the same match/no-match answer
  as Postgres gives, or refused with `RegexError` naming the construct:
  back-references (`\\1`) and lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`) need
  backtracking; `\\m`, `\\M`, collating elements `[[.x.]]` and equivalence
  classes `[[=x=]]` have no RE2 equivalent; repetition counts above 255 are
  an error in Postgres too.
- Postgres' own escapes mean what they mean there: `\\y`/`\\Y` word boundary,
  `\\b` backspace, `\\B` a backslash, `\\Z` end of string; `.` matches a newline
  and `^`/`$` anchor at the ends of the value only (Postgres' default flags).
- Only whether a match exists is used, so greedy and lazy quantifiers agree.
Class escapes and POSIX classes (`\\w`, `[[:alpha:]]`) follow ASCII, as in
Postgres under the C locale; under a libc UTF-8 locale Postgres also counts
non-ASCII letters and digits (documented in the README).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Final

import re2

__all__ = ["RegexError", "compile_regex"]

MAX_MEM: Final = 4 << 20  # bytes per compiled pattern (program and DFA cache)
MAX_BOUND: Final = 255  # Postgres' largest repetition count (RE_DUP_MAX)
_CLASSES: Final = frozenset(
    "alnum alpha ascii blank cntrl digit graph lower print punct space upper word xdigit".split()
)
# escapes passed to RE2 unchanged (same meaning in both)
_SAME: Final = frozenset("dDsSwWfnrtvA")
_RENAMED: Final = {"y": r"\b", "Y": r"\B", "Z": r"\z", "b": r"\x08", "B": r"\\", "a": r"\x07"}
_RENAMED["e"] = r"\x1b"


class RegexError(ValueError):
    """A pattern Postgres would reject, or one that cannot run in linear time."""


def _hex(text: str, start: int, digits: int | None) -> tuple[str, int]:
    """`\\x`, `\\u`, `\\U` escapes: the code point as RE2 `\\x{...}`, and the next index."""
    end = start
    limit = len(text) if digits is None else min(len(text), start + digits)
    while end < limit and text[end] in "0123456789abcdefABCDEF":
        end += 1
    if end == start or (digits is not None and end - start != digits):
        raise RegexError("invalid escape: expected hexadecimal digits")
    code = int(text[start:end], 16)
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise RegexError("invalid escape: not a usable character code")
    return "\\x{" + format(code, "x") + "}", end


def _escape(text: str, i: int, in_bracket: bool) -> tuple[str, int]:
    """Translate the escape starting at `text[i] == '\\'`: (RE2 text, next index)."""
    if i + 1 >= len(text):
        raise RegexError("invalid escape: the pattern ends with \\")
    c = text[i + 1]
    if not c.isalnum():
        return "\\" + c, i + 2
    if c in "123456789":
        raise RegexError(
            f"back-reference \\{c} is not supported: it needs backtracking, which could "
            "stall the relay (match without it)"
        )
    if c in "mM":
        raise RegexError(f"\\{c} (start/end of word) is not supported: use \\y")
    if c in _SAME and not (in_bracket and c == "A"):
        return "\\" + c, i + 2
    if c in _RENAMED and not in_bracket:
        return _RENAMED[c], i + 2
    if in_bracket and c in "bB":
        return _RENAMED[c], i + 2
    if c == "x":
        return _hex(text, i + 2, None)
    if c == "u":
        return _hex(text, i + 2, 4)
    if c == "U":
        return _hex(text, i + 2, 8)
    if c == "c" and i + 2 < len(text):
        code = ord(text[i + 2]) & 0x1F
        if code == 0:
            raise RegexError("invalid escape: \\c gives a NUL character")
        return "\\x{" + format(code, "x") + "}", i + 3
    raise RegexError(f"invalid escape \\{c}")


def _bracket(text: str, i: int) -> tuple[str, int]:
    """Translate the bracket expression starting at `text[i] == '['`."""
    out = ["["]
    j = i + 1
    if j < len(text) and text[j] == "^":
        out.append("^")
        j += 1
    if j < len(text) and text[j] == "]":
        out.append(r"\]")
        j += 1
    while j < len(text):
        c = text[j]
        if c == "]":
            out.append("]")
            return "".join(out), j + 1
        if c == "[" and j + 1 < len(text) and text[j + 1] in ".=:":
            kind = text[j + 1]
            end = text.find(kind + "]", j + 2)
            if end < 0:
                raise RegexError("unterminated [: :], [. .] or [= =] in a bracket expression")
            name = text[j + 2 : end]
            if kind != ":":
                raise RegexError(
                    "collating elements [. .] and equivalence classes [= =] are not supported"
                )
            if name not in _CLASSES:
                raise RegexError(f"unknown character class [:{name[:20]}:]")
            out.append(f"[:{name}:]")
            j = end + 2
            continue
        if c == "\\":
            piece, j = _escape(text, j, True)
            out.append(piece)
            continue
        if c == "[":
            out.append(r"\[")
        else:
            out.append(c)
        j += 1
    raise RegexError("brackets [ ] not balanced")


def _bound(text: str, i: int) -> tuple[str, int] | None:
    """A `{m}`, `{m,}` or `{m,n}` bound at `text[i] == '{'`, checked; None if not a bound."""
    end = text.find("}", i)
    if end < 0:
        return None
    body = text[i + 1 : end]
    low, comma, high = body.partition(",")
    if not low.isdigit() or not low.isascii() or (high and not (high.isdigit() and high.isascii())):
        return None
    if len(low) > 4 or len(high) > 4 or int(low) > MAX_BOUND or (high and int(high) > MAX_BOUND):
        raise RegexError(f"invalid repetition count: at most {MAX_BOUND}")
    if high and int(high) < int(low):
        raise RegexError("invalid repetition count: the upper bound is below the lower")
    return text[i : end + 1], end + 1


def translate(pattern: str) -> tuple[str, bool | None]:
    """(RE2 pattern, case override from an embedded `(?i)`/`(?c)` or None)."""
    case: bool | None = None
    if pattern.startswith("***="):
        return re2.escape(pattern[4:]), None
    if pattern.startswith("***:"):
        pattern = pattern[4:]
    if pattern.startswith("(?") and (close := pattern.find(")")) > 2:
        flags = pattern[2:close]
        if flags.isalpha():
            for f in flags:
                if f == "i":
                    case = True
                elif f == "c":
                    case = False
                elif f == "q":
                    return re2.escape(pattern[close + 1 :]), case
                elif f != "s":
                    raise RegexError(f"embedded option {f!r} is not supported")
            pattern = pattern[close + 1 :]
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            piece, i = _escape(pattern, i, False)
            out.append(piece)
        elif c == "[":
            piece, i = _bracket(pattern, i)
            out.append(piece)
        elif c == "(" and pattern.startswith("(?", i):
            if pattern.startswith("(?:", i):
                out.append("(?:")
                i += 3
            elif pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
                raise RegexError(
                    "lookahead/lookbehind constraints are not supported: they need "
                    "backtracking, which could stall the relay"
                )
            else:
                raise RegexError("invalid (? group: only (?: is allowed inside a pattern")
        elif c == "{":
            bound = _bound(pattern, i)
            if bound is None:
                out.append(r"\{")
                i += 1
            else:
                out.append(bound[0])
                i = bound[1]
        else:
            out.append(c)
            i += 1
    return "".join(out), case


@functools.lru_cache(maxsize=4096)
def compile_regex(pattern: str, insensitive: bool) -> Callable[[str], object]:
    """A `search(value)` for `value ~ pattern` (`~*` with `insensitive`); truthy on a match.

    Compiled once per (pattern, flags) and shared: many streams with the same
    filter hold one program.
    """
    if "\x00" in pattern:
        raise RegexError("NUL character in the pattern")
    translated, case = translate(pattern)
    options = re2.Options()
    options.log_errors = False
    options.dot_nl = True
    options.never_capture = True
    options.max_mem = MAX_MEM
    options.case_sensitive = not (insensitive if case is None else case)
    try:
        compiled = re2.compile(translated, options)
    except re2.error as exc:
        message = exc.args[0] if exc.args else "invalid"
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        raise RegexError(str(message)[:120]) from None
    except Exception:
        raise RegexError("too large or too deeply nested") from None
    search: Callable[[str], object] = compiled.search
    return search
