"""Visibility as SQL: a parsed filter and a token's ownership as a parameterized WHERE.

The snapshot (relay.snapshot) reads a table's current rows with the same rules
the hub applies to live changes; this module is the SQL half of those rules.

Invariants:
- Nothing a client sent is ever part of the SQL text: every filter value and
  every token claim travels as a text (or text[]) parameter and is converted
  by Postgres to the column's type (`$n::text::<type>`); identifiers (columns,
  and the schema-qualified type names read from pg_type) are quoted.
- Each compiled condition is a boolean SQL expression that is true exactly
  when `relay.filters` says the condition matches, and NULL or false
  otherwise, with Postgres' three-valued logic (so NOT/AND/OR trees compose
  as Postgres composes them): the SQL `WHERE` selects exactly the rows whose
  `to_jsonb(row)` the in-memory evaluator accepts. Where the evaluator orders
  text by code point, the SQL says `COLLATE "C"` (byte order of UTF-8 is
  code-point order).
- Ownership compiles to `Principal.owns` applied to the row, where the hub
  sees owner values as `to_jsonb(row) ->> column` (capture records them so);
  for text, uuid and integer owner columns the comparison is written on the
  column itself, so an index on it is used.
- Comparisons are written `column <op> parameter`, never on an expression of
  the column, so the table's indexes serve them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from datetime import date, time
from decimal import Decimal
from typing import Final

from relay.catalog import Table
from relay.columns import Column
from relay.filters import Condition, Filter
from relay.principal import Principal

__all__ = ["Params", "compile_filter", "compile_ownership", "ident"]

_COMPARE: Final[dict[str, str]] = {
    "eq": "=",
    "neq": "<>",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
}
_ORDER_OPS: Final = frozenset({"lt", "lte", "gt", "gte"})
_PATTERNS: Final[dict[str, str]] = {
    "like": "LIKE",
    "ilike": "ILIKE",
    "match": "~",
    "imatch": "~*",
}
_F32_MAX: Final = 3.4028234663852886e38
_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CANONICAL_INT: Final = re.compile(r"0|-?[1-9][0-9]{0,18}")
_TEXT_OWNERS: Final = frozenset({"text", "varchar"})
_INT_OWNERS: Final = frozenset({"int2", "int4", "int8"})


class Params:
    """The positional parameters ($1, $2, ...) of one statement, in order."""

    def __init__(self) -> None:
        self.values: list[str | list[str]] = []

    def text(self, value: str) -> str:
        """A placeholder for a text value."""
        self.values.append(value)
        return f"${len(self.values)}::text"

    def texts(self, values: list[str]) -> str:
        """A placeholder for a text[] value."""
        self.values.append(values)
        return f"${len(self.values)}::text[]"


def ident(name: str) -> str:
    """`name` as a quoted SQL identifier (any text is safe: `"` is doubled)."""
    if "\x00" in name:
        raise ValueError("an identifier cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def compile_filter(
    flt: Filter, columns: Mapping[str, Column], types: Mapping[str, str], row: str, params: Params
) -> str:
    """The SQL condition of `flt` on table alias `row` (the AND of its conditions).

    `columns` is the table's catalog (as the filter was parsed against it);
    `types` maps a column to its base type's quoted, schema-qualified name
    without modifier (`"pg_catalog"."int4"`: relay.snapshot.column_types), the
    type the text parameters are converted to.
    """
    # Logical trees (And/Or/Not nodes over conditions) compile node by node in
    # `_node`; today a filter is the AND of its conditions.
    return _and([_node(c, columns, types, row, params) for c in flt.conditions])


def _and(parts: list[str]) -> str:
    return "(" + " AND ".join(parts) + ")" if parts else "TRUE"


def _node(
    node: Condition, columns: Mapping[str, Column], types: Mapping[str, str], row: str, p: Params
) -> str:
    """One node of a filter. And/Or/Not nodes: `(a AND b)`, `(a OR b)`, `(NOT a)`."""
    return _condition(node, columns[node.column], types[node.column], row, p)


def _condition(c: Condition, column: Column, sql_type: str, row: str, p: Params) -> str:
    col = f"{row}.{ident(c.column)}"
    expr: str
    if c.op == "is":
        if c.value is None:
            if column.type_name in ("json", "jsonb"):  # to_jsonb shows a JSON null as null too
                null = f"({col} IS NULL OR jsonb_typeof({col}::jsonb) = 'null')"
                return f"(NOT {null})" if c.negated else null
            return f"({col} IS {'NOT ' if c.negated else ''}NULL)"
        word = "TRUE" if c.value is True else "FALSE"
        return f"({col} IS {'NOT ' if c.negated else ''}{word})"
    if c.op == "isdistinct":
        if c.value is None:  # IS DISTINCT FROM NULL
            return f"({col} IS {'NULL' if c.negated else 'NOT NULL'})"
        value = f"{p.text(_text(c.value, column))}::{sql_type}"
        return f"({col} IS {'NOT ' if c.negated else ''}DISTINCT FROM {value})"
    if c.op == "in":
        items = c.value
        assert isinstance(items, tuple)
        if items:
            values = p.texts([_text(v, column) for v in items])
            expr = f"{col} = ANY({values}::{sql_type}[])"
        else:  # x IN () is false, and NULL for a NULL x, as `x = ANY('{}')` is not
            expr = f"CASE WHEN {col} IS NULL THEN NULL ELSE FALSE END"
    elif c.op in _PATTERNS:
        assert isinstance(c.value, str)
        expr = f"{col} {_PATTERNS[c.op]} {p.text(c.value)}"
    else:
        value = f"{p.text(_text(c.value, column))}::{sql_type}"
        if c.op in _ORDER_OPS and column.category == "S":
            if column.type_name == "citext":  # lower-cased, then compared by code point
                expr = f'lower({col}::text) {_COMPARE[c.op]} (lower({value}::text) COLLATE "C")'
            else:
                expr = f'{col} {_COMPARE[c.op]} ({value} COLLATE "C")'
        else:
            expr = f"{col} {_COMPARE[c.op]} {value}"
    return f"(NOT ({expr}))" if c.negated else f"({expr})"


def _text(value: object, column: Column) -> str:
    """A converted filter value as text Postgres reads back as the same value.

    Floats are rounded here exactly as the evaluator rounds them (a float4
    filter value goes through a double first), so both compare the same number.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal) and column.type_name in ("float4", "float8"):
        number = float(value)
        if column.type_name == "float4" and abs(number) <= _F32_MAX:
            number = struct.unpack("<f", struct.pack("<f", number))[0]
        if number != number:
            return "NaN"
        if number in (float("inf"), float("-inf")):
            return "Infinity" if number > 0 else "-Infinity"
        return repr(number)
    if isinstance(value, date | time):
        return value.isoformat()
    return str(value)


def compile_ownership(table: Table, principal: Principal, row: str, params: Params) -> str:
    """The SQL condition "`principal` owns this row", on table alias `row`."""
    if principal.is_service:
        return "TRUE"
    parts: list[str] = []
    if table.user_column is not None and principal.sub is not None:
        part = _owned_by(table, table.user_column, [principal.sub], row, params)
        if part is not None:
            parts.append(part)
    if table.org_column is not None and principal.orgs:
        part = _owned_by(table, table.org_column, sorted(principal.orgs), row, params)
        if part is not None:
            parts.append(part)
    return "(" + " OR ".join(parts) + ")" if parts else "FALSE"


def _owned_by(table: Table, name: str, owners: list[str], row: str, p: Params) -> str | None:
    """`to_jsonb(row) ->> name` is one of `owners`; None when it never can be."""
    col = f"{row}.{ident(name)}"
    column = table.columns.get(name)
    kind = column.type_name if column is not None else ""
    if kind in _TEXT_OWNERS:
        values = owners
        cast = ""
    elif kind == "uuid":  # ->> prints a uuid in its one canonical form
        values = [o for o in owners if _CANONICAL_UUID.fullmatch(o)]
        cast = "::uuid"
    elif kind in _INT_OWNERS:  # ... and an integer in its one canonical form
        values = [o for o in owners if _CANONICAL_INT.fullmatch(o) and -(2**63) <= int(o) < 2**63]
        cast = "::int8"
    else:  # any other type: compare the text capture recorded
        if len(owners) == 1:
            return f"((to_jsonb({col}) #>> '{{}}') = {p.text(owners[0])})"
        return f"((to_jsonb({col}) #>> '{{}}') = ANY({p.texts(owners)}))"
    if not values:
        return None
    if len(values) == 1:
        return f"({col} = {p.text(values[0])}{cast})"
    return f"({col} = ANY({p.texts(values)}{cast + '[]' if cast else ''}))"
