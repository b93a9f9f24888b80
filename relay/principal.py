"""Who is asking: the claims of a verified token that visibility depends on.

Invariant: a `Principal` only ever comes from a verified token (or the
embedded demo's own token); visibility decisions read nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVICE_ROLE = "service_role"


@dataclass(frozen=True, slots=True)
class Principal:
    """`sub` is the user id, `orgs` the organisations, `exp` a Unix time or None."""

    sub: str | None
    orgs: frozenset[str]
    role: str | None
    exp: float | None
    claims: dict[str, object]

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE

    def owns(self, user_id: str | None, org_id: str | None) -> bool:
        """True if a row version with these owner values is this principal's."""
        if self.role == SERVICE_ROLE:
            return True
        return (user_id is not None and user_id == self.sub) or (
            org_id is not None and org_id in self.orgs
        )
