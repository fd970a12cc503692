"""SQL for the memories table, compiled once from the Peewee models and run on APSW."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import apsw
import peewee as pw

from jarvis_memory_server.errors import AlreadyExists
from jarvis_memory_server.store.backend import Connection, Cursor, Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Change, Memory, MemoryHistory
from jarvis_memory_server.store.writes import WriteTxn, resource_json

# The values the schema allows (the services check requests against them).
CATEGORIES, SOURCES = Memory.CATEGORIES, Memory.SOURCES

P = pw.SQL  # a named parameter, bound from the dict passed at execution time

MAX_DATED_CACHE = 100_000  # namespaces whose has_dated() answer is remembered


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
    # The lifecycle (None: not superseded, valid always, never expires); see models.Memory.
    superseded_by: int | None = None
    superseded_at: int | None = None
    supersedes: str | None = None  # JSON array of ids
    valid_from: int | None = None
    valid_to: int | None = None
    expires_at: int | None = None
    created_by: str | None = None


class HistoryRow(NamedTuple):
    """A replaced version of a memory and the change that replaced it (models.MemoryHistory)."""

    id: int
    memory_id: int
    version: MemoryRow
    operation: str
    changed_fields: list[str]
    credential: str | None
    revision: int
    changed_at: int


COLUMNS = tuple(getattr(Memory, name) for name in MemoryRow._fields)
# The columns before the lifecycle's: a list of a namespace without a dated memory reads only
# these (the rest are NULL there); 7 more columns cost a list of 50 rows about 13 µs.
PLAIN_COLUMNS = COLUMNS[:MemoryRow._fields.index("superseded_by")]
_PLAIN_TAIL = (None,) * (len(COLUMNS) - len(PLAIN_COLUMNS))

# Restating a fact bumps its count and access time. Only a plain restatement of a current
# memory is done here (the WHERE below); any other (a stale, superseded or expired memory, or
# new validity, expiry or supersession given) updates nothing and returns no row, and the
# service restates it with restate(), keeping the previous version.
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
            Memory.supersedes: P(":supersedes"),
            Memory.valid_from: P(":valid_from"),
            Memory.valid_to: P(":valid_to"),
            Memory.expires_at: P(":expires_at"),
            Memory.created_by: P(":created_by"),
        }
    )
    .on_conflict(
        conflict_target=[Memory.namespace, Memory.content_hash],
        update={
            Memory.restated_count: Memory.restated_count + P("1"),
            Memory.last_accessed_at: P(":now"),
            Memory.updated_at: P(":now"),
            Memory.revision: P(":revision"),
        },
        where=(P(":plain = 1") & (Memory.stale == P("0")) & Memory.superseded_by.is_null()
               & (Memory.expires_at.is_null() | (Memory.expires_at > P(":now")))),
    )
    .returning(*COLUMNS)
)

_BY_HASH = compile_sql(Memory.select(*COLUMNS).where(
    (Memory.namespace == P(":namespace")) & (Memory.content_hash == P(":content_hash"))))

# The one change restate() makes: the lifecycle values are the service's.
_RESTATE = compile_sql(Memory.update({
    Memory.restated_count: Memory.restated_count + P("1"),
    Memory.last_accessed_at: P(":now"),
    Memory.updated_at: P(":now"),
    Memory.stale: P("0"),
    Memory.superseded_by: P("NULL"),
    Memory.superseded_at: P("NULL"),
    Memory.supersedes: P(":supersedes"),
    Memory.valid_from: P(":valid_from"),
    Memory.valid_to: P(":valid_to"),
    Memory.expires_at: P(":expires_at"),
    Memory.revision: P(":revision"),
}).where(Memory.id == P(":id")).returning(*COLUMNS))

# Supersession: the end of validity is the time of supersession, or earlier if it was set so.
_SUPERSEDE = compile_sql(Memory.update({
    Memory.superseded_by: P(":by"),
    Memory.superseded_at: P(":now"),
    Memory.valid_to: pw.Case(None, [(Memory.valid_to < P(":now"), Memory.valid_to)], P(":now")),
    Memory.updated_at: P(":now"),
    Memory.revision: P(":revision"),
}).where(Memory.id == P(":id")).returning(*COLUMNS))

_HISTORY_COLUMNS = tuple(getattr(MemoryHistory, name) for name in (
    "id", "memory_id", "version", "operation", "changed_fields", "credential", "revision",
    "changed_at"))
_ADD_HISTORY = compile_sql(MemoryHistory.insert({
    MemoryHistory.namespace: P(":namespace"),
    MemoryHistory.memory_id: P(":memory_id"),
    MemoryHistory.version: P(":version"),
    MemoryHistory.operation: P(":operation"),
    MemoryHistory.changed_fields: P(":changed_fields"),
    MemoryHistory.credential: P(":credential"),
    MemoryHistory.revision: P(":revision"),
    MemoryHistory.changed_at: P(":changed_at"),
}))
# A page of a memory's history after a row id, and the row before it (whose change made the
# first version of the page).
_HISTORY_PAGE = compile_sql(MemoryHistory.select(*_HISTORY_COLUMNS).where(
    (MemoryHistory.memory_id == P(":memory_id")) & (MemoryHistory.namespace == P(":namespace"))
    & (MemoryHistory.id > P(":after"))).order_by(MemoryHistory.id).limit(P(":limit")))
_HISTORY_BEFORE = compile_sql(MemoryHistory.select(*_HISTORY_COLUMNS).where(
    (MemoryHistory.memory_id == P(":memory_id")) & (MemoryHistory.namespace == P(":namespace"))
    & (MemoryHistory.id <= P(":after"))).order_by(MemoryHistory.id.desc()).limit(P("1")))
_DELETE_HISTORY = compile_sql(MemoryHistory.delete().where(
    (MemoryHistory.memory_id == P(":id")) & (MemoryHistory.namespace == P(":namespace"))))

# Whether a namespace has a memory that is not simply current (the partial index
# memories_dated_namespace answers it; the condition must be the index's own).
_HAS_DATED = compile_sql(Memory.select(P("1")).where(
    (Memory.namespace == P(":namespace")) & (
        Memory.superseded_by.is_null(False) | Memory.valid_from.is_null(False)
        | Memory.valid_to.is_null(False) | Memory.expires_at.is_null(False))).limit(P("1")))

_EXPIRED = compile_sql(Memory.select(*COLUMNS).where(
    Memory.expires_at <= P(":now")).order_by(Memory.expires_at).limit(P(":limit")))

# Forgetting: a namespace's changes to memories after a revision (a scan of the log: it has
# no index by key), and the redaction of one change's resource.
_MEMORY_CHANGES = compile_sql(Change.select(Change.revision, Change.key).where(
    (Change.namespace == P(":namespace")) & (Change.kind == P("'memory'"))
    & (Change.revision > P(":after"))))
_REDACT = compile_sql(Change.update({Change.resource: P("NULL")}).where(
    Change.revision == P(":revision")))

_GET = compile_sql(
    Memory.select(*COLUMNS).where((Memory.namespace == P(":namespace")) & (Memory.id == P(":id")))
)
# A memory as reads see it: absent once expired.
_GET_LIVE = compile_sql(Memory.select(*COLUMNS).where(
    (Memory.namespace == P(":namespace")) & (Memory.id == P(":id"))
    & (Memory.expires_at.is_null() | (Memory.expires_at > P(":now")))))

_DELETE = compile_sql(
    Memory.delete().where((Memory.namespace == P(":namespace")) & (Memory.id == P(":id")))
)

# The lifecycle conditions of reads, by filter name; the value of each is the time it is
# judged at (µs). Shared with search (store/search.py): the column names are the memories
# table's alone in both.
LIFECYCLE_FILTERS = {
    "unexpired": "(expires_at IS NULL OR expires_at > :unexpired)",
    "current": "(superseded_by IS NULL AND (valid_to IS NULL OR valid_to > :current) "
               "AND (valid_from IS NULL OR valid_from <= :current))",
    "as_of": "(created_at <= :as_of AND (valid_from IS NULL OR valid_from <= :as_of) "
             "AND (valid_to IS NULL OR valid_to > :as_of))",
}

# ListMemories filters: name -> condition; the SQL for each combination is compiled on first use.
_LIST_FILTERS: dict[str, pw.ColumnBase] = {
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
    # The lifecycle, each with the time it is judged at (service/memories.py, read_filters).
    **{name: pw.SQL(condition) for name, condition in LIFECYCLE_FILTERS.items()},
}

# UpdateMemory: the columns a caller may change.
UPDATABLE = ("content", "category", "source", "subject", "attributes", "stale", "valid_from",
             "valid_to", "expires_at")


def _params(namespace: str, filters: dict[str, Any], **more: Any) -> dict[str, Any]:
    """The parameters of a list query (``ids`` spread over :id0, :id1, ...)."""
    params = {**filters, "namespace": namespace, **more}
    if "ids" in params:
        params.update({f"id{i}": value for i, value in enumerate(params.pop("ids"))})
    return params


def _history_row(found: Any) -> HistoryRow:
    row_id, memory_id, version, operation, changed_fields, credential, revision, at = found
    values = json.loads(version)
    values[3] = bytes.fromhex(values[3])  # the content hash went into JSON as hex
    return HistoryRow(int(row_id), int(memory_id), MemoryRow._make(values), str(operation),
                      list(json.loads(changed_fields)), credential, int(revision), int(at))


class MemoryStore:
    """Queries on the memories table. Write methods run inside a Database.write() transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._list_sql: dict[tuple[str, ...], str] = {}
        self._dated: dict[str, tuple[int, bool]] = {}  # has_dated's answers: (revision, answer)
        self._update_sql: dict[tuple[str, ...], str] = {}

    def upsert_plain(self, txn: WriteTxn, values: dict[str, Any]) -> tuple[MemoryRow, bool] | None:
        """Insert a memory, or restate the current one with the same hash plainly.

        Returns (row, deduplicated), or None when a memory with the hash exists but is not
        plainly restated (see _UPSERT): then nothing changed. ``values`` holds namespace,
        content, content_hash, category, source, subject, attributes, the lifecycle columns,
        created_by, plain (1 or 0) and now; the change is recorded in ``txn``.
        """
        values["revision"] = txn.next_revision
        found = txn.cursor.execute(_UPSERT, values).fetchone()
        if found is None:
            return None
        row = MemoryRow._make(found)
        deduplicated = row.restated_count > 0  # a fresh insert always has count 0
        txn.record(row.namespace, "memory", str(row.id),
                   "update" if deduplicated else "create", values["now"], row)
        return row, deduplicated

    def by_hash(self, txn: WriteTxn, namespace: str, content_hash: bytes) -> MemoryRow | None:
        """The memory with this content hash (expired or not), in the write transaction."""
        found = txn.cursor.execute(
            _BY_HASH, {"namespace": namespace, "content_hash": content_hash}).fetchone()
        return None if found is None else MemoryRow._make(found)

    def get_for_write(self, txn: WriteTxn, namespace: str, memory_id: int) -> MemoryRow | None:
        """One memory (expired or not), in the write transaction."""
        found = txn.cursor.execute(_GET, {"namespace": namespace, "id": memory_id}).fetchone()
        return None if found is None else MemoryRow._make(found)

    def restate(self, txn: WriteTxn, memory_id: int, values: dict[str, Any]) -> MemoryRow:
        """Restate a memory, setting its lifecycle columns to ``values``' (with now)."""
        params = {key: values[key] for key in
                  ("supersedes", "valid_from", "valid_to", "expires_at", "now")}
        params.update(id=memory_id, revision=txn.next_revision)
        row = MemoryRow._make(txn.cursor.execute(_RESTATE, params).fetchone() or ())
        txn.record(row.namespace, "memory", str(row.id), "update", values["now"], row)
        return row

    def supersede(self, txn: WriteTxn, memory_id: int, by: int, now: int) -> MemoryRow:
        """Mark a memory superseded by another, now; return it."""
        params = {"id": memory_id, "by": by, "now": now, "revision": txn.next_revision}
        row = MemoryRow._make(txn.cursor.execute(_SUPERSEDE, params).fetchone() or ())
        txn.record(row.namespace, "memory", str(row.id), "update", now, row)
        return row

    @staticmethod
    def add_history(
        txn: WriteTxn, replaced: MemoryRow, operation: str, changed_fields: Sequence[str],
        credential: str | None, revision: int, now: int,
    ) -> None:
        """Keep a replaced version of a memory, with the change that replaced it."""
        txn.cursor.execute(_ADD_HISTORY, {
            "namespace": replaced.namespace, "memory_id": replaced.id,
            "version": resource_json(replaced), "operation": operation,
            "changed_fields": json.dumps(list(changed_fields)), "credential": credential,
            "revision": revision, "changed_at": now,
        })

    def history(
        self, namespace: str, memory_id: int, after: int, limit: int
    ) -> tuple[HistoryRow | None, list[HistoryRow]]:
        """The history row at or before ``after`` (None: none), and up to ``limit`` after it."""
        params = {"namespace": namespace, "memory_id": memory_id, "after": after,
                  "limit": limit}
        with storage_errors():
            before = self._db.reader.execute(_HISTORY_BEFORE, params).fetchone()
            rows = self._db.reader.execute(_HISTORY_PAGE, params).fetchall()
        return (None if before is None else _history_row(before),
                [_history_row(r) for r in rows])

    def has_dated(self, namespace: str) -> bool:
        """Whether the namespace holds a memory that is not simply current (see _HAS_DATED).

        Remembered per namespace: "yes" for good (at worst the lifecycle's conditions are
        applied where nothing needs them), "no" until the next committed revision. (On
        PostgreSQL, until this daemon hears of the next commit: another daemon's first dated
        memory in a namespace shows here a few ms later, as its change does in the feed.)
        """
        revision = self._db.revision
        known = self._dated.get(namespace)
        if known is not None and (known[1] or known[0] == revision):
            return known[1]
        with storage_errors():
            dated = self._db.reader.execute(
                _HAS_DATED, {"namespace": namespace}).fetchone() is not None
        if len(self._dated) >= MAX_DATED_CACHE:
            self._dated.clear()
        self._dated[namespace] = (revision, dated)
        return dated

    def any_expired(self, now: int) -> bool:
        """Whether some memory of any namespace expired by ``now`` (on the reader)."""
        with storage_errors():
            return self._db.reader.execute(
                _EXPIRED, {"now": now, "limit": 1}).fetchone() is not None

    def expired(self, txn: WriteTxn, now: int, limit: int) -> list[MemoryRow]:
        """Up to ``limit`` memories of any namespace that expired by ``now``, soonest first."""
        return [MemoryRow._make(r) for r in
                txn.cursor.execute(_EXPIRED, {"now": now, "limit": limit}).fetchall()]

    @staticmethod
    def changes_of(
        conn: Connection | Cursor, namespace: str, keys: set[str], after: int
    ) -> list[tuple[int, str]]:
        """(revision, key) of the logged changes to these memories after a revision.

        A scan of the namespace's memory changes (the log has no index by key): for
        forgetting, on a reader, or on the writer for the log's newest part only.
        """
        with storage_errors():
            rows = conn.execute(_MEMORY_CHANGES, {"namespace": namespace, "after": after})
            return [(int(revision), str(key)) for revision, key in rows if key in keys]

    @staticmethod
    def redact(txn: WriteTxn, revisions: Sequence[int]) -> None:
        """Drop the resource of these logged changes (what a forgotten memory said)."""
        txn.cursor.executemany(_REDACT, [{"revision": r} for r in revisions])

    def get(self, namespace: str, memory_id: int, now: int) -> MemoryRow | None:
        """Return one memory, or None when there is none with this id in the namespace.

        An expired memory (expires_at <= now) is none.
        """
        with storage_errors():
            params = {"namespace": namespace, "id": memory_id, "now": now}
            row = self._db.reader.execute(_GET_LIVE, params).fetchone()
        return None if row is None else MemoryRow._make(row)

    def page(self, namespace: str, filters: dict[str, Any], limit: int) -> list[MemoryRow]:
        """Return up to ``limit`` memories newest first, matching every filter given.

        ``filters`` keys are those of _LIST_FILTERS, except that ``stale`` takes a bool and the
        cursor is given as ``cursor_at`` and ``cursor_id`` (the created_at and id of the
        previous page's last row).
        """
        shape = self._shape(filters)
        dated = "unexpired" in filters  # the namespace has a dated memory (read_filters)
        sql = self._list_sql.get(shape)
        if sql is None:
            query = (
                Memory.select(*(COLUMNS if dated else PLAIN_COLUMNS))
                .where(self._condition(shape))
                .order_by(Memory.created_at.desc(), Memory.id.desc())
            )
            sql = self._list_sql[shape] = compile_sql(query.limit(P(":limit")))
        with storage_errors():
            rows = self._db.reader.execute(sql, _params(namespace, filters, limit=limit))
            if dated:
                return [MemoryRow._make(r) for r in rows]
            return [MemoryRow._make(r + _PLAIN_TAIL) for r in rows]

    def ids(self, namespace: str, filters: dict[str, Any]) -> list[int]:
        """The ids of every memory matching page()'s filters, ascending.

        On the calling thread's reader: for forgetting, off the event loop.
        """
        shape = ("ids", *self._shape(filters))
        sql = self._list_sql.get(shape)
        if sql is None:
            query = Memory.select(Memory.id).where(self._condition(shape[1:]))
            sql = self._list_sql[shape] = compile_sql(query.order_by(Memory.id))
        with storage_errors():
            rows = self._db.thread_reader().execute(sql, _params(namespace, filters))
            return [int(row_id) for (row_id,) in rows]

    @staticmethod
    def _condition(shape: tuple[str, ...]) -> pw.ColumnBase:
        condition = Memory.namespace == P(":namespace")
        for name in shape:
            if name.startswith("ids="):  # ids: IN (:id0, :id1, ...)
                count = int(name.removeprefix("ids="))
                condition &= Memory.id.in_([P(f":id{i}") for i in range(count)])
                continue
            condition &= _LIST_FILTERS[name]
        return condition

    @staticmethod
    def _shape(filters: dict[str, Any]) -> tuple[str, ...]:
        names = set()
        for name, value in filters.items():
            if name.startswith("cursor_"):
                name = "cursor"
            elif name == "stale":
                name = f"stale={int(value)}"
            elif name == "ids":
                name = f"ids={len(value)}"
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

    def delete(
        self, txn: WriteTxn, namespace: str, memory_id: int, now: int, *,
        keep_history: bool = False,
    ) -> int | None:
        """Delete one memory (and its history, unless kept).

        Returns the revision of the change, or None when there was none.
        """
        params = {"namespace": namespace, "id": memory_id}
        txn.cursor.execute(_DELETE, params)
        if self._db.conn.changes() == 0:
            return None
        if not keep_history:
            txn.cursor.execute(_DELETE_HISTORY, params)
        return txn.record(namespace, "memory", str(memory_id), "delete", now)

    @staticmethod
    def delete_history(txn: WriteTxn, namespace: str, memory_id: int) -> None:
        """Delete the kept versions of a memory (of one already gone, too)."""
        txn.cursor.execute(_DELETE_HISTORY, {"namespace": namespace, "id": memory_id})

    def explain_list(self, namespace: str, filters: dict[str, Any], limit: int) -> list[str]:
        """Return SQLite's query plan for a list query (used by the tests on index use)."""
        self.page(namespace, filters, limit)  # compiles the SQL for this shape
        sql = self._list_sql[self._shape(filters)]
        return self._db.query_plan(sql, {**filters, "namespace": namespace, "limit": limit})
