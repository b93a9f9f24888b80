"""Per-client stream slots: how many streams (and waiting long-polls) one token holds.

Invariant: `StreamSlots.acquire` checks and takes a slot in one synchronous
step (no await in between), so however many opens race, the slots held under
one key never exceed the limit; a slot is given back exactly once, when its
stream or long-poll ends (or its request fails before it starts).
"""

from __future__ import annotations

import hashlib

from relay.principal import Principal


def limit_key(principal: Principal, token: str) -> str | None:
    """Whose slots a request uses: the token's `sub`, else its `jti`, else the token itself.

    `service_role` is not limited (None). A token without `sub` is still one
    credential: its streams count against the token's identity.
    """
    if principal.is_service:
        return None
    if principal.sub is not None:
        return "sub:" + principal.sub
    jti = principal.claims.get("jti")
    if isinstance(jti, str) and jti:
        return "jti:" + jti
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]


class Slot:
    """One held slot; `release` is idempotent."""

    __slots__ = ("_slots", "key")

    def __init__(self, slots: StreamSlots | None, key: str | None) -> None:
        self._slots = slots
        self.key = key

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None and self.key is not None:
            slots._release(self.key)


class StreamSlots:
    """At most `limit` slots per key."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def acquire(self, key: str | None) -> Slot | None:
        """A slot for `key` (an unlimited one for None), or None when the key is at its limit."""
        if key is None:
            return Slot(None, None)
        held = self._held.get(key, 0)
        if held >= self.limit:
            return None
        self._held[key] = held + 1
        return Slot(self, key)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def _release(self, key: str) -> None:
        left = self._held.get(key, 1) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)
