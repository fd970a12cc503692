"""SQL for API tokens (only hashes of their secrets are stored)."""

from __future__ import annotations

from typing import NamedTuple

import apsw
import peewee as pw

from jarvis_memory_server.errors import AlreadyExists
from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import ApiToken

# The roles the schema allows (the services check requests against them).
ROLES = ApiToken.ROLES

P = pw.SQL


class TokenRow(NamedTuple):
    """An API token as stored."""

    token_id: str
    secret_sha256: bytes
    role: str
    namespaces: str  # JSON list
    label: str
    created_at: int
    revoked_at: int | None


_COLUMNS = tuple(getattr(ApiToken, name) for name in TokenRow._fields)

_INSERT = compile_sql(
    ApiToken.insert(
        {
            ApiToken.token_id: P(":token_id"),
            ApiToken.secret_sha256: P(":secret_sha256"),
            ApiToken.role: P(":role"),
            ApiToken.namespaces: P(":namespaces"),
            ApiToken.label: P(":label"),
            ApiToken.created_at: P(":now"),
            ApiToken.revoked_at: P("NULL"),
        }
    )
)
_ALL = compile_sql(ApiToken.select(*_COLUMNS).order_by(ApiToken.id))
_REVOKE = compile_sql(
    ApiToken.update({ApiToken.revoked_at: P(":now")}).where(
        (ApiToken.token_id == P(":token_id")) & ApiToken.revoked_at.is_null()
    )
)


class TokenStore:
    """API tokens. Their writes are rare and made by the command line, outside the loop."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, row: TokenRow) -> None:
        """Store a new token. Raises AlreadyExists if its id is taken (a 1 in 2^48 event)."""
        try:
            with self._db.write() as txn:
                txn.cursor.execute(_INSERT, {**row._asdict(), "now": row.created_at})
        except apsw.ConstraintError as exc:
            raise AlreadyExists(f"token id {row.token_id} exists") from exc

    def all(self) -> list[TokenRow]:
        """Every token, revoked ones included, oldest first (committed data)."""
        with storage_errors():
            return [TokenRow._make(r) for r in self._db.reader.execute(_ALL)]

    def revoke(self, token_id: str, now: int) -> bool:
        """Mark a token revoked; False when there is no active token with this id."""
        with self._db.write() as txn:
            txn.cursor.execute(_REVOKE, {"token_id": token_id, "now": now})
            return self._db.conn.changes() > 0
