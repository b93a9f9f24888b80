"""DSN handling: accept both libpq forms (URL and key=value) everywhere.

Invariant: `as_url` returns an equivalent `postgresql://` URL, which is the
only form asyncpg takes; a URL passes through unchanged.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

import psycopg


def as_url(dsn: str) -> str:
    if dsn.startswith(("postgresql://", "postgres://")):
        return dsn
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    user = quote(str(params.pop("user", "")), safe="")
    password = params.pop("password", None)
    dbname = quote(str(params.pop("dbname", "")), safe="")
    auth = user + (":" + quote(str(password), safe="") if password is not None else "")
    query = urlencode({k: str(v) for k, v in params.items()})
    return f"postgresql://{auth}{'@' if auth else ''}/{dbname}" + (f"?{query}" if query else "")


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server with another database, as a URL."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return as_url(psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()}))
