"""Token verification: a request's JWT becomes a `Principal`, or a 401.

Invariants: no token is accepted unverified (`alg: none` and unexpected
algorithms are rejected), `exp` is required and must be a JSON number, and an
error says what is wrong with the token in words a developer can act on,
never echoing the token. Whatever bytes arrive as a token, `verify` either
returns a `Principal` or raises `AuthError` (a 401): a malformed header
(`crit`, a non-string `kid` or `alg`), a key of the wrong type for the
algorithm, or a failure inside the JWT library is never a 5xx.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt

from relay.principal import Principal

ASYMMETRIC = ("RS256", "ES256")
# The JWK key type (`kty`) each asymmetric algorithm needs.
KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
log = logging.getLogger("relay.auth")


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


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (`app_metadata.org_id`); None if absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _is_number(value: Any) -> bool:
    """A JSON number (not a string of digits, not a boolean), finite."""
    return type(value) in (int, float) and math.isfinite(value)


def _strings(value: Any) -> set[str]:
    if isinstance(value, str) and value:
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str) and v}
    return set()


def principal_from_claims(
    claims: dict[str, Any], org_claims: tuple[str, ...] = ("org_id", "org_ids")
) -> Principal:
    """The principal of verified claims; orgs come from every path in `org_claims`."""
    sub = claims.get("sub")
    role = claims.get("role")
    exp = claims.get("exp")
    orgs: set[str] = set()
    for path in org_claims:
        orgs |= _strings(_claim(claims, path))
    return Principal(
        sub=sub if isinstance(sub, str) and sub else None,
        orgs=frozenset(orgs),
        role=role if isinstance(role, str) else None,
        exp=float(exp) if isinstance(exp, int | float) else None,
        claims=claims,
    )


class JwksKeys:
    """Public keys by `kid`, from a JWKS file or URL; an unknown `kid` refetches.

    Invariant: at most one fetch per `min_refresh` seconds whatever tokens
    arrive (a flood of made-up kids cannot hammer the identity provider), and
    keys are refreshed every `max_age` seconds so rotation is picked up.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | None = None,
        min_refresh: float = 30.0,
        max_age: float = 3600.0,
    ) -> None:
        self.url = url
        self.path = path
        self.min_refresh = min_refresh
        self.max_age = max_age
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -1e9
        self._lock = asyncio.Lock()

    def _load(self, text: str) -> None:
        keys: dict[str, jwt.PyJWK] = {}
        for key in jwt.PyJWKSet.from_json(text).keys:
            if key.key_id:
                keys[key.key_id] = key
        self._keys = keys

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self.min_refresh:
                return
            self._fetched_at = time.monotonic()
            if self.path is not None:
                self._load(await asyncio.to_thread(Path(self.path).read_text))
            elif self.url is not None:
                async with httpx.AsyncClient(timeout=5) as client:
                    r = await client.get(self.url)
                    r.raise_for_status()
                    self._load(r.text)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        stale = time.monotonic() - self._fetched_at > self.max_age
        if kid not in self._keys or stale:
            try:
                await self.refresh()
            except (OSError, httpx.HTTPError, jwt.exceptions.PyJWKSetError, ValueError) as exc:
                log.warning("JWKS refresh failed: %s", type(exc).__name__)
        return self._keys.get(kid)


class Authenticator:
    """Verifies tokens: HS256 with the relay's secret, RS256/ES256 against a JWKS."""

    def __init__(
        self,
        secret: str | None,
        *,
        leeway: float = 0.0,
        jwks: JwksKeys | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        org_claims: tuple[str, ...] = ("org_id", "org_ids"),
    ) -> None:
        self._secret = secret
        self._leeway = leeway
        self._jwks = jwks
        self._audience = audience
        self._issuer = issuer
        self._org_claims = org_claims

    async def verify(self, token: str | None) -> Principal:
        if not token:
            raise AuthError(
                "missing_token",
                "no token: send 'Authorization: Bearer <jwt>', the access_token query "
                "parameter, or the relay_token cookie",
            )
        if len(token) > 16384:
            raise AuthError("invalid_token", "token is too long")
        try:
            return await self._verify(token)
        except AuthError:
            raise
        except Exception as exc:  # the last resort: a token can never cause a 5xx
            log.info("token rejected by an unexpected error: %s", type(exc).__name__)
            raise AuthError("invalid_token", "token could not be verified") from None

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.InvalidTokenError as exc:
            raise AuthError(
                "invalid_token", f"token is not a well-formed JWT: {str(exc)[:100]}"
            ) from None
        if "crit" in header:
            raise AuthError(
                "invalid_token", "token header has a 'crit' parameter: no extension is supported"
            )
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("invalid_token", "token header 'alg' must be a string")
        key: Any
        if alg == "HS256" and self._secret:
            key = self._secret
        elif alg in ASYMMETRIC and self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise AuthError("invalid_token", f"{alg} token has no string 'kid' header")
            jwk = await self._jwks.get(kid)
            if jwk is None:
                raise AuthError("invalid_token", f"no key with kid {kid[:40]!r} in the JWKS")
            if jwk.key_type != KEY_TYPES[alg] or (alg == "ES256" and jwk.algorithm_name != alg):
                raise AuthError(
                    "invalid_token",
                    f"token algorithm {alg} does not fit key {kid[:40]!r} (a {jwk.key_type} key)",
                )
            key = jwk.key
        else:
            accepted = (["HS256"] if self._secret else []) + (
                list(ASYMMETRIC) if self._jwks is not None else []
            )
            raise AuthError(
                "invalid_token",
                f"token algorithm {alg[:20]!r} is not accepted "
                f"(expected {' or '.join(accepted) or 'none configured'})",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                options={"require": ["exp"], "verify_aud": self._audience is not None},
                audience=self._audience,
                issuer=self._issuer,
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
        except jwt.exceptions.InvalidAudienceError:
            raise AuthError("invalid_token", "token audience (aud) is not accepted") from None
        except jwt.exceptions.InvalidIssuerError:
            raise AuthError("invalid_token", "token issuer (iss) is not accepted") from None
        except jwt.exceptions.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"token is invalid: {str(exc)[:100]}") from None
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                raise AuthError("invalid_token", f"token claim {name!r} must be a number")
        return principal_from_claims(claims, self._org_claims)


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


def demo_tokens(secret: str) -> list[dict[str, str]]:
    """Tokens for the demo's users of two orgs and the service role (24 h)."""
    day = 86400.0
    return [
        {
            "label": "Dana (demo-org)",
            "token": make_token(secret, sub="demo-user", org_id="demo-org", ttl=day),
        },
        {
            "label": "Omar (other-org)",
            "token": make_token(secret, sub="other-user", org_id="other-org", ttl=day),
        },
        {
            "label": "service role (sees all)",
            "token": make_token(secret, sub="service", role="service_role", ttl=day),
        },
    ]
