"""SQL for sessions, their messages and their events, compiled once from the Peewee models."""

from __future__ import annotations

from typing import Any, NamedTuple

import apsw
import peewee as pw

from jarvis_memory_server.errors import AlreadyExists
from jarvis_memory_server.store.backend import Cursor, Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import Message, Session, SessionEvent
from jarvis_memory_server.store.writes import WriteTxn

# The values the schema allows (the services check requests against them).
STATES, TRIGGERS, ROLES = Session.STATES, Session.TRIGGERS, Message.ROLES

P = pw.SQL  # a named parameter, bound from the dict passed at execution time


class SessionRow(NamedTuple):
    """A session as stored (times in µs since the epoch, metadata as JSON text)."""

    id: int
    namespace: str
    session_id: str
    state: str
    started_at: int
    ended_at: int | None
    end_trigger: str | None
    summary: str
    last_activity_at: int
    message_count: int
    metadata: str | None
    revision: int


class MessageRow(NamedTuple):
    """A message as stored, with its session's public id."""

    id: int
    namespace: str
    session_id: str
    sequence: int
    role: str
    content: str
    model: str
    tokens_used: int
    tool_calls: str | None
    created_at: int
    revision: int


class EventRow(NamedTuple):
    """A session event as stored, with its session's public id."""

    id: int
    namespace: str
    session_id: str
    event_type: str
    data: str | None
    logged_at: int
    revision: int


SESSION_COLUMNS = tuple(getattr(Session, name) for name in SessionRow._fields)
_MESSAGE_COLUMNS = tuple(
    Session.session_id if name == "session_id" else getattr(Message, name)
    for name in MessageRow._fields
)
_EVENT_COLUMNS = tuple(
    Session.session_id if name == "session_id" else getattr(SessionEvent, name)
    for name in EventRow._fields
)

_INSERT_SESSION = compile_sql(
    Session.insert(
        {
            Session.namespace: P(":namespace"),
            Session.session_id: P(":session_id"),
            Session.state: P("'active'"),
            Session.started_at: P(":now"),
            Session.ended_at: P("NULL"),
            Session.end_trigger: P("NULL"),
            Session.summary: P("''"),
            Session.last_activity_at: P(":now"),
            Session.message_count: P("0"),
            Session.metadata: P(":metadata"),
            Session.revision: P(":revision"),
        }
    ).returning(*SESSION_COLUMNS)
)

_GET_SESSION = compile_sql(
    Session.select(*SESSION_COLUMNS).where(
        (Session.namespace == P(":namespace")) & (Session.session_id == P(":session_id"))
    )
)

_END_SESSION = compile_sql(
    Session.update(
        {
            Session.state: P("'ended'"),
            Session.ended_at: P(":now"),
            # The session_end event logged with the end is the session's last activity.
            Session.last_activity_at: P(":now"),
            Session.end_trigger: P(":trigger"),
            Session.summary: P(":summary"),
            Session.revision: P(":revision"),
        }
    )
    .where((Session.id == P(":id")) & (Session.state == P("'active'")))
    .returning(*SESSION_COLUMNS)
)

# A message or event is activity; a message also takes the next sequence number.
_TOUCH_SESSION = compile_sql(
    Session.update(
        {
            Session.last_activity_at: P(":now"),
            Session.message_count: Session.message_count + P(":messages"),
        }
    )
    .where(Session.id == P(":id"))
    .returning(Session.message_count)
)

_INSERT_MESSAGE = compile_sql(
    Message.insert(
        {
            Message.namespace: P(":namespace"),
            Message.session: P(":session_ref"),
            Message.sequence: P(":sequence"),
            Message.role: P(":role"),
            Message.content: P(":content"),
            Message.model: P(":model"),
            Message.tokens_used: P(":tokens_used"),
            Message.tool_calls: P(":tool_calls"),
            Message.created_at: P(":now"),
            Message.revision: P(":revision"),
        }
    ).returning(Message.id)
)

_INSERT_EVENT = compile_sql(
    SessionEvent.insert(
        {
            SessionEvent.namespace: P(":namespace"),
            SessionEvent.session: P(":session_ref"),
            SessionEvent.event_type: P(":event_type"),
            SessionEvent.data: P(":data"),
            SessionEvent.logged_at: P(":now"),
            SessionEvent.revision: P(":revision"),
        }
    ).returning(SessionEvent.id)
)

_MESSAGES_PAGE = compile_sql(
    Message.select(*_MESSAGE_COLUMNS)
    .join(Session)
    .where((Message.session == P(":session_ref")) & (Message.sequence > P(":after")))
    .order_by(Message.sequence)
    .limit(P(":limit"))
)

_EVENTS_OF_SESSION = compile_sql(
    SessionEvent.select(*_EVENT_COLUMNS)
    .join(Session)
    .where((SessionEvent.session == P(":session_ref")) & (SessionEvent.id > P(":after")))
    .order_by(SessionEvent.id)
    .limit(P(":limit"))
)

_EVENTS_OF_DAY = compile_sql(
    SessionEvent.select(*_EVENT_COLUMNS)
    .join(Session)
    .where(
        (SessionEvent.namespace == P(":namespace"))
        & (SessionEvent.logged_at >= P(":day_start"))
        & (SessionEvent.logged_at < P(":day_end"))
        & (
            pw.Tuple(SessionEvent.logged_at, SessionEvent.id)
            > pw.Tuple(P(":after_at"), P(":after"))
        )
    )
    .order_by(SessionEvent.logged_at, SessionEvent.id)
    .limit(P(":limit"))
)

_IDLE_SESSIONS = compile_sql(
    Session.select(*SESSION_COLUMNS)
    .where((Session.state == P("'active'")) & (Session.last_activity_at < P(":before")))
    .order_by(Session.last_activity_at)
    .limit(P(":limit"))
)

def _scalar(cursor: Cursor, sql: str, params: dict[str, Any]) -> int:
    """Run a statement that returns one integer (RETURNING id, count...)."""
    row = cursor.execute(sql, params).fetchone()
    assert row is not None, sql
    return int(row[0])


# ListSessions: (state filter, order) -> the column the page is sorted and paged on.
_ORDER_COLUMNS = {"started_at": Session.started_at, "last_activity_at": Session.last_activity_at}


class SessionStore:
    """Queries on sessions, messages and session events.

    Writes run inside a Database.write() transaction and read the session through the batch's
    cursor, so that writes of one batch see each other.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._list_sql: dict[tuple[bool, str], str] = {}

    # -- sessions ---------------------------------------------------------------------------

    def insert_session(self, txn: WriteTxn, values: dict[str, Any]) -> SessionRow:
        """Create a session (namespace, session_id, metadata, now).

        Raises AlreadyExists when the id is taken in the namespace.
        """
        values["revision"] = txn.next_revision
        try:
            row = SessionRow._make(txn.cursor.execute(_INSERT_SESSION, values).fetchone() or ())
        except apsw.ConstraintError as exc:
            raise AlreadyExists(
                f"session {values['session_id']!r} already exists in namespace "
                f"{values['namespace']!r}",
                reason="SESSION_EXISTS", namespace=values["namespace"],
                session_id=values["session_id"],
            ) from exc
        txn.record(row.namespace, "session", row.session_id, "create", values["now"], row)
        return row

    def session_for_write(
        self, txn: WriteTxn, namespace: str, session_id: str
    ) -> SessionRow | None:
        """Return a session as the current write batch sees it."""
        row = txn.cursor.execute(
            _GET_SESSION, {"namespace": namespace, "session_id": session_id}
        ).fetchone()
        return None if row is None else SessionRow._make(row)

    def get_session(self, namespace: str, session_id: str) -> SessionRow | None:
        """Return a committed session, or None."""
        with storage_errors():
            row = self._db.reader.execute(
                _GET_SESSION, {"namespace": namespace, "session_id": session_id}
            ).fetchone()
        return None if row is None else SessionRow._make(row)

    def end_session(
        self, txn: WriteTxn, session: SessionRow, trigger: str, summary: str, now: int
    ) -> SessionRow | None:
        """End an active session; return it, or None when it was not active."""
        row = txn.cursor.execute(
            _END_SESSION,
            {"id": session.id, "now": now, "trigger": trigger, "summary": summary,
             "revision": txn.next_revision},
        ).fetchone()
        if row is None:
            return None
        ended = SessionRow._make(row)
        txn.record(session.namespace, "session", session.session_id, "update", now, ended)
        return ended

    def page_sessions(
        self, namespace: str, state: str | None, order: str, cursor: tuple[int, int] | None,
        limit: int,
    ) -> list[SessionRow]:
        """Return sessions newest first by ``order`` (started_at or last_activity_at)."""
        key = (state is not None, order)
        sql = self._list_sql.get(key)
        if sql is None:
            column = _ORDER_COLUMNS[order]
            condition = Session.namespace == P(":namespace")
            if state is not None:
                condition &= Session.state == P(":state")
            condition &= pw.Tuple(column, Session.id) < pw.Tuple(P(":at"), P(":after"))
            query = (
                Session.select(*SESSION_COLUMNS)
                .where(condition)
                .order_by(column.desc(), Session.id.desc())
                .limit(P(":limit"))
            )
            sql = self._list_sql[key] = compile_sql(query)
        at, after = cursor if cursor is not None else (2**62, 2**62)
        params = {"namespace": namespace, "state": state, "at": at, "after": after, "limit": limit}
        with storage_errors():
            return [SessionRow._make(r) for r in self._db.reader.execute(sql, params)]

    def idle_sessions(self, txn: WriteTxn, before: int, limit: int) -> list[SessionRow]:
        """Return active sessions (any namespace) whose last activity is older than ``before``."""
        rows = txn.cursor.execute(_IDLE_SESSIONS, {"before": before, "limit": limit}).fetchall()
        return [SessionRow._make(r) for r in rows]

    # -- messages and events ----------------------------------------------------------------

    def append_message(
        self, txn: WriteTxn, session: SessionRow, values: dict[str, Any]
    ) -> MessageRow:
        """Append a message (role, content, model, tokens_used, tool_calls, now) to a session."""
        now = values["now"]
        count = _scalar(txn.cursor, _TOUCH_SESSION, {"id": session.id, "now": now, "messages": 1})
        params = {**values, "namespace": session.namespace, "session_ref": session.id,
                  "sequence": count, "revision": txn.next_revision}
        message_id = _scalar(txn.cursor, _INSERT_MESSAGE, params)
        message = MessageRow(
            message_id, session.namespace, session.session_id, count, values["role"],
            values["content"], values["model"], values["tokens_used"], values["tool_calls"],
            now, txn.next_revision,
        )
        txn.record(session.namespace, "message", str(message_id), "create", now, message)
        return message

    def log_event(
        self, txn: WriteTxn, session: SessionRow, event_type: str, data: str | None, now: int
    ) -> EventRow:
        """Log an event of a session (and count it as activity)."""
        txn.cursor.execute(_TOUCH_SESSION, {"id": session.id, "now": now, "messages": 0})
        params = {"namespace": session.namespace, "session_ref": session.id,
                  "event_type": event_type, "data": data, "now": now,
                  "revision": txn.next_revision}
        event_id = _scalar(txn.cursor, _INSERT_EVENT, params)
        event = EventRow(
            event_id, session.namespace, session.session_id, event_type, data, now,
            txn.next_revision,
        )
        txn.record(session.namespace, "session_event", str(event_id), "create", now, event)
        return event

    def page_messages(self, session_ref: int, after: int, limit: int) -> list[MessageRow]:
        """Return a session's messages with sequence > ``after``, oldest first."""
        params = {"session_ref": session_ref, "after": after, "limit": limit}
        with storage_errors():
            return [MessageRow._make(r) for r in self._db.reader.execute(_MESSAGES_PAGE, params)]

    def page_session_events(self, session_ref: int, after: int, limit: int) -> list[EventRow]:
        """Return a session's events with id > ``after``, oldest first."""
        params = {"session_ref": session_ref, "after": after, "limit": limit}
        with storage_errors():
            return [EventRow._make(r) for r in self._db.reader.execute(_EVENTS_OF_SESSION, params)]

    def page_day_events(
        self, namespace: str, day_start: int, day_end: int, cursor: tuple[int, int], limit: int
    ) -> list[EventRow]:
        """Return a namespace's events logged in [day_start, day_end), after ``cursor``."""
        params = {"namespace": namespace, "day_start": day_start, "day_end": day_end,
                  "after_at": cursor[0], "after": cursor[1], "limit": limit}
        with storage_errors():
            return [EventRow._make(r) for r in self._db.reader.execute(_EVENTS_OF_DAY, params)]

    def explain(self) -> dict[str, list[str]]:
        """Return SQLite's plan for every list query (the tests check that indexes serve them)."""
        plans = {}
        queries: dict[str, tuple[str, dict[str, Any]]] = {
            "messages": (_MESSAGES_PAGE, {"session_ref": 1, "after": 0, "limit": 51}),
            "events_of_session": (_EVENTS_OF_SESSION, {"session_ref": 1, "after": 0, "limit": 51}),
            "events_of_day": (_EVENTS_OF_DAY, {"namespace": "n", "day_start": 0, "day_end": 1,
                                               "after_at": 0, "after": 0, "limit": 51}),
            "idle_sessions": (_IDLE_SESSIONS, {"before": 1, "limit": 100}),
        }
        for state in (None, "active"):
            for order in _ORDER_COLUMNS:
                self.page_sessions("n", state, order, None, 1)  # compiles the SQL
                queries[f"sessions[{state},{order}]"] = (
                    self._list_sql[(state is not None, order)],
                    {"namespace": "n", "state": state, "at": 1, "after": 1, "limit": 51},
                )
        for name, (sql, params) in queries.items():
            plans[name] = self._db.query_plan(sql, params)
        return plans
