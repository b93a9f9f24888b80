"""Token verification: a request's JWT becomes a `Principal`, or a 401.

Invariants: no token is accepted unverified (`alg: none` and unexpected
algorithms are rejected), `exp` is required, and an error says what is wrong
with the token in words a developer can act on, never echoing the token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

from relay.principal import Principal

ALGORITHMS = ["HS256"]


class AuthError(Exception):
    """A token problem, answered with 401 `{"error": code, "message": ...}`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def token_from(
    headers: Mapping[str, str], query: Mapping[str, str], cookies: Mapping[str, str]
) -> str | None:
    """First match wins: `Authorization: Bearer`, `access_token` query, `relay_token` cookie."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if query.get("access_token"):
        return query["access_token"]
    if cookies.get("relay_token"):
        return cookies["relay_token"]
    return None


def _orgs(claims: Mapping[str, Any]) -> frozenset[str]:
    orgs: set[str] = set()
    one = claims.get("org_id")
    if isinstance(one, str) and one:
        orgs.add(one)
    many = claims.get("org_ids")
    if isinstance(many, list):
        orgs.update(o for o in many if isinstance(o, str) and o)
    return frozenset(orgs)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    role = claims.get("role")
    exp = claims.get("exp")
    return Principal(
        sub=sub if isinstance(sub, str) and sub else None,
        orgs=_orgs(claims),
        role=role if isinstance(role, str) else None,
        exp=float(exp) if isinstance(exp, int | float) else None,
        claims=claims,
    )


class Authenticator:
    """Verifies HS256 tokens signed with the relay's secret."""

    def __init__(self, secret: str, *, leeway: float = 0.0) -> None:
        self._secret = secret
        self._leeway = leeway

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise AuthError(
                "missing_token",
                "no token: send 'Authorization: Bearer <jwt>', the access_token query "
                "parameter, or the relay_token cookie",
            )
        if len(token) > 16384:
            raise AuthError("invalid_token", "token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.DecodeError:
            raise AuthError("invalid_token", "token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError(
                "invalid_token",
                f"token algorithm {str(alg)[:20]!r} is not accepted (expected HS256)",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=ALGORITHMS,
                options={"require": ["exp"], "verify_aud": False},
                leeway=self._leeway,
            )
        except jwt.exceptions.ExpiredSignatureError:
            raise AuthError("token_expired", "token has expired: get a fresh one") from None
        except jwt.exceptions.MissingRequiredClaimError as exc:
            raise AuthError(
                "invalid_token", f"token lacks the required {exc.claim!r} claim"
            ) from None
        except jwt.exceptions.InvalidSignatureError:
            raise AuthError(
                "invalid_token", "token signature does not verify (signed with another key?)"
            ) from None
        except jwt.exceptions.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"token is invalid: {str(exc)[:100]}") from None
        return principal_from_claims(claims)


def make_token(
    secret: str,
    *,
    sub: str | None = None,
    org_id: str | None = None,
    org_ids: list[str] | None = None,
    role: str | None = "authenticated",
    ttl: float = 3600.0,
    **extra: Any,
) -> str:
    """Sign an HS256 token (demo token, tests, `relay token`)."""
    claims: dict[str, Any] = {"exp": int(time.time() + ttl), **extra}
    if sub is not None:
        claims["sub"] = sub
    if org_id is not None:
        claims["org_id"] = org_id
    if org_ids is not None:
        claims["org_ids"] = org_ids
    if role is not None:
        claims["role"] = role
    return jwt.encode(claims, secret, algorithm="HS256")
