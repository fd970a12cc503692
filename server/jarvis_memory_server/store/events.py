"""SQL for events, compiled once from the Peewee models."""

from __future__ import annotations

from typing import Any, NamedTuple

import peewee as pw

from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Event
from jarvis_memory_server.store.writes import WriteTxn

# The values the schema allows (the services check requests against them).
TYPES, SOURCES = Event.TYPES, Event.SOURCES

P = pw.SQL


class EventRow(NamedTuple):
    """An event as stored (severity 1-4, times in µs, details as JSON text)."""

    id: int
    namespace: str
    occurred_at: int
    type: str
    severity: int
    source: str
    node: str
    summary: str
    details: str | None
    resolved: int
    resolved_at: int | None
    resolved_by: str
    revision: int


COLUMNS = tuple(getattr(Event, name) for name in EventRow._fields)

_INSERT = compile_sql(
    Event.insert(
        {
            Event.namespace: P(":namespace"),
            Event.occurred_at: P(":occurred_at"),
            Event.type: P(":type"),
            Event.severity: P(":severity"),
            Event.source: P(":source"),
            Event.node: P(":node"),
            Event.summary: P(":summary"),
            Event.details: P(":details"),
            Event.resolved: P("0"),
            Event.resolved_at: P("NULL"),
            Event.resolved_by: P("''"),
            Event.revision: P(":revision"),
        }
    ).returning(*COLUMNS)
)
_GET = compile_sql(
    Event.select(*COLUMNS).where((Event.namespace == P(":namespace")) & (Event.id == P(":id")))
)
_RESOLVE = compile_sql(
    Event.update(
        {
            Event.resolved: P("1"),
            Event.resolved_at: P(":now"),
            Event.resolved_by: P(":resolved_by"),
            Event.revision: P(":revision"),
        }
    )
    .where((Event.id == P(":id")) & (Event.resolved == P("0")))
    .returning(*COLUMNS)
)

# ListEvents filters: name -> condition. "types" expands to IN (:type0, :type1, ...).
_FILTERS: dict[str, pw.Expression] = {
    "min_severity": Event.severity >= P(":min_severity"),
    "node": Event.node == P(":node"),
    "source": Event.source == P(":source"),
    "since": Event.occurred_at >= P(":since"),
    "until": Event.occurred_at < P(":until"),
    # Literal values, so that SQLite can use the partial index of unresolved events.
    "resolved=0": Event.resolved == P("0"),
    "resolved=1": Event.resolved == P("1"),
    "cursor": pw.Tuple(Event.occurred_at, Event.id) < pw.Tuple(P(":cursor_at"), P(":cursor_id")),
}


class EventStore:
    """Queries on the events table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._list_sql: dict[tuple[str, ...], str] = {}

    def insert(self, txn: WriteTxn, values: dict[str, Any]) -> EventRow:
        """Record an event; ``values`` holds its columns and ``now``."""
        values["revision"] = txn.next_revision
        row = EventRow._make(txn.cursor.execute(_INSERT, values).fetchone() or ())
        txn.record(row.namespace, "event", str(row.id), "create", values["now"], row)
        return row

    def get_for_write(self, txn: WriteTxn, namespace: str, event_id: int) -> EventRow | None:
        """Return an event as the current write batch sees it."""
        row = txn.cursor.execute(_GET, {"namespace": namespace, "id": event_id}).fetchone()
        return None if row is None else EventRow._make(row)

    def get(self, namespace: str, event_id: int) -> EventRow | None:
        """Return a committed event, or None."""
        with storage_errors():
            row = self._db.reader.execute(_GET, {"namespace": namespace, "id": event_id}).fetchone()
        return None if row is None else EventRow._make(row)

    def resolve(
        self, txn: WriteTxn, event: EventRow, resolved_by: str, now: int
    ) -> EventRow | None:
        """Mark an unresolved event resolved; None when it already was."""
        row = txn.cursor.execute(
            _RESOLVE, {"id": event.id, "now": now, "resolved_by": resolved_by,
                       "revision": txn.next_revision},
        ).fetchone()
        if row is None:
            return None
        resolved = EventRow._make(row)
        txn.record(event.namespace, "event", str(event.id), "update", now, resolved)
        return resolved

    def page(
        self, namespace: str, filters: dict[str, Any], types: tuple[str, ...], limit: int
    ) -> list[EventRow]:
        """Return events newest first that match every filter (see _FILTERS) and type."""
        shape = (*self._shape(filters), f"types{len(types)}")
        sql = self._list_sql.get(shape)
        if sql is None:
            condition = Event.namespace == P(":namespace")
            for name in shape[:-1]:
                condition &= _FILTERS[name]
            if types:
                condition &= Event.type.in_([P(f":type{i}") for i in range(len(types))])
            query = (
                Event.select(*COLUMNS)
                .where(condition)
                .order_by(Event.occurred_at.desc(), Event.id.desc())
                .limit(P(":limit"))
            )
            sql = self._list_sql[shape] = compile_sql(query)
        params = {**filters, "namespace": namespace, "limit": limit}
        params.update({f"type{i}": t for i, t in enumerate(types)})
        with storage_errors():
            return [EventRow._make(r) for r in self._db.reader.execute(sql, params)]

    @staticmethod
    def _shape(filters: dict[str, Any]) -> tuple[str, ...]:
        names = set()
        for name, value in filters.items():
            if name.startswith("cursor_"):
                name = "cursor"
            elif name == "resolved":
                name = f"resolved={int(value)}"
            names.add(name)
        return tuple(sorted(names))

    def explain(self, namespace: str, filters: dict[str, Any], types: tuple[str, ...]) -> list[str]:
        """Return SQLite's plan for a list query (the tests check that indexes serve it)."""
        self.page(namespace, filters, types, 1)
        sql = self._list_sql[(*self._shape(filters), f"types{len(types)}")]
        params = {**filters, "namespace": namespace, "limit": 51}
        params.update({f"type{i}": t for i, t in enumerate(types)})
        return self._db.query_plan(sql, params)
