"""Row filters in the Supabase-Realtime/PostgREST syntax: parsed once, evaluated per change.

A filter such as ``status=not.eq.done,amount=gte.10.5,id=in.(1,2,3)`` is parsed by
`parse_filter` against the columns of the watched table, and the resulting `Filter`
is evaluated with `Filter.matches` against every changed row (a mapping decoded from
Postgres' ``to_jsonb(row)`` with ``json.loads(text, parse_float=decimal.Decimal)``).

Invariant: a `Filter` only exists for a filter string that was fully validated against
the table's columns. Every filter value has already been converted to its column's
Postgres type and every operator is meaningful for that type, so `Filter.matches`
never parses the filter again, compares the way Postgres compares values of the
column's type, follows SQL's NULL rules (a NULL or missing column value makes every
condition false except ``is`` and ``isdistinct``, and ``not.`` does not change that),
and never raises: a row value it cannot interpret makes its condition false.
`parse_filter` raises nothing but `FilterError`, whose message names the offending
column, operator or value and quotes at most a short snippet of the input.
"""

from __future__ import annotations

import math
import operator
import re
import struct
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final, TypeAlias

from relay.columns import Column
from relay.regex import RegexError, compile_regex

__all__ = [
    "MAX_CONDITIONS",
    "MAX_DEPTH",
    "OPERATORS",
    "And",
    "Condition",
    "Filter",
    "FilterError",
    "Node",
    "Not",
    "Or",
    "leaves",
    "parse_filter",
]

OPERATORS: Final[tuple[str, ...]] = (
    "eq",
    "neq",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "like",
    "ilike",
    "is",
    "match",
    "imatch",
    "isdistinct",
)
_OPERATOR_SET: Final = frozenset(OPERATORS)
_COMPARISONS: Final = frozenset({"eq", "neq", "lt", "lte", "gt", "gte"})
_ORDERED_OPS: Final = _COMPARISONS | {"in", "isdistinct", "is"}
_STRING_OPS: Final = _ORDERED_OPS | {"like", "ilike", "match", "imatch"}
_BOOL_OPS: Final = frozenset({"eq", "neq", "in", "isdistinct", "is"})
_NULL_ONLY_OPS: Final = frozenset({"is"})

_SNIPPET: Final = 40  # longest piece of user input quoted back in an error message

Predicate = Callable[[Mapping[str, Any]], bool]


class FilterError(ValueError):
    """A filter string that cannot be used; the message is meant for the API user."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``column=[not.]op.value`` condition, with `value` converted to the column's type.

    `value` is: for comparisons, ``isdistinct`` and ``in`` elements, the value converted
    to the column's type (`int`, `Decimal`, `str`, `uuid.UUID`, `bool`, aware `datetime`
    for timestamptz, naive `datetime` for timestamp, `date`, `time`, an enum label; the
    infinities of date/time types are the strings ``"infinity"``/``"-infinity"``);
    a tuple of those for ``in``; `None` (NULL), `True` or `False` for ``is``; `None` for
    ``isdistinct.null``; the pattern string for ``like``/``ilike``/``match``/``imatch``.
    """

    column: str
    op: str
    negated: bool
    value: object


@dataclass(frozen=True, slots=True)
class And:
    """``and=(…)`` (or the top level of a filter): TRUE when every item is TRUE."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """``or=(…)``: TRUE when some item is TRUE, FALSE when every item is FALSE."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """``not.or=(…)`` / ``not.and=(…)``: TRUE when `item` is FALSE (NOT NULL is NULL)."""

    item: And | Or


Node: TypeAlias = Condition | And | Or | Not
"""A node of a parsed filter; leaves are `Condition`s. Logic is SQL's three-valued one."""


def leaves(node: Node) -> Iterator[Condition]:
    """The conditions under `node`, in the order they were written."""
    if isinstance(node, Condition):
        yield node
    elif isinstance(node, Not):
        yield from leaves(node.item)
    else:
        for item in node.items:
            yield from leaves(item)


class Filter:
    """A parsed filter: `tree` is the AND of its top-level parts. Build it with `parse_filter`.

    `conditions` lists every condition of the tree (nested ones included), `columns`
    the columns they read. A row is delivered when the tree is TRUE for it; FALSE and
    NULL (unknown) are not delivered, as in a ``WHERE`` clause.
    """

    __slots__ = ("tree", "conditions", "columns", "_predicates")

    tree: And
    conditions: tuple[Condition, ...]
    columns: frozenset[str]
    _predicates: tuple[Predicate, ...]

    def __init__(self, tree: And, predicates: tuple[Predicate, ...]) -> None:
        self.tree = tree
        self.conditions = tuple(leaves(tree))
        self.columns = frozenset(c.column for c in self.conditions)
        self._predicates = predicates

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether the filter is TRUE for `row` (not FALSE, not NULL); never raises."""
        try:
            for predicate in self._predicates:
                if not predicate(row):
                    return False
        except Exception:  # a predicate already guards itself; this is the last resort
            return False
        return True

    def __repr__(self) -> str:
        return f"Filter({self.tree!r})"


# --------------------------------------------------------------------------------------
# Column types: how a filter value is converted and how values are compared.
#
# Every type maps a value (the converted filter value, or a row value as decoded from
# JSON) to a *key*; keys of one type are hashable and totally ordered the way Postgres
# orders the type (NaN above every number, infinities of dates at both ends...). Row
# key functions raise on values they cannot interpret; predicates turn that into False.
# --------------------------------------------------------------------------------------


class _BadValue(Exception):
    """A filter value that does not convert; the message is safe to show (no input)."""


@dataclass(frozen=True, slots=True)
class _Type:
    name: str  # the column's type name, for messages
    ops: frozenset[str]
    hint: str  # what a valid value looks like, for messages
    convert: Callable[[str], object]  # filter value text -> Condition value
    value_key: Callable[[Any], Any]  # Condition value -> key
    row_key: Callable[[Any], Any]  # row value -> key (raises when it cannot)
    order_value_key: Callable[[Any], Any] | None = None  # lt/gt keys, if they differ
    order_row_key: Callable[[Any], Any] | None = None
    exact: type | None = None  # row values of this type are their own key; others are garbage
    case_insensitive: bool = False  # citext: comparisons and patterns ignore case


_NAN_KEY: Final = (1, 0)  # sorts above (0, number): Postgres puts NaN above everything


def _identity(value: Any) -> Any:
    return value


# integers ---------------------------------------------------------------------------

_INT_RE: Final = re.compile(r"[+-]?[0-9]{1,40}")
_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "int2": (-(2**15), 2**15 - 1),
    "int4": (-(2**31), 2**31 - 1),
    "int8": (-(2**63), 2**63 - 1),
    "oid": (0, 2**32 - 1),
}


def _int_type(name: str, low: int, high: int) -> _Type:
    def convert(text: str) -> object:
        text = text.strip()
        if not _INT_RE.fullmatch(text):
            raise _BadValue
        number = int(text)
        if not low <= number <= high:
            raise _BadValue
        return number

    return _Type(
        name=name,
        ops=_ORDERED_OPS,
        hint=f"expected an integer from {low} to {high}",
        convert=convert,
        value_key=_identity,
        row_key=_int_row_key,
        exact=int,
    )


def _int_row_key(value: Any) -> Any:
    if type(value) is int:
        return value
    raise TypeError


# numeric (exact) and float4/float8 --------------------------------------------------

_NUMBER_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,9})?")
_NUMBER_WORDS: Final[dict[str, Decimal]] = {
    "nan": Decimal("NaN"),
    "+nan": Decimal("NaN"),
    "-nan": Decimal("NaN"),
    "infinity": Decimal("Infinity"),
    "+infinity": Decimal("Infinity"),
    "inf": Decimal("Infinity"),
    "+inf": Decimal("Infinity"),
    "-infinity": Decimal("-Infinity"),
    "-inf": Decimal("-Infinity"),
}
# how to_jsonb spells the special values of numeric, float4 and float8
_ROW_NUMBER_WORDS: Final[dict[str, Decimal]] = {
    "NaN": Decimal("NaN"),
    "Infinity": Decimal("Infinity"),
    "-Infinity": Decimal("-Infinity"),
}
_ROW_FLOAT_WORDS: Final[dict[str, float]] = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}
_F32: Final = struct.Struct("<f")


def _convert_decimal(text: str) -> object:
    text = text.strip()
    if _NUMBER_RE.fullmatch(text):
        return Decimal(text)
    word = _NUMBER_WORDS.get(text.lower())
    if word is None:
        raise _BadValue
    return word


def _numeric_key(value: Any) -> Any:
    kind = type(value)
    if kind is Decimal:
        return _NAN_KEY if value.is_nan() else (0, value)
    if kind is int:
        return (0, value)
    if kind is str:
        return _numeric_key(_ROW_NUMBER_WORDS[value])
    if kind is float:  # only if the row was decoded without parse_float=Decimal
        return _NAN_KEY if value != value else (0, Decimal(repr(value)))
    raise TypeError


def _float8_key(value: Any) -> Any:
    kind = type(value)
    if kind is Decimal or kind is int or kind is float:
        number = float(value)
    elif kind is str:
        number = _ROW_FLOAT_WORDS[value]
    else:
        raise TypeError
    return _NAN_KEY if number != number else (0, number)


def _float4_key(value: Any) -> Any:
    key = _float8_key(value)
    if key is _NAN_KEY:
        return key
    return (0, _F32.unpack(_F32.pack(key[1]))[0])


def _float_value_key(row_key: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def value_key(value: Any) -> Any:
        try:
            key = row_key(value)
        except OverflowError:
            raise _BadValue("out of range for the type") from None
        if key is not _NAN_KEY and math.isinf(key[1]) and not value.is_infinite():
            raise _BadValue("out of range for the type")
        return key

    return value_key


_NUMERIC_HINT: Final = "expected a number such as 42, -0.5, 1e10, NaN or Infinity"
_NUMERIC = _Type(
    "numeric", _ORDERED_OPS, _NUMERIC_HINT, _convert_decimal, _numeric_key, _numeric_key
)
_FLOAT8 = _Type(
    "float8",
    _ORDERED_OPS,
    _NUMERIC_HINT,
    _convert_decimal,
    _float_value_key(_float8_key),
    _float8_key,
)
_FLOAT4 = _Type(
    "float4",
    _ORDERED_OPS,
    _NUMERIC_HINT,
    _convert_decimal,
    _float_value_key(_float4_key),
    _float4_key,
)


# strings ------------------------------------------------------------------------------


def _str_key(value: Any) -> Any:
    if type(value) is str:
        return value
    raise TypeError


def _bpchar_key(value: Any) -> Any:
    # char(n) compares without its trailing blanks (but LIKE and ~ see them)
    if type(value) is str:
        return value.rstrip(" ")
    raise TypeError


def _citext_key(value: Any) -> Any:
    if type(value) is str:
        return value.lower()
    raise TypeError


def _string_type(name: str) -> _Type:
    key = {"bpchar": _bpchar_key, "citext": _citext_key}.get(name, _str_key)
    return _Type(
        name=name,
        ops=_STRING_OPS,
        hint="expected a string",
        convert=_identity,
        value_key=key,
        row_key=key,
        exact=str if key is _str_key else None,
        case_insensitive=name == "citext",
    )


# uuid ------------------------------------------------------------------------------

_UUID_IN_RE: Final = re.compile(r"[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}")
_UUID_OUT_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _convert_uuid(text: str) -> object:
    """Accept what Postgres' uuid_in accepts: any case, optional braces and hyphens."""
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if not _UUID_IN_RE.fullmatch(text):
        raise _BadValue
    return uuid.UUID(hex=text.replace("-", ""))


def _uuid_value_key(value: Any) -> Any:
    return str(value)  # canonical: lower case, hyphenated; orders like Postgres' uuid


def _uuid_row_key(value: Any) -> Any:
    if type(value) is not str:
        raise TypeError
    if _UUID_OUT_RE.fullmatch(value):
        return value
    return str(_convert_uuid(value))


_UUID = _Type(
    "uuid",
    _ORDERED_OPS,
    "expected a UUID such as a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    _convert_uuid,
    _uuid_value_key,
    _uuid_row_key,
)


# bool --------------------------------------------------------------------------------


def _bool_words() -> dict[str, bool]:
    # Postgres' boolin: unique prefixes of true/false/yes/no, on, off (and "of"), 1, 0
    words: dict[str, bool] = {"on": True, "of": False, "off": False, "1": True, "0": False}
    for word, meaning in (("true", True), ("false", False), ("yes", True), ("no", False)):
        for end in range(1, len(word) + 1):
            words[word[:end]] = meaning
    return words


_BOOL_WORDS: Final = _bool_words()


def _convert_bool(text: str) -> object:
    meaning = _BOOL_WORDS.get(text.strip().lower())
    if meaning is None:
        raise _BadValue
    return meaning


def _bool_row_key(value: Any) -> Any:
    if type(value) is bool:
        return value
    raise TypeError


_BOOL = _Type(
    "bool", _BOOL_OPS, "expected true or false", _convert_bool, _identity, _bool_row_key, exact=bool
)


# date and time --------------------------------------------------------------------------

# keys of dates and timestamps are (0, value); the infinities sort around them
_INFINITY_KEYS: Final[dict[str, tuple[int, int]]] = {"infinity": (1, 0), "-infinity": (-1, 0)}
_DAY_US: Final = 86_400_000_000
_MIDNIGHT_24_RE: Final = re.compile(r"24:00(?::00(?:\.0*)?)?")


def _infinity(text: str) -> str | None:
    lowered = text.lower()
    if lowered in ("infinity", "+infinity", "-infinity"):
        return lowered.lstrip("+")
    return None


def _convert_timestamptz(text: str) -> object:
    text = text.strip()
    infinity = _infinity(text)
    if infinity is not None:
        return infinity
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # no offset: UTC
    return moment


def _convert_timestamp(text: str) -> object:
    text = text.strip()
    infinity = _infinity(text)
    if infinity is not None:
        return infinity
    # Postgres ignores an offset given for a timestamp without time zone
    return datetime.fromisoformat(text).replace(tzinfo=None)


def _timestamptz_key(value: Any) -> Any:
    if type(value) is str:
        infinity = _INFINITY_KEYS.get(value)
        if infinity is not None:
            return infinity
        value = datetime.fromisoformat(value)
    elif type(value) is not datetime:
        raise TypeError
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (0, value)  # aware datetimes compare (and hash) as instants


def _timestamp_key(value: Any) -> Any:
    if type(value) is str:
        infinity = _INFINITY_KEYS.get(value)
        if infinity is not None:
            return infinity
        value = datetime.fromisoformat(value)
    elif type(value) is not datetime:
        raise TypeError
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None)
    return (0, value)


def _convert_date(text: str) -> object:
    text = text.strip()
    infinity = _infinity(text)
    if infinity is not None:
        return infinity
    try:
        return date.fromisoformat(text)
    except ValueError:
        return datetime.fromisoformat(text).date()  # Postgres drops a time part


def _date_key(value: Any) -> Any:
    if type(value) is str:
        infinity = _INFINITY_KEYS.get(value)
        if infinity is not None:
            return infinity
        return (0, date.fromisoformat(value))
    if type(value) is date:
        return (0, value)
    raise TypeError


def _parse_time(text: str) -> tuple[int, int | None, time | None]:
    """(microseconds since midnight, UTC offset in seconds or None, time or None for 24:00)."""
    midnight = _MIDNIGHT_24_RE.match(text)
    if midnight:
        moment = time.fromisoformat("00:00" + text[midnight.end() :])
        extra = _DAY_US
    else:
        moment = time.fromisoformat(text)
        extra = 0
    micros = (
        (moment.hour * 60 + moment.minute) * 60 + moment.second
    ) * 1_000_000 + moment.microsecond
    offset = moment.utcoffset()
    seconds = None if offset is None else offset // timedelta(seconds=1)
    return micros + extra, seconds, None if extra else moment


def _convert_time(text: str) -> object:
    text = text.strip()
    _, _, moment = _parse_time(text)
    if moment is None:
        return "24:00:00"
    return moment.replace(tzinfo=None)  # Postgres ignores an offset given for a time


def _convert_timetz(text: str) -> object:
    text = text.strip()
    _, offset, moment = _parse_time(text)
    if moment is None:
        return text  # 24:00:00[offset]; the key is computed from the text
    if offset is None:
        moment = moment.replace(tzinfo=UTC)  # no offset: UTC
    return moment


def _time_key(value: Any) -> Any:
    if type(value) is time:
        value = value.isoformat()
    elif type(value) is not str:
        raise TypeError
    return _parse_time(value)[0]


def _timetz_key(value: Any) -> Any:
    if type(value) is time:
        value = value.isoformat()
    elif type(value) is not str:
        raise TypeError
    micros, offset, _ = _parse_time(value)
    zone = -(offset or 0)  # Postgres keeps seconds west of UTC and sorts on (UTC time, zone)
    return (micros + zone * 1_000_000, zone)


_DATETIME_HINT: Final = "expected an ISO 8601 timestamp such as 2026-11-22T23:10:05+00:00"
_TIMESTAMPTZ = _Type(
    "timestamptz",
    _ORDERED_OPS,
    _DATETIME_HINT,
    _convert_timestamptz,
    _timestamptz_key,
    _timestamptz_key,
)
_TIMESTAMP = _Type(
    "timestamp",
    _ORDERED_OPS,
    "expected an ISO 8601 timestamp such as 2026-11-22T23:10:05",
    _convert_timestamp,
    _timestamp_key,
    _timestamp_key,
)
_DATE = _Type(
    "date", _ORDERED_OPS, "expected a date such as 2026-11-22", _convert_date, _date_key, _date_key
)
_TIME = _Type(
    "time", _ORDERED_OPS, "expected a time such as 23:10:05", _convert_time, _time_key, _time_key
)
_TIMETZ = _Type(
    "timetz",
    _ORDERED_OPS,
    "expected a time such as 23:10:05+02:00",
    _convert_timetz,
    _timetz_key,
    _timetz_key,
)


# enums and everything else ---------------------------------------------------------------


def _enum_type(name: str, labels: tuple[str, ...]) -> _Type:
    positions = {label: position for position, label in enumerate(labels)}
    shown = ", ".join(labels)
    if len(shown) > 100:
        shown = shown[:97] + "..."

    def convert(text: str) -> object:
        if text not in positions:
            raise _BadValue
        return text

    def order_key(value: Any) -> Any:
        return positions[value]  # KeyError for a label we do not know: condition false

    # Equality compares labels, so it stays right for labels added after parsing;
    # order needs the declaration order.
    return _Type(
        name=name,
        ops=_ORDERED_OPS,
        hint=f"expected one of: {shown}",
        convert=convert,
        value_key=_identity,
        row_key=_str_key,
        order_value_key=order_key,
        order_row_key=order_key,
        exact=str,
    )


def _unsupported(value: Any) -> Any:
    raise TypeError


def _other_type(name: str) -> _Type:
    return _Type(name, _NULL_ONLY_OPS, "", _unsupported, _unsupported, _unsupported)


_FIXED_TYPES: Final[dict[str, _Type]] = {
    "numeric": _NUMERIC,
    "float4": _FLOAT4,
    "float8": _FLOAT8,
    "uuid": _UUID,
    "bool": _BOOL,
    "timestamptz": _TIMESTAMPTZ,
    "timestamp": _TIMESTAMP,
    "date": _DATE,
    "time": _TIME,
    "timetz": _TIMETZ,
}
# SQL spellings, should a caller hand us format_type() names instead of typnames
_ALIASES: Final[dict[str, str]] = {
    "smallint": "int2",
    "integer": "int4",
    "int": "int4",
    "bigint": "int8",
    "decimal": "numeric",
    "real": "float4",
    "double precision": "float8",
    "boolean": "bool",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time with time zone": "timetz",
    "time without time zone": "time",
    "character varying": "varchar",
    "character": "bpchar",
}


def _type_of(column: Column) -> _Type:
    name = column.type_name
    if column.category == "A" or name.startswith("_"):
        return _other_type(name)
    if column.category == "E":
        return _enum_type(name, column.enum_labels)
    base = _ALIASES.get(name, name)
    bounds = _INT_RANGES.get(base)
    if bounds is not None:
        return _int_type(name, *bounds)
    fixed = _FIXED_TYPES.get(base)
    if fixed is not None:
        return fixed
    if column.category == "S":
        return _string_type(base)
    return _other_type(name)


# --------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------


def _like_to_regex(pattern: str) -> str:
    """Translate a LIKE pattern into a regex for `re.fullmatch` (with re.DOTALL).

    ``%`` is any run, ``_`` any one character, ``\\`` makes the next character literal.
    The pieces between ``%`` are matched leftmost-first inside atomic groups, which is
    exact for LIKE and keeps matching linear-ish instead of exponential in the number
    of ``%`` (a hostile pattern must not stall the hot path).
    """
    pieces: list[list[str]] = [[]]
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            if index + 1 == len(pattern):
                raise _BadValue("a LIKE pattern must not end with the escape character \\")
            pieces[-1].append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if char == "%":
            pieces.append([])
        elif char == "_":
            pieces[-1].append(".")
        else:
            pieces[-1].append(re.escape(char))
        index += 1
    parts = ["".join(piece) for piece in pieces]
    if len(parts) == 1:
        return parts[0]
    first, *middle, last = parts
    return first + "".join(f"(?>.*?{part})" for part in middle if part) + ".*" + last


# --------------------------------------------------------------------------------------
# Lexing
# --------------------------------------------------------------------------------------


def _show(text: str) -> str:
    """A short, quoted snippet of user input for an error message."""
    if len(text) > _SNIPPET:
        return repr(text[:_SNIPPET]) + "..."
    return repr(text)


def _split_conditions(text: str) -> list[str]:
    """Split at the commas outside double quotes and parentheses."""
    parts: list[str] = []
    start = depth = index = 0
    end = len(text)
    while index < end:
        char = text[index]
        if char == '"':
            opened = index
            index += 1
            while True:
                if index >= end:
                    raise FilterError(
                        f"unbalanced quotes: the quote at position {opened} is never closed"
                    )
                char = text[index]
                if char == "\\":
                    index += 2
                    continue
                if char == '"':
                    break
                index += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                raise FilterError(
                    f"unbalanced parentheses: ')' at position {index} has no matching '('"
                )
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
        index += 1
    if depth:
        raise FilterError("unbalanced parentheses: a '(' is never closed")
    parts.append(text[start:])
    return parts


def _read_quoted(text: str, index: int) -> tuple[str, int]:
    """Read the quoted string starting at text[index] == '"'; return it and the end."""
    chars: list[str] = []
    index += 1
    end = len(text)
    while index < end:
        char = text[index]
        if char == "\\":
            if index + 1 >= end:
                break
            chars.append(text[index + 1])
            index += 2
        elif char == '"':
            return "".join(chars), index + 1
        else:
            chars.append(char)
            index += 1
    raise FilterError("unbalanced quotes: a quoted value is never closed")


def _scalar(raw: str, where: str) -> tuple[str, bool]:
    """The value of a non-``in`` condition, and whether it was quoted."""
    text = raw.strip()
    if text.startswith('"'):
        value, end = _read_quoted(text, 0)
        if end != len(text):
            raise FilterError(f"{where}: unexpected text after the closing quote of the value")
        return value, True
    if '"' in text:
        raise FilterError(
            f'{where}: a value containing " must be quoted entirely, writing \\" for the quote'
        )
    return text, False


def _items(raw: str, where: str, max_items: int) -> list[str]:
    """The elements of an ``in`` list ``(a,"b, c",d)``."""
    text = raw.strip()
    if len(text) < 2 or text[0] != "(" or text[-1] != ")":
        raise FilterError(f"{where}: 'in' takes a list in parentheses, such as in.(1,2,3)")
    inner = text[1:-1]
    items: list[str] = []
    if not inner.strip():
        return items
    index, end = 0, len(inner)
    while True:
        while index < end and inner[index].isspace():
            index += 1
        if index < end and inner[index] == '"':
            item, index = _read_quoted(inner, index)
            while index < end and inner[index].isspace():
                index += 1
            if index < end and inner[index] != ",":
                raise FilterError(f"{where}: unexpected text after a quoted element of the list")
        else:
            comma = inner.find(",", index)
            stop = end if comma < 0 else comma
            item = inner[index:stop].strip()
            if not item:
                raise FilterError(
                    f'{where}: empty element in the list (write "" for an empty string)'
                )
            if any(char in item for char in '"()'):
                raise FilterError(
                    f"{where}: a list element containing quotes or parentheses must be quoted"
                )
            index = stop
        items.append(item)
        if len(items) > max_items:
            raise FilterError(f"{where}: 'in' accepts at most {max_items} values")
        if index >= end:
            return items
        index += 1  # the comma


# --------------------------------------------------------------------------------------
# Predicates (closures built once per condition, called per change)
# --------------------------------------------------------------------------------------

_CMP: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
# keys are totally ordered (NaN included), so "not" of a comparison is its complement
_COMPLEMENT: Final[dict[str, str]] = {
    "eq": "neq",
    "neq": "eq",
    "lt": "gte",
    "lte": "gt",
    "gt": "lte",
    "gte": "lt",
}


def _compare_predicate(
    column: str,
    exact: type | None,
    row_key: Callable[[Any], Any],
    compare: Callable[[Any, Any], bool],
    target: Any,
) -> Predicate:
    if exact is not None:

        def exact_predicate(row: Mapping[str, Any]) -> bool:
            value = row.get(column)
            # NULL, or a value of another type (garbage), is false
            return type(value) is exact and compare(value, target)

        return exact_predicate

    def predicate(row: Mapping[str, Any]) -> bool:
        value = row.get(column)
        if value is None:
            return False
        try:
            return compare(row_key(value), target)
        except Exception:
            return False

    return predicate


def _in_predicate(
    column: str,
    exact: type | None,
    row_key: Callable[[Any], Any],
    targets: frozenset[Any],
    negated: bool,
) -> Predicate:
    if exact is not None:

        def exact_predicate(row: Mapping[str, Any]) -> bool:
            value = row.get(column)
            return type(value) is exact and (value in targets) is not negated

        return exact_predicate

    def predicate(row: Mapping[str, Any]) -> bool:
        value = row.get(column)
        if value is None:
            return False
        try:
            return (row_key(value) in targets) is not negated
        except Exception:
            return False

    return predicate


def _is_null_predicate(column: str, negated: bool) -> Predicate:
    def predicate(row: Mapping[str, Any]) -> bool:
        return (row.get(column) is None) is not negated

    return predicate


def _is_bool_predicate(column: str, wanted: bool, negated: bool) -> Predicate:
    def predicate(row: Mapping[str, Any]) -> bool:
        value = row.get(column)
        if value is None:
            return negated  # NULL IS TRUE is false, NULL IS NOT TRUE is true
        if type(value) is not bool:
            return False
        return (value is wanted) is not negated

    return predicate


def _distinct_predicate(
    column: str, row_key: Callable[[Any], Any], target: Any, negated: bool
) -> Predicate:
    # target None is SQL NULL
    def predicate(row: Mapping[str, Any]) -> bool:
        value = row.get(column)
        if value is None:
            return (target is not None) is not negated
        if target is None:
            return not negated
        try:
            return (row_key(value) != target) is not negated
        except Exception:
            return False

    return predicate


def _pattern_predicate(column: str, search: Callable[[str], object], negated: bool) -> Predicate:
    def predicate(row: Mapping[str, Any]) -> bool:
        value = row.get(column)
        if type(value) is not str:
            return False  # NULL, or not a string: false, negated or not
        return (search(value) is None) is negated

    return predicate


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def _convert(kind: _Type, text: str, where: str) -> tuple[object, Any]:
    """Convert a filter value for a column of type `kind`: (Condition value, key)."""
    try:
        value = kind.convert(text)
        return value, kind.value_key(value)
    except _BadValue as exc:
        reason = str(exc) or kind.hint
    except Exception:
        reason = kind.hint
    raise FilterError(f"{where}: invalid value {_show(text)} for type {kind.name}: {reason}")


def _compile(pattern: str, flags: int, where: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise FilterError(f"{where}: invalid {what}: {exc.msg}") from None
    except Exception:
        raise FilterError(f"{where}: invalid {what}: too large or too deeply nested") from None


def _parse_condition(
    name: str,
    rest: str,
    columns: Mapping[str, Column],
    max_in_values: int,
    unavailable: Collection[str] = (),
    *,
    flip: bool = False,
    sep: str = "=",
) -> tuple[Condition, Predicate]:
    """One condition on column `name`, `rest` being ``[not.]op.value``.

    The predicate holds when the condition is TRUE, or with `flip` when it is FALSE
    (the same condition with its ``not.`` toggled: a NULL makes both false).
    """
    column = columns.get(name)
    if column is None:
        if name in unavailable:
            raise FilterError(f"column {_show(name)} is not available (excluded from capture)")
        raise FilterError(f"unknown column {_show(name)}")
    where = f"column {_show(name)}"

    rest = rest.lstrip()
    written_negated = rest.startswith("not.")
    if written_negated:
        rest = rest[4:]
    negated = written_negated is not flip
    dot = rest.find(".")
    op = rest if dot < 0 else rest[:dot]
    if op not in _OPERATOR_SET:
        if not op.strip() or (op == "not" and dot < 0):
            raise FilterError(f"{where}: missing operator: expected e.g. {name}{sep}eq.value")
        if op == "not":
            raise FilterError(f"{where}: 'not.' may appear only once, before the operator")
        raise FilterError(
            f"{where}: unknown operator {_show(op)}; expected one of {', '.join(OPERATORS)}"
        )
    if dot < 0:
        raise FilterError(f"{where}: operator {op!r} must be followed by '.' and a value")
    raw = rest[dot + 1 :]

    kind = _type_of(column)
    if op not in kind.ops:
        allowed = ", ".join(o for o in OPERATORS if o in kind.ops)
        raise FilterError(
            f"{where}: operator {op!r} is not supported on type {kind.name} (use {allowed})"
        )

    value: object
    predicate: Predicate
    if op == "in":
        converted = [_convert(kind, item, where) for item in _items(raw, where, max_in_values)]
        value = tuple(v for v, _ in converted)
        targets = frozenset(k for _, k in converted)
        predicate = _in_predicate(name, kind.exact, kind.row_key, targets, negated)
    else:
        text_value, quoted = _scalar(raw, where)
        if op == "is":
            word = text_value.strip().lower()
            if word in ("null", "unknown") and (word == "null" or kind is _BOOL):
                value = None
                predicate = _is_null_predicate(name, negated)
            elif word in ("true", "false") and kind is _BOOL:
                value = word == "true"
                predicate = _is_bool_predicate(name, word == "true", negated)
            elif word in ("true", "false", "unknown"):
                raise FilterError(f"{where}: is.{word} applies to boolean columns only")
            else:
                raise FilterError(
                    f"{where}: 'is' takes null, true, false or unknown, not {_show(text_value)}"
                )
        elif op == "isdistinct":
            if not quoted and text_value.lower() == "null":
                value, key = None, None
            else:
                value, key = _convert(kind, text_value, where)
            predicate = _distinct_predicate(name, kind.row_key, key, negated)
        elif op in ("like", "ilike", "match", "imatch"):
            value = text_value
            insensitive = op in ("ilike", "imatch") or kind.case_insensitive
            flags = re.DOTALL | (re.IGNORECASE if insensitive else 0)
            search: Callable[[str], object]
            if op in ("like", "ilike"):
                try:
                    regex = _like_to_regex(text_value)
                except _BadValue as exc:
                    raise FilterError(f"{where}: {exc}") from None
                search = _compile(regex, flags, where, "LIKE pattern").fullmatch
            else:
                try:  # RE2, linear time (relay.regex); Python's re could backtrack forever
                    search = compile_regex(text_value, insensitive)
                except RegexError as exc:
                    raise FilterError(f"{where}: invalid regular expression: {exc}") from None
            predicate = _pattern_predicate(name, search, negated)
        else:
            value, key = _convert(kind, text_value, where)
            exact, row_key = kind.exact, kind.row_key
            order_value_key, order_row_key = kind.order_value_key, kind.order_row_key
            if op not in ("eq", "neq") and order_value_key and order_row_key:
                # enums: equality on labels, order on declaration order
                key, exact, row_key = order_value_key(value), None, order_row_key
            effective = _COMPLEMENT[op] if negated else op
            predicate = _compare_predicate(name, exact, row_key, _CMP[effective], key)
    return Condition(name, op, written_negated, value), predicate


# --------------------------------------------------------------------------------------
# Logical trees: or=(…), and=(…), not.or=(…), nested or(…)/and(…)
# --------------------------------------------------------------------------------------

_LOGICAL_NAMES: Final[dict[str, tuple[str, bool]]] = {
    "or": ("or", False),
    "and": ("and", False),
    "not.or": ("or", True),
    "not.and": ("and", True),
}
_NESTED_RE: Final = re.compile(r"(not\.)?(or|and)\(")
_NESTED_NOT_NOT_RE: Final = re.compile(r"not\.(?:not\.)+(?:or|and)\(")


def _any(predicates: tuple[Predicate, ...]) -> Predicate:
    def predicate(row: Mapping[str, Any]) -> bool:
        for item in predicates:
            if item(row):
                return True
        return False

    return predicate


def _all(predicates: tuple[Predicate, ...]) -> Predicate:
    def predicate(row: Mapping[str, Any]) -> bool:
        for item in predicates:
            if not item(row):
                return False
        return True

    return predicate


class _Parser:
    """Parses one filter, counting its conditions against the limits.

    Every node is compiled for a *polarity*: positive, the predicate holds when the
    node is TRUE; negative, when it is FALSE (for a condition, the same condition with
    ``not.`` toggled). ``not.`` on a tree flips the polarity of its items, so a NULL
    stays unknown through any number of negations, as in SQL: OR is TRUE when an item
    is TRUE and FALSE when all are FALSE; AND is TRUE when all are TRUE and FALSE when
    one is FALSE; anything else is NULL and never delivered.
    """

    def __init__(
        self,
        columns: Mapping[str, Column],
        max_in_values: int,
        unavailable: Collection[str],
        max_depth: int,
        max_conditions: int,
    ) -> None:
        self.columns = columns
        self.max_in_values = max_in_values
        self.unavailable = unavailable
        self.max_depth = max_depth
        self.max_conditions = max_conditions
        self.count = 0

    def _counted(self) -> None:
        self.count += 1
        if self.count > self.max_conditions:
            raise FilterError(
                f"too many conditions: a filter may hold at most {self.max_conditions}, "
                "nested ones included"
            )

    def part(self, text: str) -> tuple[Node, Predicate]:
        """A top-level part: ``column=[not.]op.value`` or ``[not.]or|and=(…)``."""
        equals = text.find("=")
        if equals < 0:
            raise FilterError(f"condition {_show(text)} has no '=': expected column=operator.value")
        name = text[:equals].strip()
        if not name:
            raise FilterError(f"condition {_show(text)} has no column name before '='")
        rest = text[equals + 1 :]
        logical = _LOGICAL_NAMES.get(name)
        if logical is not None:
            if rest.lstrip().startswith("("):
                kind, negated = logical
                return self.tree(kind, negated, rest.strip(), 1, True, f"{name}=(…)")
            if name not in self.columns:
                raise FilterError(
                    f"{name}= takes conditions in parentheses, such as "
                    f"{name}=(status.eq.failed,progress.gte.90)"
                )
        self._counted()
        return _parse_condition(name, rest, self.columns, self.max_in_values, self.unavailable)

    def tree(
        self, kind: str, negated: bool, text: str, depth: int, positive: bool, label: str
    ) -> tuple[Node, Predicate]:
        """``(item,item,…)`` of an or/and; `positive` is the polarity of the whole node."""
        if depth > self.max_depth:
            raise FilterError(f"the filter nests or/and more than {self.max_depth} levels deep")
        if not text.endswith(")"):
            raise FilterError(f"{label}: unexpected text after the closing ')'")
        inner = text[1:-1]
        parts = _split_conditions(inner)
        if len(parts) == 1 and not parts[0].strip():
            raise FilterError(f"{label} is empty: give at least one condition inside")
        inner_positive = positive is not negated
        nodes: list[Node] = []
        predicates: list[Predicate] = []
        for number, item in enumerate(parts, start=1):
            item = item.strip()
            if not item:
                raise FilterError(
                    f"{label}: condition {number} is empty (a doubled, leading or trailing ',')"
                )
            node, predicate = self.item(item, depth, inner_positive)
            nodes.append(node)
            predicates.append(predicate)
        items = tuple(predicates)
        tree: And | Or = Or(tuple(nodes)) if kind == "or" else And(tuple(nodes))
        # OR holds when one item holds, and fails when all fail; AND the other way round
        combined = _any(items) if (kind == "or") is inner_positive else _all(items)
        if len(items) == 1:
            combined = items[0]
        return (Not(tree) if negated else tree), combined

    def item(self, text: str, depth: int, positive: bool) -> tuple[Node, Predicate]:
        """An item inside a tree: ``column.[not.]op.value`` or ``[not.]or|and(…)``."""
        nested = _NESTED_RE.match(text)
        if nested is not None:
            negated, kind = nested.group(1) is not None, nested.group(2)
            label = f"{nested.group(0)}…)"
            return self.tree(kind, negated, text[nested.end() - 1 :], depth + 1, positive, label)
        if _NESTED_NOT_NOT_RE.match(text):
            raise FilterError("'not.' may appear only once before or(…)/and(…)")
        if text.startswith('"'):
            name, end = _read_quoted(text, 0)
            if text[end : end + 1] != ".":
                raise FilterError(
                    f"condition {_show(text)}: expected '.' after the quoted column name"
                )
            rest = text[end + 1 :]
        else:
            dot = text.find(".")
            if dot < 0:
                raise FilterError(
                    f"condition {_show(text)} has no '.': inside or/and a condition is "
                    "column.operator.value"
                )
            name, rest = text[:dot].strip(), text[dot + 1 :]
        if not name:
            raise FilterError(f"condition {_show(text)} has no column name before '.'")
        if "=" in name and name not in self.columns:
            raise FilterError(
                f"condition {_show(text)}: inside or/and a condition is column.operator.value "
                "(a '.' after the column, not '=')"
            )
        self._counted()
        return _parse_condition(
            name,
            rest,
            self.columns,
            self.max_in_values,
            self.unavailable,
            flip=not positive,
            sep=".",
        )


MAX_DEPTH: Final = 8
MAX_CONDITIONS: Final = 100


def parse_filter(
    text: str,
    columns: Mapping[str, Column],
    *,
    max_in_values: int = 100,
    max_length: int = 4096,
    max_depth: int = MAX_DEPTH,
    max_conditions: int = MAX_CONDITIONS,
    unavailable: Collection[str] = (),
) -> Filter:
    """Parse `text` against the table's `columns`.

    `text` is parts joined by ``,`` (AND): ``col=[not.]op.value`` conditions and
    PostgREST logical trees ``or=(…)``, ``and=(…)``, ``not.or=(…)``, ``not.and=(…)``,
    whose items are ``col.[not.]op.value`` or nested ``[not.]or(…)``/``[not.]and(…)``.
    At most `max_depth` levels of or/and nest, and the whole filter holds at most
    `max_conditions` conditions (nested ones included).

    Raises `FilterError` (and nothing else) when the filter is malformed, names an
    unknown column, uses an operator the column's type does not support, holds a
    value that does not convert to the column's type, or exceeds a limit.
    """
    try:
        if not isinstance(text, str):
            raise FilterError("the filter must be a string")
        if len(text) > max_length:
            raise FilterError(
                f"the filter is too long: {len(text)} characters, at most {max_length}"
            )
        if "\x00" in text:
            raise FilterError("the filter contains a NUL character")
        if not text.strip():
            raise FilterError("the filter is empty")
        parser = _Parser(columns, max_in_values, unavailable, max_depth, max_conditions)
        nodes: list[Node] = []
        predicates: list[Predicate] = []
        for number, part in enumerate(_split_conditions(text), start=1):
            part = part.strip()
            if not part:
                raise FilterError(
                    f"condition {number} is empty (a doubled, leading or trailing ',')"
                )
            node, predicate = parser.part(part)
            nodes.append(node)
            predicates.append(predicate)
        return Filter(And(tuple(nodes)), tuple(predicates))
    except FilterError:
        raise
    except Exception as exc:  # a bug, or a pathological input; keep the contract
        raise FilterError("the filter could not be parsed") from exc
