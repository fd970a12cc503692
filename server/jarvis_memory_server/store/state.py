"""SQL for agent state, compiled once from the Peewee models."""

from __future__ import annotations

from typing import Any, NamedTuple

import peewee as pw

from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import StateEntry
from jarvis_memory_server.store.writes import WriteTxn

P = pw.SQL


class StateRow(NamedTuple):
    """A state entry as stored (value as JSON text; expires_at None: never)."""

    namespace: str
    key: str
    value: str
    version: int
    updated_at: int
    expires_at: int | None
    revision: int

    def live(self, now: int) -> bool:
        """Whether the entry has not expired at ``now``."""
        return self.expires_at is None or self.expires_at > now


COLUMNS = tuple(getattr(StateEntry, name) for name in StateRow._fields)
_KEY = (StateEntry.namespace == P(":namespace")) & (StateEntry.key == P(":key"))
_LIVE = StateEntry.expires_at.is_null() | (StateEntry.expires_at > P(":now"))

_UPSERT = compile_sql(
    StateEntry.insert(
        {
            StateEntry.namespace: P(":namespace"),
            StateEntry.key: P(":key"),
            StateEntry.value: P(":value"),
            StateEntry.version: P(":version"),
            StateEntry.updated_at: P(":now"),
            StateEntry.expires_at: P(":expires_at"),
            StateEntry.revision: P(":revision"),
        }
    )
    .on_conflict(
        conflict_target=[StateEntry.namespace, StateEntry.key],
        update={
            StateEntry.value: P("excluded.value"),
            StateEntry.version: P("excluded.version"),
            StateEntry.updated_at: P("excluded.updated_at"),
            StateEntry.expires_at: P("excluded.expires_at"),
            StateEntry.revision: P("excluded.revision"),
        },
    )
    .returning(*COLUMNS)
)
_GET = compile_sql(StateEntry.select(*COLUMNS).where(_KEY))
_DELETE = compile_sql(StateEntry.delete().where(_KEY))
_PAGE = compile_sql(
    StateEntry.select(*COLUMNS)
    .where(
        (StateEntry.namespace == P(":namespace"))
        & (StateEntry.key > P(":after"))
        & (StateEntry.key >= P(":prefix"))
        & (StateEntry.key < P(":prefix_end"))
        & _LIVE
    )
    .order_by(StateEntry.key)
    .limit(P(":limit"))
)
_EXPIRED = compile_sql(
    StateEntry.select(StateEntry.namespace, StateEntry.key)
    .where(StateEntry.expires_at.is_null(False) & (StateEntry.expires_at <= P(":now")))
    .limit(P(":limit"))
)


class StateStore:
    """Queries on the state table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def live_version(self, txn: WriteTxn, namespace: str, key: str, now: int) -> int:
        """Return an entry's version as the current write batch sees it; 0: absent or expired."""
        found = txn.cursor.execute(_GET, {"namespace": namespace, "key": key}).fetchone()
        row = None if found is None else StateRow._make(found)
        return row.version if row is not None and row.live(now) else 0

    def get(self, namespace: str, key: str) -> StateRow | None:
        """Return a committed entry (expired or not), or None."""
        with storage_errors():
            row = self._db.reader.execute(_GET, {"namespace": namespace, "key": key}).fetchone()
        return None if row is None else StateRow._make(row)

    def put(self, txn: WriteTxn, values: dict[str, Any], created: bool) -> StateRow:
        """Write an entry (namespace, key, value, version, expires_at, now)."""
        values["revision"] = txn.next_revision
        row = StateRow._make(txn.cursor.execute(_UPSERT, values).fetchone() or ())
        txn.record(row.namespace, "state", row.key, "create" if created else "update",
                   values["now"], row)
        return row

    def delete(self, txn: WriteTxn, namespace: str, key: str, now: int) -> None:
        """Delete an entry (the caller checked that it exists)."""
        txn.cursor.execute(_DELETE, {"namespace": namespace, "key": key})
        txn.record(namespace, "state", key, "delete", now)

    def page(
        self, namespace: str, prefix: str, after: str, limit: int, now: int
    ) -> list[StateRow]:
        """Return live entries whose key starts with ``prefix``, after ``after``, in key order."""
        params = {"namespace": namespace, "prefix": prefix, "prefix_end": prefix + "\U0010ffff",
                  "after": after, "limit": limit, "now": now}
        with storage_errors():
            return [StateRow._make(r) for r in self._db.reader.execute(_PAGE, params)]

    def any_expired(self, now: int) -> bool:
        """Whether an entry has expired (a committed read: the purge only writes when needed)."""
        with storage_errors():
            row = self._db.reader.execute(_EXPIRED, {"now": now, "limit": 1}).fetchone()
        return row is not None

    def purge_expired(self, txn: WriteTxn, now: int, limit: int) -> int:
        """Delete up to ``limit`` expired entries (any namespace); return how many."""
        expired = txn.cursor.execute(_EXPIRED, {"now": now, "limit": limit}).fetchall()
        for namespace, key in expired:
            self.delete(txn, str(namespace), str(key), now)
        return len(expired)

    def explain(self) -> dict[str, list[str]]:
        """Return SQLite's plans of the list and purge queries."""
        queries: dict[str, tuple[str, dict[str, Any]]] = {
            "page": (_PAGE, {"namespace": "n", "prefix": "a", "prefix_end": "b", "after": "",
                             "limit": 51, "now": 1}),
            "expired": (_EXPIRED, {"now": 1, "limit": 100}),
        }
        return {name: self._db.query_plan(sql, p) for name, (sql, p) in queries.items()}
