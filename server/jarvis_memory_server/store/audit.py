"""SQL for the append-only audit trail: two-row tool calls and planning cycles, decisions.

A call or cycle is read as its started row LEFT JOINed with its completion row (parent_id).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import apsw
import peewee as pw

from jarvis_memory_server.store.backend import Cursor, Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Decision, PlanningCycle, ToolCall
from jarvis_memory_server.store.writes import WriteTxn

P = pw.SQL


class ToolCallRow(NamedTuple):
    """A tool call: its started row with its completion (status None while running)."""

    id: int
    namespace: str
    tool: str
    input: str | None
    session_id: str
    cycle_id: int | None
    started_at: int
    status: str | None
    output: str | None
    error: str | None
    duration_ms: int | None
    finished_at: int | None
    revision: int


class CycleRow(NamedTuple):
    """A planning cycle: its started row with its completion (status None while running)."""

    id: int
    namespace: str
    goals: str | None
    started_at: int
    status: str | None
    outcomes: str | None
    finished_at: int | None
    revision: int


class DecisionRow(NamedTuple):
    """A recorded decision."""

    id: int
    namespace: str
    cycle_id: int | None
    reasoning: str | None
    decision: str
    created_at: int
    revision: int


def _joined(model: type[ToolCall] | type[PlanningCycle], *started: str, done: tuple[str, ...]
            ) -> tuple[Any, Any, Any]:
    """Select started rows with their completion rows; return (query, started, done)."""
    start, end = model.alias("s"), model.alias("d")
    columns = [getattr(start, name) for name in started]
    columns += [getattr(end, name) for name in done]
    # The revision of the last row: the completion's once there is one.
    columns.append(pw.fn.coalesce(end.revision, start.revision))
    query = (
        start.select(*columns)
        .join(end, pw.JOIN.LEFT_OUTER, on=(end.parent == start.id))
        .where(start.parent.is_null() & (start.namespace == P(":namespace")))
    )
    return query, start, end


_CALL_QUERY, _CALL, _CALL_DONE = _joined(
    ToolCall, "id", "namespace", "tool", "payload", "session_id", "cycle_id", "created_at",
    done=("status", "payload", "error", "duration_ms", "created_at"),
)
_CYCLE_QUERY, _CYCLE, _CYCLE_DONE = _joined(
    PlanningCycle, "id", "namespace", "payload", "created_at",
    done=("status", "payload", "created_at"),
)

_GET_CALL = compile_sql(_CALL_QUERY.where(_CALL.id == P(":id")))
_GET_CYCLE = compile_sql(_CYCLE_QUERY.where(_CYCLE.id == P(":id")))

_CALL_FILTERS: dict[str, pw.Expression] = {
    "tool": _CALL.tool == P(":tool"),
    "cycle_id": _CALL.cycle_id == P(":cycle_id"),
    "session_id": _CALL.session_id == P(":session_id"),
    "since": _CALL.created_at >= P(":since"),
    "until": _CALL.created_at < P(":until"),
    "running": _CALL_DONE.id.is_null(),
    "status": _CALL_DONE.status == P(":status"),
    "cursor": pw.Tuple(_CALL.created_at, _CALL.id) < pw.Tuple(P(":cursor_at"), P(":cursor_id")),
}
_CYCLE_FILTERS: dict[str, pw.Expression] = {
    "running": _CYCLE_DONE.id.is_null(),
    "status": _CYCLE_DONE.status == P(":status"),
    "cursor": (
        pw.Tuple(_CYCLE.created_at, _CYCLE.id) < pw.Tuple(P(":cursor_at"), P(":cursor_id"))
    ),
}


def _insert(model: Any, columns: dict[str, str]) -> str:
    return compile_sql(model.insert({getattr(model, k): P(v) for k, v in columns.items()})
                       .returning(model.id))


_START_CALL = _insert(ToolCall, {
    "namespace": ":namespace", "parent": "NULL", "status": "'started'", "tool": ":tool",
    "payload": ":payload", "error": "''", "duration_ms": "NULL", "session_id": ":session_id",
    "cycle_id": ":cycle_id", "created_at": ":now", "revision": ":revision"})
_FINISH_CALL = _insert(ToolCall, {
    "namespace": ":namespace", "parent": ":parent", "status": ":status", "tool": ":tool",
    "payload": ":payload", "error": ":error", "duration_ms": ":duration_ms",
    "session_id": ":session_id", "cycle_id": ":cycle_id", "created_at": ":now",
    "revision": ":revision"})
_START_CYCLE = _insert(PlanningCycle, {
    "namespace": ":namespace", "parent": "NULL", "status": "'started'", "payload": ":payload",
    "created_at": ":now", "revision": ":revision"})
_FINISH_CYCLE = _insert(PlanningCycle, {
    "namespace": ":namespace", "parent": ":parent", "status": ":status", "payload": ":payload",
    "created_at": ":now", "revision": ":revision"})
_DECISION_COLUMNS = tuple(getattr(Decision, name) for name in DecisionRow._fields)
_RECORD_DECISION = compile_sql(
    Decision.insert({
        Decision.namespace: P(":namespace"), Decision.cycle_id: P(":cycle_id"),
        Decision.reasoning: P(":reasoning"), Decision.decision: P(":decision"),
        Decision.created_at: P(":now"), Decision.revision: P(":revision"),
    }).returning(*_DECISION_COLUMNS)
)


class AuditStore:
    """Appends to and reads the audit tables; never updates or deletes."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._list_sql: dict[tuple[str, ...], str] = {}

    # -- tool calls -------------------------------------------------------------------------

    def start_call(self, txn: WriteTxn, values: dict[str, Any]) -> ToolCallRow:
        """Append a started row (namespace, tool, payload, session_id, cycle_id, now)."""
        values["revision"] = txn.next_revision
        call_id = _scalar(txn.cursor, _START_CALL, values)
        row = ToolCallRow(call_id, values["namespace"], values["tool"], values["payload"],
                          values["session_id"], values["cycle_id"], values["now"], None, None,
                          None, None, None, values["revision"])
        txn.record(row.namespace, "tool_call", str(call_id), "create", row.started_at, row)
        return row

    def finish_call(
        self, txn: WriteTxn, call: ToolCallRow, values: dict[str, Any]
    ) -> ToolCallRow | None:
        """Append the completion row of a call; return the finished call.

        ``values`` holds status, payload, error, duration_ms and now. None: the call already
        had a completion.
        """
        params = {**values, "namespace": call.namespace, "parent": call.id, "tool": call.tool,
                  "session_id": call.session_id, "cycle_id": call.cycle_id,
                  "revision": txn.next_revision}
        try:
            txn.cursor.execute(_FINISH_CALL, params).fetchall()
        except apsw.ConstraintError:  # the unique parent_id: finished meanwhile
            return None
        row = call._replace(status=values["status"], output=values["payload"],
                            error=values["error"], duration_ms=values["duration_ms"],
                            finished_at=values["now"], revision=params["revision"])
        txn.record(call.namespace, "tool_call", str(call.id), "update", values["now"], row)
        return row

    def call(self, namespace: str, call_id: int, txn: WriteTxn | None = None) -> ToolCallRow | None:
        """Return a call with its completion (through the write batch when ``txn`` is given)."""
        params = {"namespace": namespace, "id": call_id}
        with storage_errors():
            source = txn.cursor if txn is not None else self._db.reader
            row = source.execute(_GET_CALL, params).fetchone()
        return None if row is None else ToolCallRow._make(row)

    def page_calls(self, namespace: str, filters: dict[str, Any], limit: int) -> list[ToolCallRow]:
        """Return calls newest first matching every filter (keys of _CALL_FILTERS)."""
        sql = self._sql("calls", _CALL_QUERY, _CALL, _CALL_FILTERS, filters)
        with storage_errors():
            rows = self._db.reader.execute(sql, {**filters, "namespace": namespace,
                                                 "limit": limit})
            return [ToolCallRow._make(r) for r in rows]

    # -- planning cycles --------------------------------------------------------------------

    def start_cycle(
        self, txn: WriteTxn, namespace: str, goals: str | None, now: int
    ) -> CycleRow:
        """Append a started planning cycle row."""
        revision = txn.next_revision
        params = {"namespace": namespace, "payload": goals, "now": now, "revision": revision}
        cycle_id = _scalar(txn.cursor, _START_CYCLE, params)
        row = CycleRow(cycle_id, namespace, goals, now, None, None, None, revision)
        txn.record(namespace, "planning_cycle", str(cycle_id), "create", now, row)
        return row

    def finish_cycle(
        self, txn: WriteTxn, cycle: CycleRow, status: str, outcomes: str | None, now: int
    ) -> CycleRow | None:
        """Append the completion row of a cycle; return it (None: it was finished already)."""
        revision = txn.next_revision
        params = {"namespace": cycle.namespace, "parent": cycle.id, "status": status,
                  "payload": outcomes, "now": now, "revision": revision}
        try:
            txn.cursor.execute(_FINISH_CYCLE, params).fetchall()
        except apsw.ConstraintError:
            return None
        row = cycle._replace(status=status, outcomes=outcomes, finished_at=now, revision=revision)
        txn.record(cycle.namespace, "planning_cycle", str(cycle.id), "update", now, row)
        return row

    def cycle(self, namespace: str, cycle_id: int, txn: WriteTxn | None = None) -> CycleRow | None:
        """Return a cycle with its completion (through the write batch when ``txn`` is given)."""
        params = {"namespace": namespace, "id": cycle_id}
        with storage_errors():
            source = txn.cursor if txn is not None else self._db.reader
            row = source.execute(_GET_CYCLE, params).fetchone()
        return None if row is None else CycleRow._make(row)

    def page_cycles(self, namespace: str, filters: dict[str, Any], limit: int) -> list[CycleRow]:
        """Return cycles newest first matching every filter (keys of _CYCLE_FILTERS)."""
        sql = self._sql("cycles", _CYCLE_QUERY, _CYCLE, _CYCLE_FILTERS, filters)
        with storage_errors():
            rows = self._db.reader.execute(sql, {**filters, "namespace": namespace,
                                                 "limit": limit})
            return [CycleRow._make(r) for r in rows]

    # -- decisions --------------------------------------------------------------------------

    def record_decision(self, txn: WriteTxn, values: dict[str, Any]) -> DecisionRow:
        """Append a decision (namespace, cycle_id, reasoning, decision, now)."""
        values["revision"] = txn.next_revision
        row = DecisionRow._make(txn.cursor.execute(_RECORD_DECISION, values).fetchone() or ())
        txn.record(row.namespace, "decision", str(row.id), "create", values["now"], row)
        return row

    def page_decisions(
        self, namespace: str, cycle_id: int | None, after: int, limit: int
    ) -> list[DecisionRow]:
        """Return decisions oldest first with id > ``after``, of one cycle when given."""
        key = ("decisions", "cycle" if cycle_id is not None else "")
        sql = self._list_sql.get(key)
        if sql is None:
            condition = (Decision.namespace == P(":namespace")) & (Decision.id > P(":after"))
            if cycle_id is not None:
                condition &= Decision.cycle_id == P(":cycle_id")
            sql = self._list_sql[key] = compile_sql(
                Decision.select(*_DECISION_COLUMNS).where(condition).order_by(Decision.id)
                .limit(P(":limit"))
            )
        params = {"namespace": namespace, "cycle_id": cycle_id, "after": after, "limit": limit}
        with storage_errors():
            return [DecisionRow._make(r) for r in self._db.reader.execute(sql, params)]

    # -- helpers ----------------------------------------------------------------------------

    def _sql(self, kind: str, base: pw.ModelSelect, start: Any,
             conditions: dict[str, pw.Expression], filters: dict[str, Any]) -> str:
        shape = (kind, *sorted({"cursor" if k.startswith("cursor_") else k for k in filters}))
        sql = self._list_sql.get(shape)
        if sql is None:
            query = base
            for name in shape[1:]:
                query = query.where(conditions[name])
            query = query.order_by(start.created_at.desc(), start.id.desc()).limit(P(":limit"))
            sql = self._list_sql[shape] = compile_sql(query)
        return sql

    def explain_calls(self, filters: dict[str, Any]) -> list[str]:
        """Return SQLite's plan of a tool-call listing."""
        sql = self._sql("calls", _CALL_QUERY, _CALL, _CALL_FILTERS, filters)
        params = {**filters, "namespace": "n", "limit": 51}
        return self._db.query_plan(sql, params)


def _scalar(cursor: Cursor, sql: str, params: dict[str, Any]) -> int:
    row = cursor.execute(sql, params).fetchone()
    assert row is not None, sql
    return int(row[0])
