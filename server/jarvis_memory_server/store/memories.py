"""SQL for the memories table, compiled once from the Peewee models and run on APSW."""

from __future__ import annotations

from typing import Any, NamedTuple

import apsw
import peewee as pw

from jarvis_memory_server.errors import AlreadyExists
from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Memory
from jarvis_memory_server.store.writes import WriteTxn

# The values the schema allows (the services check requests against them).
CATEGORIES, SOURCES = Memory.CATEGORIES, Memory.SOURCES

P = pw.SQL  # a named parameter, bound from the dict passed at execution time


class MemoryRow(NamedTuple):
    """A memory as stored (times in µs since the epoch, attributes as JSON text)."""

    id: int
    namespace: str
    content: str
    content_hash: bytes
    category: str
    source: str
    subject: str
    attributes: str | None
    stale: int
    created_at: int
    updated_at: int
    last_accessed_at: int | None
    restated_count: int
    revision: int


COLUMNS = tuple(getattr(Memory, name) for name in MemoryRow._fields)

# Restating a fact bumps its count and access time and makes a stale memory current again.
_UPSERT = compile_sql(
    Memory.insert(
        {
            Memory.namespace: P(":namespace"),
            Memory.content: P(":content"),
            Memory.content_hash: P(":content_hash"),
            Memory.category: P(":category"),
            Memory.source: P(":source"),
            Memory.subject: P(":subject"),
            Memory.attributes: P(":attributes"),
            Memory.stale: P("0"),
            Memory.created_at: P(":now"),
            Memory.updated_at: P(":now"),
            Memory.last_accessed_at: P("NULL"),
            Memory.restated_count: P("0"),
            Memory.revision: P(":revision"),
        }
    )
    .on_conflict(
        conflict_target=[Memory.namespace, Memory.content_hash],
        update={
            Memory.restated_count: Memory.restated_count + P("1"),
            Memory.last_accessed_at: P(":now"),
            Memory.updated_at: P(":now"),
            Memory.stale: P("0"),
            Memory.revision: P(":revision"),
        },
    )
    .returning(*COLUMNS)
)

_GET = compile_sql(
    Memory.select(*COLUMNS).where((Memory.namespace == P(":namespace")) & (Memory.id == P(":id")))
)

_DELETE = compile_sql(
    Memory.delete().where((Memory.namespace == P(":namespace")) & (Memory.id == P(":id")))
)

# ListMemories filters: name -> condition; the SQL for each combination is compiled on first use.
_LIST_FILTERS: dict[str, pw.Expression] = {
    "category": Memory.category == P(":category"),
    "source": Memory.source == P(":source"),
    "subject": Memory.subject == P(":subject"),
    # Literal values, so that SQLite can match stale=1 to the partial index of stale memories.
    "stale=1": Memory.stale == P("1"),
    "stale=0": Memory.stale == P("0"),
    "created_after": Memory.created_at >= P(":created_after"),
    "created_before": Memory.created_at < P(":created_before"),
    # The keyset cursor: strictly after the last memory of the previous page in list order.
    "cursor": pw.Tuple(Memory.created_at, Memory.id) < pw.Tuple(P(":cursor_at"), P(":cursor_id")),
}

# UpdateMemory: the columns a caller may change.
UPDATABLE = ("content", "category", "source", "subject", "attributes", "stale")


class MemoryStore:
    """Queries on the memories table. Write methods run inside a Database.write() transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._list_sql: dict[tuple[str, ...], str] = {}
        self._update_sql: dict[tuple[str, ...], str] = {}

    def upsert(self, txn: WriteTxn, values: dict[str, Any]) -> tuple[MemoryRow, bool]:
        """Insert a memory or restate the one with the same hash; return (row, deduplicated).

        ``values`` holds namespace, content, content_hash, category, source, subject,
        attributes and now; the change is recorded in ``txn``.
        """
        values["revision"] = txn.next_revision
        row = MemoryRow._make(txn.cursor.execute(_UPSERT, values).fetchone() or ())
        deduplicated = row.restated_count > 0  # a fresh insert always has count 0
        txn.record(row.namespace, "memory", str(row.id),
                   "update" if deduplicated else "create", values["now"], row)
        return row, deduplicated

    def get(self, namespace: str, memory_id: int) -> MemoryRow | None:
        """Return one memory, or None when there is none with this id in the namespace."""
        with storage_errors():
            params = {"namespace": namespace, "id": memory_id}
            row = self._db.reader.execute(_GET, params).fetchone()
        return None if row is None else MemoryRow._make(row)

    def page(self, namespace: str, filters: dict[str, Any], limit: int) -> list[MemoryRow]:
        """Return up to ``limit`` memories newest first, matching every filter given.

        ``filters`` keys are those of _LIST_FILTERS, except that ``stale`` takes a bool and the
        cursor is given as ``cursor_at`` and ``cursor_id`` (the created_at and id of the
        previous page's last row).
        """
        shape = self._shape(filters)
        sql = self._list_sql.get(shape)
        if sql is None:
            condition = Memory.namespace == P(":namespace")
            for name in shape:
                condition &= _LIST_FILTERS[name]
            query = (
                Memory.select(*COLUMNS)
                .where(condition)
                .order_by(Memory.created_at.desc(), Memory.id.desc())
            )
            sql = self._list_sql[shape] = compile_sql(query.limit(P(":limit")))
        with storage_errors():
            rows = self._db.reader.execute(sql, {**filters, "namespace": namespace, "limit": limit})
            return [MemoryRow._make(r) for r in rows]

    @staticmethod
    def _shape(filters: dict[str, Any]) -> tuple[str, ...]:
        names = set()
        for name, value in filters.items():
            if name.startswith("cursor_"):
                name = "cursor"
            elif name == "stale":
                name = f"stale={int(value)}"
            names.add(name)
        return tuple(sorted(names))

    def update(
        self, txn: WriteTxn, namespace: str, memory_id: int, changes: dict[str, Any], now: int
    ) -> MemoryRow | None:
        """Change the given columns of one memory; return it, or None when it does not exist.

        Raises AlreadyExists when new content collides with another memory's content hash.
        """
        shape = tuple(sorted(changes))
        sql = self._update_sql.get(shape)
        if sql is None:
            assignments = {getattr(Memory, name): P(f":{name}") for name in shape}
            assignments[Memory.updated_at] = P(":now")
            assignments[Memory.revision] = P(":revision")
            query = (
                Memory.update(assignments)
                .where((Memory.namespace == P(":namespace")) & (Memory.id == P(":id")))
                .returning(*COLUMNS)
            )
            sql = self._update_sql[shape] = compile_sql(query)
        params = {**changes, "namespace": namespace, "id": memory_id, "now": now,
                  "revision": txn.next_revision}
        try:
            found = txn.cursor.execute(sql, params).fetchone()
        except apsw.ConstraintError as exc:
            raise AlreadyExists(
                "content: another memory in this namespace already has the same content",
                reason="MEMORY_CONTENT_EXISTS",
            ) from exc
        if found is None:
            return None
        updated = MemoryRow._make(found)
        txn.record(namespace, "memory", str(memory_id), "update", now, updated)
        return updated

    def delete(self, txn: WriteTxn, namespace: str, memory_id: int, now: int) -> bool:
        """Delete one memory; return False when there was none."""
        txn.cursor.execute(_DELETE, {"namespace": namespace, "id": memory_id})
        if self._db.conn.changes() == 0:
            return False
        txn.record(namespace, "memory", str(memory_id), "delete", now)
        return True

    def explain_list(self, namespace: str, filters: dict[str, Any], limit: int) -> list[str]:
        """Return SQLite's query plan for a list query (used by the tests on index use)."""
        self.page(namespace, filters, limit)  # compiles the SQL for this shape
        sql = self._list_sql[self._shape(filters)]
        return self._db.query_plan(sql, {**filters, "namespace": namespace, "limit": limit})
