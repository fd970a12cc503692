"""Event rules: validation, filters, pagination, resolving once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jarvis_memory_server.errors import FailedPrecondition, InvalidArgument
from jarvis_memory_server.service.common import (
    ServiceBase,
    check_id,
    choice,
    filter_fingerprint,
    json_object,
    not_found,
    page_size,
)
from jarvis_memory_server.store.backend import Database, now_us
from jarvis_memory_server.store.events import SOURCES, TYPES, EventRow, EventStore

__all__ = ["SEVERITIES", "EventRow", "EventService", "NewEvent"]

SEVERITIES = ("info", "warning", "error", "critical")  # stored as 1..4
MAX_SUMMARY_CHARS = 1024
MAX_NODE_CHARS = 128
MAX_DETAILS_BYTES = 65536
MAX_RESOLVED_BY_CHARS = 128


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to record; enums are lowercase names, occurred_at µs (None: now)."""

    type: str
    severity: str
    source: str
    summary: str
    node: str = ""
    details: dict[str, Any] | None = None
    occurred_at: int | None = None


@dataclass(frozen=True, slots=True)
class EventFilter:
    """ListEvents filters; None (or empty) means "any"."""

    types: tuple[str, ...] = ()
    min_severity: str | None = None
    node: str | None = None
    source: str | None = None
    since: int | None = None
    until: int | None = None
    resolved: bool | None = None


def filter_values(filters: EventFilter) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Check filters; return their SQL values (severity as its number) and the sorted types.

    Raises InvalidArgument for an unknown type, severity or source.
    """
    for t in filters.types:
        choice(t, TYPES, "types")
    values: dict[str, Any] = {}
    if filters.min_severity is not None:
        choice(filters.min_severity, SEVERITIES, "min_severity")
        values["min_severity"] = SEVERITIES.index(filters.min_severity) + 1
    if filters.source is not None:
        choice(filters.source, SOURCES, "source")
        values["source"] = filters.source
    for name in ("node", "since", "until", "resolved"):
        if getattr(filters, name) is not None:
            values[name] = getattr(filters, name)
    return values, tuple(sorted(set(filters.types)))


def search_filter_values(filters: EventFilter) -> dict[str, Any]:
    """filter_values for SearchEvents, whose query takes the types as one JSON list."""
    values, types = filter_values(filters)
    if types:
        values["types"] = json.dumps(types)
    return values


class EventService(ServiceBase):
    """Records, reads, lists and resolves events."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._store = EventStore(db)

    def record(self, namespace: str, event: NewEvent) -> EventRow:
        """Record an event. Raises InvalidArgument for a missing or malformed field."""
        choice(event.type, TYPES, "type")
        choice(event.severity, SEVERITIES, "severity")
        choice(event.source, SOURCES, "source")
        summary = event.summary.strip()
        if not summary:
            raise InvalidArgument("summary", "is required")
        if "\n" in summary or "\r" in summary:
            raise InvalidArgument("summary", "must be one line (no line breaks)")
        if len(summary) > MAX_SUMMARY_CHARS:
            raise InvalidArgument("summary", f"is longer than {MAX_SUMMARY_CHARS} characters")
        if len(event.node) > MAX_NODE_CHARS:
            raise InvalidArgument("node", f"is longer than {MAX_NODE_CHARS} characters")
        now = now_us()
        values = {
            "namespace": namespace, "type": event.type,
            "severity": SEVERITIES.index(event.severity) + 1, "source": event.source,
            "node": event.node, "summary": summary,
            "details": json_object(event.details, "details", MAX_DETAILS_BYTES),
            "occurred_at": now if event.occurred_at is None else event.occurred_at, "now": now,
        }
        with self._db.write() as txn:
            return self._store.insert(txn, values)

    def get(self, namespace: str, event_id: int) -> EventRow:
        """Return an event. Raises NotFound, InvalidArgument for a non-positive id."""
        check_id(event_id, "event")
        row = self._store.get(namespace, event_id)
        if row is None:
            raise not_found("event", namespace, event_id)
        return row

    def resolve(self, namespace: str, event_id: int, resolved_by: str) -> EventRow:
        """Mark an event resolved by someone, now.

        Raises NotFound, FailedPrecondition when it is already resolved, InvalidArgument.
        """
        check_id(event_id, "event")
        if not resolved_by.strip():
            raise InvalidArgument("resolved_by", "is required")
        if len(resolved_by) > MAX_RESOLVED_BY_CHARS:
            raise InvalidArgument(
                "resolved_by", f"is longer than {MAX_RESOLVED_BY_CHARS} characters"
            )
        with self._db.write() as txn:
            event = self._store.get_for_write(txn, namespace, event_id)
            if event is None:
                raise not_found("event", namespace, event_id)
            resolved = None if event.resolved else self._store.resolve(
                txn, event, resolved_by, now_us()
            )
            if resolved is None:
                raise FailedPrecondition(
                    f"event {event_id} was already resolved by {event.resolved_by!r}",
                    reason="EVENT_RESOLVED", namespace=namespace, id=str(event_id),
                )
            return resolved

    def list_page(
        self, namespace: str, filters: EventFilter, *, size: int = 0, token: str = ""
    ) -> tuple[list[EventRow], str]:
        """Return one page of events newest first, and the next page's token."""
        limit = page_size(size)
        values, types = filter_values(filters)
        fingerprint = filter_fingerprint(namespace, {**values, "types": list(types)})
        if token:
            values["cursor_at"], values["cursor_id"] = self._pages.decode_cursor(token, fingerprint)
        rows = self._store.page(namespace, values, types, limit + 1)
        return self._pages.finish_page(
            rows, limit, fingerprint, lambda r: {"at": r.occurred_at, "id": r.id})



