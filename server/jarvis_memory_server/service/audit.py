"""Audit rules: the two-row lifecycle of tool calls and planning cycles, decisions."""

from __future__ import annotations

from typing import Any

from jarvis_memory_server.errors import FailedPrecondition, InvalidArgument
from jarvis_memory_server.service.common import (
    ABSENT,
    ServiceBase,
    check_id,
    choice,
    filter_fingerprint,
    json_value,
    not_found,
    page_size,
)
from jarvis_memory_server.store.audit import AuditStore, CycleRow, DecisionRow, ToolCallRow
from jarvis_memory_server.store.backend import Database, now_us
from jarvis_memory_server.store.writes import WriteTxn

__all__ = ["FINAL_STATUSES", "AuditService", "CycleRow", "DecisionRow", "ToolCallRow"]

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
MAX_JSON_BYTES = 1024 * 1024
MAX_TEXT_BYTES = 65536
MAX_TOOL_CHARS = 128


class AuditService(ServiceBase):
    """Starts and finishes tool calls and planning cycles, records decisions; lists them."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._store = AuditStore(db)

    # -- tool calls -------------------------------------------------------------------------

    def start_tool_call(
        self, namespace: str, tool: str, input: Any = ABSENT, *, session_id: str = "",
        cycle_id: int = 0,
    ) -> ToolCallRow:
        """Write the started row of a tool call. Raises InvalidArgument, NotFound (cycle)."""
        if not tool.strip():
            raise InvalidArgument("tool", "is required")
        if len(tool) > MAX_TOOL_CHARS:
            raise InvalidArgument("tool", f"is longer than {MAX_TOOL_CHARS} characters")
        if len(session_id) > 128:
            raise InvalidArgument("session_id", "is longer than 128 characters")
        payload = json_value(input, "input", MAX_JSON_BYTES)
        now = now_us()
        with self._db.write() as txn:
            self._check_cycle(txn, namespace, cycle_id)
            return self._store.start_call(txn, {
                "namespace": namespace, "tool": tool, "payload": payload,
                "session_id": session_id, "cycle_id": cycle_id or None, "now": now})

    def finish_tool_call(
        self, namespace: str, call_id: int, status: str, output: Any = ABSENT, *,
        error: str = "", duration_ms: int = 0,
    ) -> ToolCallRow:
        """Write the completion row of a running call.

        Raises NotFound, FailedPrecondition when it is already finished (nothing is written),
        InvalidArgument.
        """
        check_id(call_id, "tool call")
        choice(status, FINAL_STATUSES, "status")
        if duration_ms < 0:
            raise InvalidArgument("duration_ms", "must not be negative")
        if len(error.encode()) > MAX_TEXT_BYTES:
            raise InvalidArgument("error", f"is longer than {MAX_TEXT_BYTES} bytes")
        payload = json_value(output, "output", MAX_JSON_BYTES)
        now = now_us()
        with self._db.write() as txn:
            call = self._store.call(namespace, call_id, txn)
            if call is None:
                raise not_found("tool call", namespace, call_id)
            finished = None if call.status is not None else self._store.finish_call(txn, call, {
                "status": status, "payload": payload, "error": error,
                "duration_ms": duration_ms or (now - call.started_at) // 1000, "now": now,
            })
            if finished is None:
                raise _finished("tool call", namespace, call_id)
            return finished

    def get_tool_call(self, namespace: str, call_id: int) -> ToolCallRow:
        """Return a call with its completion. Raises NotFound, InvalidArgument."""
        check_id(call_id, "tool call")
        row = self._store.call(namespace, call_id)
        if row is None:
            raise not_found("tool call", namespace, call_id)
        return row

    def list_tool_calls(
        self, namespace: str, *, tool: str = "", status: str | None = None, cycle_id: int = 0,
        session_id: str = "", since: int | None = None, until: int | None = None,
        size: int = 0, token: str = "",
    ) -> tuple[list[ToolCallRow], str]:
        """Return one page of calls newest first (running ones included), and the next token."""
        limit = page_size(size)
        filters: dict[str, Any] = {}
        if tool:
            filters["tool"] = tool
        if status == "running":
            filters["running"] = None
        elif status is not None:
            filters["status"] = choice(status, FINAL_STATUSES, "status")
        if cycle_id:
            filters["cycle_id"] = cycle_id
        if session_id:
            filters["session_id"] = session_id
        if since is not None:
            filters["since"] = since
        if until is not None:
            filters["until"] = until
        fingerprint = filter_fingerprint(namespace, filters)
        if token:
            filters["cursor_at"], filters["cursor_id"] = self._pages.decode_cursor(
                token, fingerprint)
        rows = self._store.page_calls(namespace, filters, limit + 1)
        return self._pages.finish_page(
            rows, limit, fingerprint, lambda r: {"at": r.started_at, "id": r.id})

    # -- planning cycles --------------------------------------------------------------------

    def start_cycle(self, namespace: str, goals: Any = ABSENT) -> CycleRow:
        """Write the started row of a planning cycle. Raises InvalidArgument."""
        payload = json_value(goals, "goals", MAX_JSON_BYTES)
        now = now_us()
        with self._db.write() as txn:
            return self._store.start_cycle(txn, namespace, payload, now)

    def finish_cycle(
        self, namespace: str, cycle_id: int, status: str, outcomes: Any = ABSENT
    ) -> CycleRow:
        """Write the completion row of a running cycle.

        Raises NotFound, FailedPrecondition when it is already finished, InvalidArgument.
        """
        check_id(cycle_id, "planning cycle")
        choice(status, FINAL_STATUSES, "status")
        payload = json_value(outcomes, "outcomes", MAX_JSON_BYTES)
        now = now_us()
        with self._db.write() as txn:
            cycle = self._store.cycle(namespace, cycle_id, txn)
            if cycle is None:
                raise not_found("planning cycle", namespace, cycle_id)
            finished = (None if cycle.status is not None
                        else self._store.finish_cycle(txn, cycle, status, payload, now))
            if finished is None:
                raise _finished("planning cycle", namespace, cycle_id)
            return finished

    def list_cycles(
        self, namespace: str, *, status: str | None = None, size: int = 0, token: str = ""
    ) -> tuple[list[CycleRow], str]:
        """Return one page of planning cycles newest first, and the next page's token."""
        limit = page_size(size)
        filters: dict[str, Any] = {}
        if status == "running":
            filters["running"] = None
        elif status is not None:
            filters["status"] = choice(status, FINAL_STATUSES, "status")
        fingerprint = filter_fingerprint(namespace, filters)
        if token:
            filters["cursor_at"], filters["cursor_id"] = self._pages.decode_cursor(
                token, fingerprint)
        rows = self._store.page_cycles(namespace, filters, limit + 1)
        return self._pages.finish_page(
            rows, limit, fingerprint, lambda r: {"at": r.started_at, "id": r.id})

    # -- decisions --------------------------------------------------------------------------

    def record_decision(
        self, namespace: str, decision: str, reasoning: Any = ABSENT, *, cycle_id: int = 0
    ) -> DecisionRow:
        """Record a decision and its reasoning. Raises InvalidArgument, NotFound (cycle)."""
        if not decision.strip():
            raise InvalidArgument("decision", "is required")
        if len(decision.encode()) > MAX_TEXT_BYTES:
            raise InvalidArgument("decision", f"is longer than {MAX_TEXT_BYTES} bytes")
        payload = json_value(reasoning, "reasoning", MAX_JSON_BYTES)
        with self._db.write() as txn:
            self._check_cycle(txn, namespace, cycle_id)
            return self._store.record_decision(txn, {
                "namespace": namespace, "cycle_id": cycle_id or None, "reasoning": payload,
                "decision": decision, "now": now_us()})

    def list_decisions(
        self, namespace: str, *, cycle_id: int = 0, size: int = 0, token: str = ""
    ) -> tuple[list[DecisionRow], str]:
        """Return one page of decisions oldest first, and the next page's token."""
        limit = page_size(size)
        fingerprint = filter_fingerprint(namespace, {"cycle_id": cycle_id})
        after = self._pages.decode_cursor(token, fingerprint)[1] if token else 0
        rows = self._store.page_decisions(namespace, cycle_id or None, after, limit + 1)
        return self._pages.finish_page(rows, limit, fingerprint, lambda r: {"at": 0, "id": r.id})

    def _check_cycle(self, txn: WriteTxn, namespace: str, cycle_id: int) -> None:
        if cycle_id < 0:
            raise InvalidArgument("cycle_id", "must not be negative")
        if cycle_id and self._store.cycle(namespace, cycle_id, txn) is None:
            raise not_found("planning cycle", namespace, cycle_id)


def _finished(what: str, namespace: str, item_id: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"{what} {item_id} in namespace {namespace!r} is already finished; nothing was written",
        reason="ALREADY_FINISHED", id=str(item_id),
    )
