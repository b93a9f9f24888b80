"""The watched tables as the relay knows them (loaded from `relay.watched`).

Invariant: the catalog is a snapshot; subscriptions are parsed against it
once, at subscribe time, and never consult the database per change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.columns import Column


@dataclass(frozen=True, slots=True)
class Table:
    """A watched table: ownership columns, primary key, visible columns."""

    schema: str
    name: str
    user_column: str | None
    org_column: str | None
    pk: tuple[str, ...]
    excluded: frozenset[str]
    columns: Mapping[str, Column] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def has_owner(self) -> bool:
        return self.user_column is not None or self.org_column is not None


@dataclass(frozen=True, slots=True)
class Catalog:
    """Watched tables by (schema, name)."""

    tables: Mapping[tuple[str, str], Table] = field(default_factory=dict)

    def get(self, schema: str, name: str) -> Table | None:
        return self.tables.get((schema, name))
