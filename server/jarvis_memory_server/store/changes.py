"""SQL for the change log: replay for watchers, the oldest revision, compaction."""

from __future__ import annotations

from typing import Any

import peewee as pw

from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Change
from jarvis_memory_server.store.writes import ChangeRow, WriteTxn

P = pw.SQL
_COLUMNS = tuple(getattr(Change, name) for name in ChangeRow._fields)
_OLDEST = compile_sql(Change.select(pw.fn.min(Change.revision)))
_COMPACT = compile_sql(Change.delete().where(Change.revision <= P(":upto")))


class ChangeStore:
    """Reads and compacts the change log (its rows are written by WriteTxn.record)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._page_sql: dict[int, str] = {}

    def page(
        self, namespace: str, kinds: tuple[str, ...], after: int, limit: int
    ) -> list[ChangeRow]:
        """Return committed changes of a namespace after a revision, in revision order."""
        sql = self._page_sql.get(len(kinds))
        if sql is None:
            condition = (Change.revision > P(":after")) & (Change.namespace == P(":namespace"))
            if kinds:
                condition &= Change.kind.in_([P(f":kind{i}") for i in range(len(kinds))])
            sql = self._page_sql[len(kinds)] = compile_sql(
                Change.select(*_COLUMNS).where(condition).order_by(Change.revision)
                .limit(P(":limit")))
        params: dict[str, Any] = {"namespace": namespace, "after": after, "limit": limit}
        params.update({f"kind{i}": kind for i, kind in enumerate(kinds)})
        with storage_errors():
            return [ChangeRow._make(r) for r in self._db.reader.execute(sql, params)]

    def oldest(self) -> int | None:
        """The oldest revision the log still holds (None when it is empty)."""
        with storage_errors():
            row = self._db.reader.execute(_OLDEST).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def compact(self, txn: WriteTxn, upto: int) -> int:
        """Delete the changes up to a revision (never the newest); return how many."""
        txn.cursor.execute(_COMPACT, {"upto": min(upto, self._db.revision - 1)})
        return int(self._db.conn.changes())
