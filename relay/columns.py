"""Column metadata of watched tables, as the relay needs it to parse filters.

Invariant: a `Column` describes a column the way Postgres sees it (type name
and type category from `pg_type`), so comparisons can follow the column's
Postgres type without asking the database per change.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a watched table.

    `type_name` is `pg_type.typname` of the column's type (for arrays the
    element type prefixed by `_`, as Postgres names it: `_int4`), `category`
    is `pg_type.typcategory` (`N` numeric, `S` string, `B` boolean, `D`
    date/time, `U` user-defined such as uuid/jsonb, `E` enum, `A` array...).
    `enum_labels` holds an enum's labels in declaration order.
    """

    name: str
    type_name: str
    category: str
    enum_labels: tuple[str, ...] = field(default=())
