"""SQL for preferences, compiled once from the Peewee models."""

from __future__ import annotations

from typing import Any, NamedTuple

import peewee as pw

from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Preference
from jarvis_memory_server.store.writes import WriteTxn

P = pw.SQL


class PreferenceRow(NamedTuple):
    """A preference as stored (value as JSON text)."""

    namespace: str
    key: str
    value: str
    created_at: int
    updated_at: int
    revision: int


COLUMNS = tuple(getattr(Preference, name) for name in PreferenceRow._fields)

_UPSERT = compile_sql(
    Preference.insert(
        {
            Preference.namespace: P(":namespace"),
            Preference.key: P(":key"),
            Preference.value: P(":value"),
            Preference.created_at: P(":now"),
            Preference.updated_at: P(":now"),
            Preference.revision: P(":revision"),
        }
    )
    .on_conflict(
        conflict_target=[Preference.namespace, Preference.key],
        update={
            Preference.value: P("excluded.value"),
            Preference.updated_at: P(":now"),
            Preference.revision: P(":revision"),
        },
    )
    .returning(*COLUMNS)
)
_KEY = (Preference.namespace == P(":namespace")) & (Preference.key == P(":key"))
_GET = compile_sql(Preference.select(*COLUMNS).where(_KEY))
_DELETE = compile_sql(Preference.delete().where(_KEY))
# Keys in order after the cursor, from :prefix up to (not including) :prefix_end.
_PAGE = compile_sql(
    Preference.select(*COLUMNS)
    .where(
        (Preference.namespace == P(":namespace"))
        & (Preference.key > P(":after"))
        & (Preference.key >= P(":prefix"))
        & (Preference.key < P(":prefix_end"))
    )
    .order_by(Preference.key)
    .limit(P(":limit"))
)


class PreferenceStore:
    """Queries on the preferences table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def upsert(self, txn: WriteTxn, values: dict[str, Any]) -> tuple[PreferenceRow, bool]:
        """Set a preference (namespace, key, value, now); return (row, created)."""
        values["revision"] = txn.next_revision
        row = PreferenceRow._make(txn.cursor.execute(_UPSERT, values).fetchone() or ())
        created = row.created_at == row.updated_at == values["now"]
        txn.record(row.namespace, "preference", row.key, "create" if created else "update",
                   values["now"], row)
        return row, created

    def get(self, namespace: str, key: str) -> PreferenceRow | None:
        """Return a committed preference, or None."""
        with storage_errors():
            row = self._db.reader.execute(_GET, {"namespace": namespace, "key": key}).fetchone()
        return None if row is None else PreferenceRow._make(row)

    def delete(self, txn: WriteTxn, namespace: str, key: str, now: int) -> bool:
        """Delete a preference; False when there was none."""
        txn.cursor.execute(_DELETE, {"namespace": namespace, "key": key})
        if self._db.conn.changes() == 0:
            return False
        txn.record(namespace, "preference", key, "delete", now)
        return True

    def page(self, namespace: str, prefix: str, after: str, limit: int) -> list[PreferenceRow]:
        """Return preferences whose key starts with ``prefix`` and sorts after ``after``."""
        # Every key starting with the prefix sorts below prefix + U+10FFFF.
        params = {"namespace": namespace, "prefix": prefix, "prefix_end": prefix + "\U0010ffff",
                  "after": after, "limit": limit}
        with storage_errors():
            return [PreferenceRow._make(r) for r in self._db.reader.execute(_PAGE, params)]

    def explain(self) -> list[str]:
        """Return SQLite's plan of the list query."""
        params = {"namespace": "n", "prefix": "a", "prefix_end": "b", "after": "", "limit": 51}
        return self._db.query_plan(_PAGE, params)
