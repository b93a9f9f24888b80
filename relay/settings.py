"""Configuration from `RELAY_*` environment variables.

Invariant: every knob the relay reads comes from here, with a safe default;
nothing else in the package reads the environment. A value that cannot be
what it names (an origin that is not an origin, a URL that is not a URL) is
refused here, at startup, with a message naming the variable; list settings
take both forms users write: `a,b` and the JSON list `["a","b"]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import psycopg
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """All settings; each field `x` is read from `RELAY_X`."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL DSN; unset means the embedded demo server"
    )
    data_dir: Path = Field(
        default=Path(".relay-data"), description="where the embedded Postgres keeps its data"
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="port to listen on")
    jwt_secret: str | None = Field(default=None, description="HS256 secret for tokens")
    jwks_url: str | None = Field(default=None, description="JWKS URL for RS256/ES256 tokens")
    jwks_file: str | None = Field(default=None, description="local JWKS file (instead of URL)")
    jwks_min_refresh_seconds: float = Field(
        default=30.0, ge=0, description="at most one JWKS fetch per this many seconds"
    )
    jwt_audience: str | None = Field(default=None, description="required `aud`, if set")
    jwt_issuer: str | None = Field(default=None, description="required `iss`, if set")
    jwt_org_claim: str = Field(
        default="org_id,org_ids",
        description="claim path(s) holding the org id(s), dotted; comma-separated or a JSON list",
    )
    max_streams_per_user: int = Field(
        default=100, ge=1, description="open streams per token `sub` (429 beyond)"
    )
    jwt_leeway: float = Field(default=0.0, ge=0, description="seconds of leeway on exp")
    keepalive_seconds: float = Field(
        default=15.0, gt=0, description="a `: keep-alive` comment at least this often"
    )
    retry_ms: int = Field(default=2000, ge=0, description="EventSource retry: hint")
    max_outbox_events: int = Field(
        default=10_000, ge=1, description="per stream, events queued before TOO_SLOW"
    )
    max_outbox_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="per stream, bytes held (queued, being written, unsent in the connection) "
        "before TOO_SLOW",
    )
    send_buffer_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="SO_SNDBUF of each client connection (Linux doubles it; 0: the kernel's "
        "autotuned default, up to 4 MB): what the kernel buffers for a reader that stopped "
        "reading, and so what the relay copies to it before it counts as slow",
    )
    close_grace_seconds: float = Field(
        default=5.0, gt=0, description="a server-closed stream that has not drained is cut"
    )
    shutdown_timeout_seconds: float = Field(
        default=10.0, ge=1, description="on SIGTERM, wait this long for streams to drain"
    )
    max_subscriptions: int = Field(default=50, ge=1, description="sub= plus topic= per stream")
    max_filter_length: int = Field(default=4096, ge=16, description="characters per filter")
    max_in_values: int = Field(default=100, ge=1, description="values in one `in.(...)`")
    read_batch: int = Field(default=2000, ge=1, description="log rows per read")
    poll_seconds: float = Field(
        default=1.0, gt=0, description="log read interval when no doorbell rings"
    )
    ready_max_lag: float = Field(
        default=5.0, gt=0, description="/readyz is 503 when the log is unread this long"
    )
    token_expiry_margin: float = Field(
        default=1.0, ge=0, description="TOKEN_EXPIRED is sent this many seconds before exp"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed cross-origin, comma-separated or a JSON list",
    )
    log_format: str = Field(
        default="auto",
        pattern="^(auto|json|text)$",
        description="`json` lines, `text`, or `auto` (json when not on a terminal)",
    )
    log_level: str = Field(default="info", description="debug, info, warning, error")
    retention_seconds: float = Field(
        default=86400.0, gt=0, description="keep changes this long (default 24 h)"
    )
    retention_count: int | None = Field(
        default=None, ge=1, description="also keep at most this many newest positions"
    )
    prune_interval_seconds: float = Field(default=60.0, gt=0, description="pruning cadence")
    snapshot_max_rows: int = Field(
        default=100_000,
        ge=1,
        description="rows per snapshot (`snapshot=true`, `/v1/snapshot`); 413 beyond",
    )
    snapshot_max_seconds: float = Field(
        default=30.0,
        gt=0,
        description="seconds to take and send one snapshot; 413 (or SNAPSHOT_FAILED) beyond",
    )
    snapshot_page_rows: int = Field(
        default=500, ge=1, le=100_000, description="rows per `event: snapshot` frame and per read"
    )
    snapshot_concurrency: int = Field(
        default=4, ge=1, description="snapshots reading at once (each holds a connection meanwhile)"
    )
    application_name: str = Field(
        default="relay", description="application_name of the relay's database sessions"
    )

    # --- hostile and broken clients (issue 15): what one client may hold ---
    header_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="a connection that has not sent a complete request head in this long "
        "is closed (idle or trickling sockets)",
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a request body (POST /v1/broadcast) must arrive in this long",
    )
    max_connections: int = Field(
        default=10_000,
        ge=1,
        description="open connections per process; beyond it new ones are refused with 503 "
        "(capped below the process's open-file limit)",
    )
    metrics_address: str | None = Field(
        default=None,
        description="`host:port` serving /metrics for operators; when unset, /metrics on "
        "the main port answers loopback clients only",
    )
    # --- end of issue 15 settings ---

    @model_validator(mode="after")
    def _outbox_holds_a_batch(self) -> Settings:
        if self.max_outbox_events < self.read_batch:
            raise ValueError(
                "RELAY_MAX_OUTBOX_EVENTS must be at least RELAY_READ_BATCH: one read of the "
                "log is queued at once, and a smaller outbox would drop even fast clients"
            )
        return self

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _list(value)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _is_origin(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port] with no path, "
                    "e.g. https://app.example.com"
                )
        return [o.rstrip("/") for o in value]

    @field_validator("jwt_org_claim", mode="before")
    @classmethod
    def _claims(cls, value: Any) -> Any:
        items = _list(value)
        return ",".join(items) if isinstance(items, list) else items

    @field_validator("database_url")
    @classmethod
    def _dsn(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("is empty: unset it for the embedded database, or give a DSN")
        try:
            psycopg.conninfo.conninfo_to_dict(value)
        except psycopg.ProgrammingError:
            raise ValueError(
                "is not a PostgreSQL URL or key=value DSN (e.g. postgresql://user@host:5432/dbname)"
            ) from None
        if "://" in value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("is not a PostgreSQL URL: it must start with postgresql://")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. https://id.example/jwks.json")
        return value


def _list(value: Any) -> Any:
    """`a, b` or `["a", "b"]` as a list of stripped, non-empty strings."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise ValueError(f"{text!r} starts like a JSON list but is not one") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("a JSON list here must hold strings only")
        return [i.strip() for i in items if i.strip()]
    return [v.strip() for v in text.split(",") if v.strip()]


def _is_origin(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or parts.username or parts.password)
    )


SECRET_FIELDS = frozenset({"database_url", "jwt_secret"})


def describe(error: ValidationError) -> str:
    """One line naming each variable that is wrong and why (never echoing a secret)."""
    parts = []
    for e in error.errors():
        loc = e.get("loc") or ()
        field = str(loc[0]) if loc else ""
        name = f"RELAY_{field.upper()}" if field else "configuration"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        value = e.get("input")
        shown = ""
        if field and field not in SECRET_FIELDS and isinstance(value, str | int | float):
            if repr(value) not in msg:
                shown = f" (got {value!r})"
        parts.append(f"{name} {msg}{shown}" if msg.startswith("is ") else f"{name}: {msg}{shown}")
    return "; ".join(parts)
