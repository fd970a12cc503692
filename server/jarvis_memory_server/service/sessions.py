"""Session rules: ids, the start/end lifecycle, messages, the event log, idle timeouts."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jarvis_memory_server.errors import FailedPrecondition, InvalidArgument, NotFound
from jarvis_memory_server.service.common import (
    ABSENT,
    ServiceBase,
    choice,
    filter_fingerprint,
    identifier,
    json_object,
    json_text,
    json_value,
    page_size,
)
from jarvis_memory_server.service.search import claim_dimension, embedding_bytes
from jarvis_memory_server.store.backend import Database, now_us, search_store
from jarvis_memory_server.store.search import MESSAGES, dimension_of
from jarvis_memory_server.store.sessions import (
    ROLES,
    STATES,
    TRIGGERS,
    EventRow,
    MessageRow,
    SessionRow,
    SessionStore,
)
from jarvis_memory_server.store.writes import WriteTxn

__all__ = ["EventRow", "MessageRow", "NewMessage", "SessionRow", "SessionService"]

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_EVENT_TYPE_CHARS = 64
MAX_SUMMARY_BYTES = 65536
MAX_CONTENT_BYTES = 1024 * 1024
MAX_MODEL_CHARS = 256
MAX_JSON_BYTES = 65536
MAX_TOOL_CALLS_BYTES = 1024 * 1024
IDLE_SWEEP_BATCH = 500  # sessions ended per sweep transaction


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append; role is the lowercase name ("user", "assistant", ...)."""

    role: str
    content: str
    model: str = ""
    tokens_used: int = 0
    tool_calls: Any = ABSENT  # any JSON value (None is null); ABSENT: no tool calls
    embedding: Sequence[float] = ()  # for vector search; () when none


class SessionService(ServiceBase):
    """Starts, ends, lists and ends-when-idle sessions; appends messages and events."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._store = SessionStore(db)
        self._search = search_store(db)

    # -- lifecycle --------------------------------------------------------------------------

    def start(
        self, namespace: str, session_id: str = "", metadata: dict[str, Any] | None = None
    ) -> SessionRow:
        """Start a session (with a new id when none is given) and log session_start.

        Raises InvalidArgument for a malformed id or metadata, AlreadyExists for a taken id.
        """
        if session_id:
            _check_session_id(session_id)
        else:
            session_id = uuid.uuid4().hex
        metadata_json = json_object(metadata, "metadata", MAX_JSON_BYTES)
        now = now_us()
        with self._db.write() as txn:
            row = self._store.insert_session(
                txn, {"namespace": namespace, "session_id": session_id,
                      "metadata": metadata_json, "now": now}
            )
            self._store.log_event(txn, row, "session_start", metadata_json, now)
            return row

    def end(self, namespace: str, session_id: str, trigger: str, summary: str = "") -> SessionRow:
        """End an active session and log session_end with its duration.

        Raises NotFound, FailedPrecondition when it has already ended, InvalidArgument.
        """
        choice(trigger, TRIGGERS, "trigger")
        if len(summary.encode()) > MAX_SUMMARY_BYTES:
            raise InvalidArgument("summary", f"is longer than {MAX_SUMMARY_BYTES} bytes")
        with self._db.write() as txn:
            session = self._active_session(txn, namespace, session_id)
            return self._end(txn, session, trigger, summary, now_us())

    def end_idle(self, idle_timeout_us: int) -> int:
        """End (trigger timeout) up to IDLE_SWEEP_BATCH sessions idle longer than the timeout.

        Returns how many were ended; call again while it returns IDLE_SWEEP_BATCH.
        """
        now = now_us()
        with self._db.write() as txn:
            idle = self._store.idle_sessions(txn, now - idle_timeout_us, IDLE_SWEEP_BATCH)
            for session in idle:
                self._end(txn, session, "timeout", "", now)
            return len(idle)

    def _end(
        self, txn: WriteTxn, session: SessionRow, trigger: str, summary: str, now: int
    ) -> SessionRow:
        ended = self._store.end_session(txn, session, trigger, summary, now)
        if ended is None:  # pragma: no cover - callers pass active sessions
            raise _already_ended(session)
        data: dict[str, Any] = {
            "trigger": trigger, "duration_ms": (now - session.started_at) // 1000
        }
        if summary:
            data["summary"] = summary
        # Encoded as every stored JSON value is; the bound holds any summary (an escape is at
        # most 6 bytes a byte).
        text = json_text(data, "summary", 6 * MAX_SUMMARY_BYTES + 256)
        self._store.log_event(txn, ended, "session_end", text, now)
        return ended

    # -- messages and events ----------------------------------------------------------------

    def append_message(self, namespace: str, session_id: str, message: NewMessage) -> MessageRow:
        """Append a message to an active session; it gets the next sequence number.

        Raises NotFound, FailedPrecondition for an ended session, InvalidArgument.
        """
        choice(message.role, ROLES, "role")
        size = len(message.content.encode())
        if size > MAX_CONTENT_BYTES:
            raise InvalidArgument("content", f"is {size} bytes; at most {MAX_CONTENT_BYTES}")
        if len(message.model) > MAX_MODEL_CHARS:
            raise InvalidArgument("model", f"is longer than {MAX_MODEL_CHARS} characters")
        if message.tokens_used < 0:
            raise InvalidArgument(
                "tokens_used", f"must not be negative (got {message.tokens_used})"
            )
        tool_calls = json_value(message.tool_calls, "tool_calls", MAX_TOOL_CALLS_BYTES)
        if not message.content.strip() and tool_calls is None:
            raise InvalidArgument("content", "is required unless tool_calls is set")
        vector = embedding_bytes(message.embedding, "embedding")
        values = {"role": message.role, "content": message.content, "model": message.model,
                  "tokens_used": message.tokens_used, "tool_calls": tool_calls, "now": now_us()}
        with self._db.write() as txn:
            session = self._active_session(txn, namespace, session_id)
            if vector is not None:
                claim_dimension(self._search, txn, namespace, dimension_of(vector), "embedding")
            row = self._store.append_message(txn, session, values)
            if vector is not None:
                self._search.put_embedding(txn, MESSAGES, namespace, row.id, vector)
            return row

    def log_event(
        self, namespace: str, session_id: str, event_type: str, data: dict[str, Any] | None
    ) -> EventRow:
        """Log an event of an active session.

        Raises NotFound, FailedPrecondition for an ended session, InvalidArgument.
        """
        if not event_type.strip():
            raise InvalidArgument("event_type", "is required")
        if len(event_type) > MAX_EVENT_TYPE_CHARS:
            raise InvalidArgument(
                "event_type", f"is longer than {MAX_EVENT_TYPE_CHARS} characters"
            )
        data_json = json_object(data, "data", MAX_JSON_BYTES)
        with self._db.write() as txn:
            session = self._active_session(txn, namespace, session_id)
            return self._store.log_event(txn, session, event_type, data_json, now_us())

    # -- reads ------------------------------------------------------------------------------

    def get(self, namespace: str, session_id: str) -> SessionRow:
        """Return a session. Raises NotFound, InvalidArgument."""
        _check_session_id(session_id)
        row = self._store.get_session(namespace, session_id)
        if row is None:
            raise _not_found(namespace, session_id)
        return row

    def list_page(
        self, namespace: str, *, size: int = 0, token: str = "", state: str | None = None,
        order: str = "started_at",
    ) -> tuple[list[SessionRow], str]:
        """Return one page of sessions, newest first by ``order``, and the next page's token."""
        limit = page_size(size)
        if state is not None:
            choice(state, STATES, "state")
        fingerprint = filter_fingerprint(namespace, {"state": state, "order": order})
        cursor = self._pages.decode_cursor(token, fingerprint) if token else None
        rows = self._store.page_sessions(namespace, state, order, cursor, limit + 1)
        return self._pages.finish_page(
            rows, limit, fingerprint, lambda r: {"at": getattr(r, order), "id": r.id}
        )

    def list_messages(
        self, namespace: str, session_id: str, *, size: int = 0, token: str = ""
    ) -> tuple[list[MessageRow], str]:
        """Return one page of a session's messages, oldest first, and the next page's token."""
        session = self.get(namespace, session_id)
        limit = page_size(size)
        fingerprint = filter_fingerprint(namespace, {"messages_of": session_id})
        after = self._pages.decode_cursor(token, fingerprint)[1] if token else 0
        rows = self._store.page_messages(session.id, after, limit + 1)
        return self._pages.finish_page(
            rows, limit, fingerprint, lambda r: {"at": 0, "id": r.sequence})

    def recent_messages(self, namespace: str, session_id: str, count: int) -> list[MessageRow]:
        """The session's last ``count`` messages, newest first. Raises NotFound."""
        session = self.get(namespace, session_id)
        rows = self._store.page_messages(session.id, max(0, session.message_count - count),
                                         count)
        return rows[::-1]

    def list_events(
        self, namespace: str, *, session_id: str | None = None, day: str | None = None,
        size: int = 0, token: str = "",
    ) -> tuple[list[EventRow], str]:
        """Return one page of events, oldest first: of one session, or of one UTC day.

        Raises InvalidArgument unless exactly one of session_id and day is given.
        """
        limit = page_size(size)
        if (session_id is None) == (day is None):
            raise InvalidArgument("scope", "give exactly one of session_id and day")
        fingerprint = filter_fingerprint(namespace, {"session": session_id, "day": day})
        at, after = self._pages.decode_cursor(token, fingerprint) if token else (0, 0)
        if session_id is not None:
            session = self.get(namespace, session_id)
            rows = self._store.page_session_events(session.id, after, limit + 1)
        else:
            start, end = _day_range(day or "")
            rows = self._store.page_day_events(namespace, start, end, (at, after), limit + 1)
        return self._pages.finish_page(
            rows, limit, fingerprint, lambda r: {"at": r.logged_at, "id": r.id})

    # -- helpers ----------------------------------------------------------------------------

    def _active_session(self, txn: WriteTxn, namespace: str, session_id: str) -> SessionRow:
        _check_session_id(session_id)
        session = self._store.session_for_write(txn, namespace, session_id)
        if session is None:
            raise _not_found(namespace, session_id)
        if session.state != "active":
            raise _already_ended(session)
        return session


def _check_session_id(session_id: str) -> None:
    identifier(session_id, _SESSION_ID, "session_id",
               "use 1 to 128 letters, digits or '._:-', starting with a letter or digit")


def _day_range(day: str) -> tuple[int, int]:
    """The [start, end) of a UTC calendar day "YYYY-MM-DD", in µs since the epoch."""
    try:
        if _DAY.fullmatch(day) is None:
            raise ValueError(day)
        date = dt.date.fromisoformat(day)
    except ValueError as exc:
        raise InvalidArgument("day", f"{day[:32]!r} is not a date as YYYY-MM-DD") from exc
    start = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
    start_us = int(start.timestamp()) * 1_000_000
    return start_us, start_us + 86_400 * 1_000_000


def _not_found(namespace: str, session_id: str) -> NotFound:
    return NotFound(
        f"session {session_id!r} does not exist in namespace {namespace!r}",
        reason="SESSION_NOT_FOUND", namespace=namespace, session_id=session_id,
    )


def _already_ended(session: SessionRow) -> FailedPrecondition:
    return FailedPrecondition(
        f"session {session.session_id!r} has already ended ({session.end_trigger})",
        reason="SESSION_ENDED", namespace=session.namespace, session_id=session.session_id,
    )
