"""SQL for snapshots, compiled once from the Peewee models."""

from __future__ import annotations

from typing import Any, NamedTuple

import peewee as pw

from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Snapshot
from jarvis_memory_server.store.writes import WriteTxn

P = pw.SQL


class SnapshotRow(NamedTuple):
    """A snapshot as stored (data as JSON text)."""

    id: int
    namespace: str
    kind: str
    taken_at: int
    data: str
    revision: int


COLUMNS = tuple(getattr(Snapshot, name) for name in SnapshotRow._fields)

_INSERT = compile_sql(
    Snapshot.insert(
        {
            Snapshot.namespace: P(":namespace"),
            Snapshot.kind: P(":kind"),
            Snapshot.taken_at: P(":now"),
            Snapshot.data: P(":data"),
            Snapshot.revision: P(":revision"),
        }
    ).returning(*COLUMNS)
)
_OF_KIND = (Snapshot.namespace == P(":namespace")) & (Snapshot.kind == P(":kind"))
_PAGE = compile_sql(
    Snapshot.select(*COLUMNS)
    .where(
        _OF_KIND
        & (Snapshot.taken_at >= P(":since"))
        & (pw.Tuple(Snapshot.taken_at, Snapshot.id) < pw.Tuple(P(":cursor_at"), P(":cursor_id")))
    )
    .order_by(Snapshot.taken_at.desc(), Snapshot.id.desc())
    .limit(P(":limit"))
)
# Retention: the ids beyond the newest :keep of a kind; and every snapshot before a time.
_BEYOND_KEEP = compile_sql(
    Snapshot.select(Snapshot.id)
    .where(_OF_KIND)
    .order_by(Snapshot.taken_at.desc(), Snapshot.id.desc())
    .limit(P("9223372036854775807"))  # no limit, in SQL both backends take (OFFSET needs one)
    .offset(P(":keep"))
)
_OLDER_THAN = compile_sql(
    Snapshot.select(Snapshot.id, Snapshot.namespace)
    .where(Snapshot.taken_at < P(":before"))
    .order_by(Snapshot.taken_at)
    .limit(P(":limit"))
)
_DELETE = compile_sql(Snapshot.delete().where(Snapshot.id == P(":id")))


class SnapshotStore:
    """Queries on the snapshots table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, txn: WriteTxn, values: dict[str, Any]) -> SnapshotRow:
        """Store a snapshot (namespace, kind, data, now)."""
        values["revision"] = txn.next_revision
        row = SnapshotRow._make(txn.cursor.execute(_INSERT, values).fetchone() or ())
        txn.record(row.namespace, "snapshot", str(row.id), "create", values["now"], row)
        return row

    def page(
        self, namespace: str, kind: str, since: int, cursor: tuple[int, int], limit: int
    ) -> list[SnapshotRow]:
        """Return snapshots of a kind, newest first, taken at or after ``since``."""
        params = {"namespace": namespace, "kind": kind, "since": since,
                  "cursor_at": cursor[0], "cursor_id": cursor[1], "limit": limit}
        with storage_errors():
            return [SnapshotRow._make(r) for r in self._db.reader.execute(_PAGE, params)]

    def keep_newest(self, txn: WriteTxn, namespace: str, kind: str, keep: int, now: int) -> int:
        """Delete the snapshots of a kind beyond the newest ``keep``; return how many."""
        ids = [r[0] for r in txn.cursor.execute(
            _BEYOND_KEEP, {"namespace": namespace, "kind": kind, "keep": keep}).fetchall()]
        for snapshot_id in ids:
            txn.cursor.execute(_DELETE, {"id": snapshot_id})
            txn.record(namespace, "snapshot", str(snapshot_id), "delete", now)
        return len(ids)

    def delete_older(self, txn: WriteTxn, before: int, limit: int, now: int) -> int:
        """Delete up to ``limit`` snapshots (any namespace) taken before ``before``."""
        rows = txn.cursor.execute(_OLDER_THAN, {"before": before, "limit": limit}).fetchall()
        for snapshot_id, namespace in rows:
            txn.cursor.execute(_DELETE, {"id": snapshot_id})
            txn.record(str(namespace), "snapshot", str(snapshot_id), "delete", now)
        return len(rows)

    def explain(self) -> dict[str, list[str]]:
        """Return SQLite's plans of the list and retention queries."""
        queries: dict[str, tuple[str, dict[str, Any]]] = {
            "page": (_PAGE, {"namespace": "n", "kind": "k", "since": 0, "cursor_at": 1,
                             "cursor_id": 1, "limit": 51}),
            "beyond_keep": (_BEYOND_KEEP, {"namespace": "n", "kind": "k", "keep": 10}),
            "older_than": (_OLDER_THAN, {"before": 1, "limit": 100}),
        }
        return {name: self._db.query_plan(sql, p) for name, (sql, p) in queries.items()}
