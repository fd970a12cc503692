"""The asyncio client: the one hand-written description of every public method.

client.py (the synchronous Client) is generated from this file by client/generate_sync.py
(``make lint`` fails when it is out of date): edit this file, then run the script.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc
from google.protobuf.message import Message as ProtoMessage

from jarvis.memory.v1 import (
    admin_pb2,
    audit_pb2,
    collection_pb2,
    event_pb2,
    memory_pb2,
    preference_pb2,
    session_pb2,
    snapshot_pb2,
    state_pb2,
    watch_pb2,
)
from jarvis_memory import _api as api
from jarvis_memory import _values as check
from jarvis_memory.errors import from_rpc_error
from jarvis_memory.types import (
    BackupResult,
    Category,
    Change,
    ChangeKind,
    Collection,
    Context,
    ContextSectionName,
    Decision,
    EndTrigger,
    Event,
    EventHit,
    EventSourceName,
    EventType,
    ForgetReport,
    Memory,
    MemoryHit,
    MemorySourceArg,
    MemoryVersion,
    Message,
    MessageHit,
    Page,
    PlanningCycle,
    Preference,
    Role,
    RunStatus,
    SearchMode,
    Session,
    SessionEvent,
    SessionOrder,
    SessionStateName,
    Severity,
    Snapshot,
    StateEntry,
    Stats,
    ToolCall,
)

R = TypeVar("R")
T = TypeVar("T")


class AsyncClient(api.ClientBase):
    """An asyncio connection to a jarvis-memory daemon; use it inside a running event loop.

    The arguments are ClientBase's.
    """

    def _open_channel(
        self, target: str, options: list[tuple[str, Any]], credentials: Any
    ) -> Any:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(self, rpc: api.Rpc[R], request: ProtoMessage) -> R:
        """Call a unary RPC within the client's timeout, retrying it if the table allows."""
        method = self._method(rpc)
        deadline = time.monotonic() + self.timeout
        attempt = 1
        while True:
            try:
                remaining = max(0.0, deadline - time.monotonic())
                response = await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            else:
                return rpc.convert(response)
            pause = self._retry_pause(rpc, error, attempt, deadline)
            if pause is None:
                raise error
            await asyncio.sleep(pause)
            attempt += 1

    async def _walk(self, rpc: api.Rpc[Page[T]], request: Any) -> AsyncIterator[T]:
        """Every item of every page of a List call, from the request's first page on."""
        while True:
            page = await self._unary(rpc, request)
            for item in page:
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # -- memories ---------------------------------------------------------------------------

    async def add_memory(
        self, content: str, *, category: Category | None = None,
        source: MemorySourceArg | None = None, namespace: str | None = None,
        **fields: Unpack[api.MemoryFields],
    ) -> Memory:
        """Store a memory, or return the existing one with the same normalised content.

        ``category`` and ``source`` are required (None is InvalidArgument, as is any argument
        of the wrong type, before anything is sent); source "jarvis_inferred" means
        "agent_inferred". The result's ``deduplicated`` is True when the memory already
        existed (and its ``restated_count`` grew: an add is not retried). Raises
        InvalidArgument for empty or oversized content, unknown categories or sources,
        attributes that are not a JSON object.

        ``supersedes`` lists ids of current memories this one replaces, in the same write:
        they get ``superseded_by`` and a ``valid_to`` of now (NotFound for an unknown id,
        FailedPrecondition for one already superseded). ``valid_from`` and ``valid_to`` say
        when the fact holds in the world. ``ttl`` (a timedelta) or ``expires_at`` (not both)
        make the memory expire: it then reads as absent and the daemon purges it. Restating
        existing content sets the lifecycle fields given and makes it current again.
        """
        request = api.add_memory_request(self._ns(namespace), content, category, source, fields)
        return await self._unary(api.ADD_MEMORY, request)

    async def add_memories(
        self, memories: Sequence[memory_pb2.NewMemory | Mapping[str, Any]], *,
        namespace: str | None = None,
    ) -> list[Memory]:
        """Add up to 1000 memories in one transaction (dicts take add_memory's arguments).

        Returns one Memory per input, in order. Raises InvalidArgument naming the bad item.
        """
        request = api.add_memories_request(self._ns(namespace), memories)
        return await self._unary(api.ADD_MEMORIES, request)

    async def get_memory(self, memory_id: int, *, namespace: str | None = None) -> Memory:
        """Return a memory by id. Raises NotFound."""
        request = memory_pb2.GetMemoryRequest(
            namespace=self._ns(namespace), id=check.integer(memory_id, "memory_id"))
        return await self._unary(api.GET_MEMORY, request)

    async def list_memories(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None,
        **filters: Unpack[api.MemoryFilters],
    ) -> Page[Memory]:
        """Return one page of memories, newest first; ``.next_page_token`` fetches the next.

        Only current memories come back (neither superseded nor outside their validity)
        unless ``include_superseded``; ``as_of`` returns those known and valid at that time
        (as they are now: get_memory_history has their earlier versions). Expired memories
        never come back.
        """
        request = api.list_memories_request(self._ns(namespace), page_size, page_token, filters)
        return await self._unary(api.LIST_MEMORIES, request)

    def iter_memories(
        self, *, page_size: int = 0, namespace: str | None = None,
        **filters: Unpack[api.MemoryFilters],
    ) -> AsyncIterator[Memory]:
        """Iterate over every matching memory, newest first, fetching pages as needed."""
        request = api.list_memories_request(self._ns(namespace), page_size, "", filters)
        return self._walk(api.LIST_MEMORIES, request)

    async def update_memory(
        self, memory_id: int, *, namespace: str | None = None, **changes: Unpack[api.MemoryChanges]
    ) -> Memory:
        """Change the given fields of a memory and return it. Raises NotFound, AlreadyExists.

        ``valid_from``, ``valid_to``, ``expires_at`` or ``ttl`` given as None clear it;
        ``supersedes`` (alone or with other changes) makes this memory replace those ids, as
        in add_memory.
        """
        request = api.update_memory_request(self._ns(namespace), memory_id, changes)
        return await self._unary(api.UPDATE_MEMORY, request)

    async def delete_memory(self, memory_id: int, *, namespace: str | None = None) -> None:
        """Delete a memory. Raises NotFound."""
        request = memory_pb2.DeleteMemoryRequest(
            namespace=self._ns(namespace), id=check.integer(memory_id, "memory_id"))
        await self._unary(api.DELETE_MEMORY, request)

    async def get_memory_history(
        self, memory_id: int, *, namespace: str | None = None
    ) -> list[MemoryVersion]:
        """Return every version of a memory, oldest first, with the change that made each.

        The versions of an expired memory stay readable; those of a deleted or forgotten one
        do not (NotFound).
        """
        request = api.memory_history_request(self._ns(namespace), memory_id, 0, "")
        versions: list[MemoryVersion] = []
        async for version in self._walk(api.GET_MEMORY_HISTORY, request):
            versions.append(version)
        return versions

    async def forget_memories(
        self, *, ids: Sequence[int] | None = None, category: Category | None = None,
        source: MemorySourceArg | None = None, subject: str | None = None,
        stale: bool | None = None, created_after: datetime | None = None,
        created_before: datetime | None = None, dry_run: bool = False,
        namespace: str | None = None,
    ) -> ForgetReport:
        """Erase for good every memory matching all the filters given, superseded or not.

        At least one filter is required (InvalidArgument otherwise, before anything is sent).
        The memories go with their embeddings, search entries, history and earlier changes;
        each is one delete in the change feed. With ``dry_run`` nothing changes and the
        report says what would go. Not retried (a write).
        """
        request = api.forget_memories_request(
            self._ns(namespace), ids, category, source, subject, stale, created_after,
            created_before, dry_run)
        response = await self._unary(api.FORGET_MEMORIES, request)
        return api.to_forget_report(response, request.dry_run)

    # -- sessions ---------------------------------------------------------------------------

    async def start_session(
        self, id: str | None = None, *, metadata: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> Session:
        """Start a session with this id (a new one when None) and log its session_start.

        Raises AlreadyExists when the id is taken, InvalidArgument for a malformed one.
        """
        request = api.start_session_request(self._ns(namespace), id, metadata)
        return await self._unary(api.START_SESSION, request)

    async def end_session(
        self, session_id: str, *, trigger: EndTrigger = "explicit", summary: str = "",
        namespace: str | None = None,
    ) -> Session:
        """End a session ("explicit", "client_closed" or "timeout"); logs session_end.

        Raises NotFound, FailedPrecondition when it has already ended.
        """
        request = session_pb2.EndSessionRequest(
            namespace=self._ns(namespace), session_id=check.text(session_id, "session_id"),
            trigger=api.trigger_value(trigger), summary=check.text(summary, "summary"),
        )
        return await self._unary(api.END_SESSION, request)

    async def get_session(self, session_id: str, *, namespace: str | None = None) -> Session:
        """Return a session. Raises NotFound."""
        request = session_pb2.GetSessionRequest(
            namespace=self._ns(namespace), session_id=check.text(session_id, "session_id"))
        return await self._unary(api.GET_SESSION, request)

    async def list_sessions(
        self, *, state: SessionStateName | None = None, order_by: SessionOrder | None = None,
        page_size: int = 0, page_token: str = "", namespace: str | None = None,
    ) -> Page[Session]:
        """Return one page of sessions, newest first.

        ``order_by`` is "start_time" (the default) or "last_activity"; ``state`` keeps only
        "active" or "ended" sessions.
        """
        request = api.list_sessions_request(
            self._ns(namespace), page_size, page_token, state, order_by)
        return await self._unary(api.LIST_SESSIONS, request)

    def iter_sessions(
        self, *, state: SessionStateName | None = None, order_by: SessionOrder | None = None,
        page_size: int = 0, namespace: str | None = None,
    ) -> AsyncIterator[Session]:
        """Iterate over every matching session (see list_sessions), fetching pages as needed."""
        request = api.list_sessions_request(self._ns(namespace), page_size, "", state, order_by)
        return self._walk(api.LIST_SESSIONS, request)

    async def log_session_event(
        self, session_id: str, event_type: str, data: Mapping[str, Any] | None = None, *,
        namespace: str | None = None,
    ) -> SessionEvent:
        """Log an event of an active session. Raises NotFound, FailedPrecondition."""
        request = api.log_session_event_request(self._ns(namespace), session_id, event_type, data)
        return await self._unary(api.LOG_SESSION_EVENT, request)

    async def list_session_events(
        self, session_id: str | None = None, *, day: str | date | None = None,
        page_size: int = 0, page_token: str = "", namespace: str | None = None,
    ) -> Page[SessionEvent]:
        """Return one page of events, oldest first: of one session, or of one UTC ``day``."""
        request = api.list_session_events_request(
            self._ns(namespace), session_id, day, page_size, page_token)
        return await self._unary(api.LIST_SESSION_EVENTS, request)

    def iter_session_events(
        self, session_id: str | None = None, *, day: str | date | None = None,
        page_size: int = 0, namespace: str | None = None,
    ) -> AsyncIterator[SessionEvent]:
        """Iterate over every event of a session or a UTC ``day``, oldest first."""
        request = api.list_session_events_request(
            self._ns(namespace), session_id, day, page_size, "")
        return self._walk(api.LIST_SESSION_EVENTS, request)

    async def append_message(
        self, session_id: str, *, role: Role, content: str, namespace: str | None = None,
        **fields: Unpack[api.MessageFields],
    ) -> Message:
        """Append a message ("user", "assistant", "system" or "tool") to an active session.

        Raises NotFound, FailedPrecondition when the session has ended, InvalidArgument.
        """
        request = api.append_message_request(self._ns(namespace), session_id, role, content, fields)
        return await self._unary(api.APPEND_MESSAGE, request)

    async def list_messages(
        self, session_id: str, *, page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Message]:
        """Return one page of a session's messages, oldest first."""
        request = api.list_messages_request(self._ns(namespace), session_id, page_size,
                                            page_token)
        return await self._unary(api.LIST_MESSAGES, request)

    def iter_messages(
        self, session_id: str, *, page_size: int = 0, namespace: str | None = None,
    ) -> AsyncIterator[Message]:
        """Iterate over every message of a session, oldest first."""
        request = api.list_messages_request(self._ns(namespace), session_id, page_size, "")
        return self._walk(api.LIST_MESSAGES, request)

    # -- events -----------------------------------------------------------------------------

    async def record_event(
        self, *, type: EventType, severity: Severity, source: EventSourceName, summary: str,
        namespace: str | None = None, **fields: Unpack[api.EventFields],
    ) -> Event:
        """Record an event. Raises InvalidArgument.

        ``type`` is "alert", "action", "status" or "metric"; ``severity`` "info", "warning",
        "error" or "critical"; ``source`` "monitor", "user", "agent" or "system".
        """
        request = api.record_event_request(self._ns(namespace), type, severity, source, summary,
                                           fields)
        return await self._unary(api.RECORD_EVENT, request)

    async def get_event(self, event_id: int, *, namespace: str | None = None) -> Event:
        """Return an event. Raises NotFound."""
        request = event_pb2.GetEventRequest(
            namespace=self._ns(namespace), id=check.integer(event_id, "event_id"))
        return await self._unary(api.GET_EVENT, request)

    async def list_events(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None,
        **filters: Unpack[api.EventFilters],
    ) -> Page[Event]:
        """Return one page of events, newest first (``unresolved=True``: open problems)."""
        request = api.list_events_request(self._ns(namespace), page_size, page_token, filters)
        return await self._unary(api.LIST_EVENTS, request)

    def iter_events(
        self, *, page_size: int = 0, namespace: str | None = None,
        **filters: Unpack[api.EventFilters],
    ) -> AsyncIterator[Event]:
        """Iterate over every matching event, newest first (the filters are list_events')."""
        request = api.list_events_request(self._ns(namespace), page_size, "", filters)
        return self._walk(api.LIST_EVENTS, request)

    async def resolve_event(
        self, event_id: int, *, resolved_by: str, namespace: str | None = None
    ) -> Event:
        """Mark an event resolved. Raises NotFound, FailedPrecondition if already resolved."""
        request = event_pb2.ResolveEventRequest(
            namespace=self._ns(namespace), id=check.integer(event_id, "event_id"),
            resolved_by=check.text(resolved_by, "resolved_by"),
        )
        return await self._unary(api.RESOLVE_EVENT, request)

    # -- search -----------------------------------------------------------------------------

    async def search_memories(
        self, query: str = "", *, limit: int = 10, mode: SearchMode = "keyword",
        embedding: Sequence[float] | None = None, recency_weight: float = 0.0,
        namespace: str | None = None, **filters: Unpack[api.MemoryFilters],
    ) -> list[MemoryHit]:
        """Return the memories most relevant to ``query``, best first (at most 100).

        ``mode`` is "keyword" (BM25 over the words of ``query``), "vector" (cosine similarity
        to ``embedding``) or "hybrid" (both, fused by reciprocal rank). ``recency_weight``
        (0 to 1) blends how recently each memory was recorded or restated into the order.
        The filters are list_memories'. Any text is a valid query. Raises InvalidArgument for
        a missing query or embedding, or an embedding whose dimension differs from the
        namespace's.
        """
        request = api.search_memories_request(
            self._ns(namespace), query, limit, mode, embedding, filters, recency_weight)
        return await self._unary(api.SEARCH_MEMORIES, request)

    async def search_messages(
        self, query: str = "", *, session_id: str | None = None, limit: int = 10,
        mode: SearchMode = "keyword", embedding: Sequence[float] | None = None,
        namespace: str | None = None, **filters: Unpack[api.MessageSearchFilters],
    ) -> list[MessageHit]:
        """Return the messages most relevant to ``query``, in one session or all (None).

        As search_memories; the filters are ``role``, ``created_after``, ``created_before``.
        """
        request = api.search_messages_request(
            self._ns(namespace), query, limit, mode, embedding, session_id, filters)
        return await self._unary(api.SEARCH_MESSAGES, request)

    async def search_events(
        self, query: str, *, limit: int = 10, namespace: str | None = None,
        **filters: Unpack[api.EventFilters],
    ) -> list[EventHit]:
        """Return the events whose summary or details best match ``query`` (keyword ranking).

        The filters are list_events'.
        """
        request = api.search_events_request(self._ns(namespace), query, limit, filters)
        return await self._unary(api.SEARCH_EVENTS, request)

    # -- snapshots --------------------------------------------------------------------------

    async def save_snapshot(
        self, data: Mapping[str, Any], *, kind: str = "cluster", namespace: str | None = None
    ) -> Snapshot:
        """Save a JSON object as the newest snapshot of its kind."""
        request = api.save_snapshot_request(self._ns(namespace), data, kind)
        return await self._unary(api.SAVE_SNAPSHOT, request)

    async def get_latest_snapshot(
        self, kind: str = "cluster", *, namespace: str | None = None
    ) -> Snapshot:
        """Return the newest snapshot of a kind. Raises NotFound when there is none."""
        request = snapshot_pb2.GetLatestSnapshotRequest(
            namespace=self._ns(namespace), kind=check.text(kind, "kind"))
        return await self._unary(api.GET_LATEST_SNAPSHOT, request)

    async def list_snapshots(
        self, kind: str = "cluster", *, since: datetime | None = None, page_size: int = 0,
        page_token: str = "", namespace: str | None = None,
    ) -> Page[Snapshot]:
        """Return one page of a kind's snapshots, newest first, taken at or after ``since``."""
        request = api.list_snapshots_request(self._ns(namespace), kind, since, page_size,
                                             page_token)
        return await self._unary(api.LIST_SNAPSHOTS, request)

    def iter_snapshots(
        self, kind: str = "cluster", *, since: datetime | None = None, page_size: int = 0,
        namespace: str | None = None,
    ) -> AsyncIterator[Snapshot]:
        """Iterate over every snapshot of a kind taken at or after ``since``, newest first."""
        request = api.list_snapshots_request(self._ns(namespace), kind, since, page_size, "")
        return self._walk(api.LIST_SNAPSHOTS, request)

    # -- preferences ------------------------------------------------------------------------

    async def set_preference(
        self, key: str, value: Any, *, namespace: str | None = None
    ) -> Preference:
        """Create or replace a preference (any JSON value)."""
        request = api.set_preference_request(self._ns(namespace), key, value)
        return await self._unary(api.SET_PREFERENCE, request)

    async def get_preference(self, key: str, *, namespace: str | None = None) -> Preference:
        """Return a preference. Raises NotFound for an unknown key."""
        request = preference_pb2.GetPreferenceRequest(
            namespace=self._ns(namespace), key=check.text(key, "key"))
        return await self._unary(api.GET_PREFERENCE, request)

    async def list_preferences(
        self, *, prefix: str = "", page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Preference]:
        """Return one page of preferences in key order, optionally under a key prefix."""
        request = api.list_preferences_request(self._ns(namespace), prefix, page_size,
                                               page_token)
        return await self._unary(api.LIST_PREFERENCES, request)

    def iter_preferences(
        self, *, prefix: str = "", page_size: int = 0, namespace: str | None = None,
    ) -> AsyncIterator[Preference]:
        """Iterate over every preference under a key prefix, in key order."""
        request = api.list_preferences_request(self._ns(namespace), prefix, page_size, "")
        return self._walk(api.LIST_PREFERENCES, request)

    async def delete_preference(self, key: str, *, namespace: str | None = None) -> None:
        """Delete a preference. Raises NotFound for an unknown key."""
        request = preference_pb2.DeletePreferenceRequest(
            namespace=self._ns(namespace), key=check.text(key, "key"))
        await self._unary(api.DELETE_PREFERENCE, request)

    # -- agent state ------------------------------------------------------------------------

    async def get_state(self, key: str, *, namespace: str | None = None) -> StateEntry:
        """Return a state entry. Raises NotFound (also once it expired)."""
        request = state_pb2.GetStateRequest(
            namespace=self._ns(namespace), key=check.text(key, "key"))
        return await self._unary(api.GET_STATE, request)

    async def put_state(
        self, key: str, value: Any, *, expected_version: int | None = None,
        ttl: float | timedelta | None = None, namespace: str | None = None,
    ) -> StateEntry:
        """Create or replace a state entry (any JSON value); returns it with its new version.

        With ``expected_version`` (0: must not exist) it only happens at that version, else
        Aborted: re-read and retry. ``ttl`` (seconds) makes the entry expire.
        """
        request = api.put_state_request(self._ns(namespace), key, value, expected_version, ttl)
        return await self._unary(api.PUT_STATE, request)

    async def delete_state(
        self, key: str, *, expected_version: int | None = None, namespace: str | None = None
    ) -> None:
        """Delete a state entry (at ``expected_version`` if given, else Aborted)."""
        request = api.delete_state_request(self._ns(namespace), key, expected_version)
        await self._unary(api.DELETE_STATE, request)

    async def list_state(
        self, *, prefix: str = "", page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[StateEntry]:
        """Return one page of state entries in key order, optionally under a key prefix."""
        request = api.list_state_request(self._ns(namespace), prefix, page_size, page_token)
        return await self._unary(api.LIST_STATE, request)

    def iter_state(
        self, *, prefix: str = "", page_size: int = 0, namespace: str | None = None,
    ) -> AsyncIterator[StateEntry]:
        """Iterate over every state entry under a key prefix, in key order."""
        request = api.list_state_request(self._ns(namespace), prefix, page_size, "")
        return self._walk(api.LIST_STATE, request)

    # -- audit trail ------------------------------------------------------------------------

    async def start_tool_call(
        self, tool: str, *, input: Any = None, session_id: str = "", cycle_id: int = 0,
        namespace: str | None = None,
    ) -> ToolCall:
        """Record that a tool call started; returns it running, with its id."""
        request = api.start_tool_call_request(self._ns(namespace), tool, input, session_id,
                                              cycle_id)
        return await self._unary(api.START_TOOL_CALL, request)

    async def finish_tool_call(
        self, call_id: int, *, status: RunStatus, output: Any = None, error: str = "",
        duration_ms: int = 0, namespace: str | None = None,
    ) -> ToolCall:
        """Record how a tool call ended ("succeeded", "failed", "cancelled").

        Raises NotFound, FailedPrecondition when it already finished (nothing is written).
        """
        request = api.finish_tool_call_request(self._ns(namespace), call_id, status, output,
                                               error, duration_ms)
        return await self._unary(api.FINISH_TOOL_CALL, request)

    async def get_tool_call(self, call_id: int, *, namespace: str | None = None) -> ToolCall:
        """Return a tool call with its completion. Raises NotFound."""
        request = audit_pb2.GetToolCallRequest(
            namespace=self._ns(namespace), id=check.integer(call_id, "call_id"))
        return await self._unary(api.GET_TOOL_CALL, request)

    async def list_tool_calls(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None,
        **filters: Unpack[api.ToolCallFilters],
    ) -> Page[ToolCall]:
        """Return one page of tool calls, newest first, running ones included."""
        request = api.list_tool_calls_request(self._ns(namespace), page_size, page_token, filters)
        return await self._unary(api.LIST_TOOL_CALLS, request)

    def iter_tool_calls(
        self, *, page_size: int = 0, namespace: str | None = None,
        **filters: Unpack[api.ToolCallFilters],
    ) -> AsyncIterator[ToolCall]:
        """Iterate over every matching tool call, newest first."""
        request = api.list_tool_calls_request(self._ns(namespace), page_size, "", filters)
        return self._walk(api.LIST_TOOL_CALLS, request)

    async def start_planning_cycle(
        self, goals: Any = None, *, namespace: str | None = None
    ) -> PlanningCycle:
        """Record that a planning cycle started, with its goals (any JSON value)."""
        request = audit_pb2.StartPlanningCycleRequest(
            namespace=self._ns(namespace), goals_json=check.optional_json(goals, "goals"))
        return await self._unary(api.START_PLANNING_CYCLE, request)

    async def finish_planning_cycle(
        self, cycle_id: int, *, status: RunStatus, outcomes: Any = None,
        namespace: str | None = None,
    ) -> PlanningCycle:
        """Record how a planning cycle ended. Raises NotFound, FailedPrecondition."""
        request = api.finish_planning_cycle_request(self._ns(namespace), cycle_id, status,
                                                    outcomes)
        return await self._unary(api.FINISH_PLANNING_CYCLE, request)

    async def list_planning_cycles(
        self, *, status: RunStatus | None = None, page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[PlanningCycle]:
        """Return one page of planning cycles, newest first."""
        request = api.list_planning_cycles_request(self._ns(namespace), status, page_size,
                                                   page_token)
        return await self._unary(api.LIST_PLANNING_CYCLES, request)

    def iter_planning_cycles(
        self, *, status: RunStatus | None = None, page_size: int = 0,
        namespace: str | None = None,
    ) -> AsyncIterator[PlanningCycle]:
        """Iterate over every planning cycle (of a status, if given), newest first."""
        request = api.list_planning_cycles_request(self._ns(namespace), status, page_size, "")
        return self._walk(api.LIST_PLANNING_CYCLES, request)

    async def record_decision(
        self, decision: str, *, reasoning: Any = None, cycle_id: int = 0,
        namespace: str | None = None,
    ) -> Decision:
        """Record a decision and the reasoning behind it (any JSON value)."""
        request = api.record_decision_request(self._ns(namespace), decision, reasoning, cycle_id)
        return await self._unary(api.RECORD_DECISION, request)

    async def list_decisions(
        self, *, cycle_id: int = 0, page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Decision]:
        """Return one page of decisions, oldest first, of one planning cycle if given."""
        request = api.list_decisions_request(self._ns(namespace), cycle_id, page_size,
                                             page_token)
        return await self._unary(api.LIST_DECISIONS, request)

    def iter_decisions(
        self, *, cycle_id: int = 0, page_size: int = 0, namespace: str | None = None,
    ) -> AsyncIterator[Decision]:
        """Iterate over every decision (of one planning cycle, if given), oldest first."""
        request = api.list_decisions_request(self._ns(namespace), cycle_id, page_size, "")
        return self._walk(api.LIST_DECISIONS, request)

    # -- collections ------------------------------------------------------------------------

    async def create_collection(
        self, name: str, *, fields: Sequence[api.FieldSpec], namespace: str | None = None
    ) -> Collection:
        """Define a collection: fields as ("qty", "integer", {"indexed": True}) or dicts."""
        request = collection_pb2.CreateCollectionRequest(
            namespace=self._ns(namespace), name=check.text(name, "name"),
            fields=api.field_messages(fields),
        )
        return await self._unary(api.CREATE_COLLECTION, request)

    async def get_collection(self, name: str, *, namespace: str | None = None) -> Collection:
        """Return a collection's definition. Raises NotFound."""
        request = collection_pb2.GetCollectionRequest(
            namespace=self._ns(namespace), name=check.text(name, "name"))
        return await self._unary(api.GET_COLLECTION, request)

    async def list_collections(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None
    ) -> Page[Collection]:
        """Return one page of collections, by name."""
        request = collection_pb2.ListCollectionsRequest(
            namespace=self._ns(namespace), page_size=check.int32(page_size, "page_size"),
            page_token=check.text(page_token, "page_token"),
        )
        return await self._unary(api.LIST_COLLECTIONS, request)

    def iter_collections(
        self, *, page_size: int = 0, namespace: str | None = None
    ) -> AsyncIterator[Collection]:
        """Iterate over every collection, by name."""
        request = collection_pb2.ListCollectionsRequest(
            namespace=self._ns(namespace), page_size=check.int32(page_size, "page_size"))
        return self._walk(api.LIST_COLLECTIONS, request)

    async def add_field(
        self, collection: str, field: api.FieldSpec, *, namespace: str | None = None
    ) -> Collection:
        """Add an optional field to a collection."""
        request = collection_pb2.AddFieldRequest(
            namespace=self._ns(namespace), collection=check.text(collection, "collection"),
            field=api.field_message(field),
        )
        return await self._unary(api.ADD_FIELD, request)

    async def drop_collection(self, name: str, *, namespace: str | None = None) -> None:
        """Delete a collection and its rows (admin role)."""
        request = collection_pb2.DropCollectionRequest(
            namespace=self._ns(namespace), name=check.text(name, "name"))
        await self._unary(api.DROP_COLLECTION, request)

    async def insert_rows(
        self, collection: str, rows: Sequence[Mapping[str, Any]], *,
        namespace: str | None = None,
    ) -> list[int]:
        """Insert rows (all or none); returns their ids.

        Values go typed: None, bool, int, float, str, datetime (naive means UTC), and dicts or
        lists for json fields. Raises InvalidArgument naming the row and field of a bad value.
        """
        request = api.insert_rows_request(self._ns(namespace), collection, rows)
        return await self._unary(api.INSERT_ROWS, request)

    async def query_rows(
        self, collection: str, *, where: Sequence[api.FilterSpec] = (),
        order_by: Sequence[str] = (), page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[dict[str, Any]]:
        """Return one page of rows (dicts with their "id") matching every filter.

        For example where=[("symbol", "eq", "ETH")], order_by=["-qty"]. Values come back as
        they went in: timestamps as aware UTC datetimes, json fields parsed.
        """
        request = api.query_rows_request(self._ns(namespace), collection, where, order_by,
                                         page_size, page_token)
        return await self._unary(api.QUERY_ROWS, request)

    def iter_rows(
        self, collection: str, *, where: Sequence[api.FilterSpec] = (),
        order_by: Sequence[str] = (), page_size: int = 0, namespace: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Iterate over every row matching every filter (see query_rows)."""
        request = api.query_rows_request(self._ns(namespace), collection, where, order_by,
                                         page_size, "")
        return self._walk(api.QUERY_ROWS, request)

    async def update_rows(
        self, collection: str, *, set: Mapping[str, Any], where: Sequence[api.FilterSpec] = (),
        namespace: str | None = None,
    ) -> int:
        """Set fields of every matching row; returns how many rows changed."""
        request = api.update_rows_request(self._ns(namespace), collection, set, where)
        return await self._unary(api.UPDATE_ROWS, request)

    async def delete_rows(
        self, collection: str, *, where: Sequence[api.FilterSpec] = (),
        namespace: str | None = None,
    ) -> int:
        """Delete every matching row; returns how many."""
        request = collection_pb2.DeleteRowsRequest(
            namespace=self._ns(namespace), collection=check.text(collection, "collection"),
            filters=api.filter_messages(where),
        )
        return await self._unary(api.DELETE_ROWS, request)

    # -- change feed ------------------------------------------------------------------------

    def watch(
        self, *, kinds: Sequence[ChangeKind] | None = None, start_revision: int = 0,
        namespace: str | None = None,
    ) -> AsyncIterator[Change]:
        """Iterate over committed changes from ``start_revision`` (0: from now), forever.

        Each change's ``resource`` is what the matching get_* returns (None for a delete).
        ``kinds`` keeps only those kinds (unknown ones are InvalidArgument, raised here). A
        dropped connection, or the daemon ending a watcher that fell behind, is resumed from
        the last revision seen plus one (with backoff, up to the retry policy's attempts in a
        row), so the iteration has no gap. Raises OutOfRange when the start was compacted.
        """
        request = api.watch_request(self._ns(namespace), kinds, start_revision)
        return self._watch(request)

    async def _watch(self, request: watch_pb2.WatchRequest) -> AsyncIterator[Change]:
        method = self._method(api.WATCH)
        attempt = 0
        while True:
            stream = method(request, metadata=self._metadata)
            try:
                async for response in stream:
                    for change in api.WATCH.convert(response):
                        request.start_revision, attempt = change.revision + 1, 0
                        yield change
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                attempt += 1
                pause = self._resume_pause(error, attempt)
                if pause is None:
                    raise error from None
                await asyncio.sleep(pause)
            finally:
                stream.cancel()

    # -- context ------------------------------------------------------------------------------

    async def assemble_context(
        self, query: str = "", *, session_id: str | None = None, max_tokens: int | None = None,
        sections: Sequence[ContextSectionName] | None = None,
        state_keys: Sequence[str] | None = None, embedding: Sequence[float] | None = None,
        namespace: str | None = None,
    ) -> Context:
        """Return what the assistant should know now, within ``max_tokens`` (default 1500).

        Sections: the preferences, the current memories that best match ``query`` (hybrid
        when an ``embedding`` is given), ``session_id``'s recent messages, the unresolved
        events and the ``state_keys`` entries; ``sections`` picks some. ``text`` never
        exceeds the budget (tokens estimated as UTF-8 bytes / 4 a line); a tight budget drops
        state first, then events, older messages, weaker memories, preferences last. Raises
        NotFound for an unknown session, InvalidArgument for a budget outside 16-100000.
        """
        request = api.assemble_context_request(
            self._ns(namespace), query, session_id, max_tokens, sections, state_keys, embedding)
        return await self._unary(api.ASSEMBLE_CONTEXT, request)

    # -- administration (admin role, all namespaces) ----------------------------------------

    async def get_stats(self) -> Stats:
        """Return row counts per kind and namespace, file sizes, revision and uptime."""
        return await self._unary(api.GET_STATS, admin_pb2.GetStatsRequest())

    async def backup(
        self, path: str | os.PathLike[str], *, chunk_size: int = 0,
        timeout: float | None = None,
    ) -> BackupResult:
        """Copy the whole database, consistently, into the SQLite file ``path``.

        The stream is written to ``path + ".partial"``, checked (size and SHA-256), made
        durable and renamed to ``path``; on any failure the partial file is deleted and
        nothing is left at ``path``. ``timeout`` bounds the whole copy (None: no limit); it is
        not retried. Returns the file's path, size, SHA-256 and the revision it holds.
        """
        request = admin_pb2.BackupRequest(chunk_size=check.int32(chunk_size, "chunk_size"))
        target = check.path(path, "path")
        if timeout is not None:
            check.number(timeout, "timeout")
        writer = api.BackupWriter(target)
        try:
            stream = self._method(api.BACKUP)(request, timeout=timeout, metadata=self._metadata)
            try:
                async for chunk in stream:
                    writer.write(chunk)
                return writer.finish()
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            finally:
                stream.cancel()
        finally:
            writer.discard()
