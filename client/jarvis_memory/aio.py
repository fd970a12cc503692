"""The asyncio client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc
from google.protobuf.message import Message as ProtoMessage

from jarvis.memory.v1 import (
    audit_pb2,
    collection_pb2,
    event_pb2,
    memory_pb2,
    preference_pb2,
    session_pb2,
    snapshot_pb2,
    state_pb2,
)
from jarvis_memory import _api as api
from jarvis_memory.errors import from_rpc_error
from jarvis_memory.types import (
    Change,
    Collection,
    Decision,
    Event,
    EventHit,
    Memory,
    MemoryHit,
    Message,
    MessageHit,
    Page,
    PlanningCycle,
    Preference,
    Session,
    SessionEvent,
    Snapshot,
    StateEntry,
    ToolCall,
)

R = TypeVar("R")


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

    async def _unary(
        self, rpc: api.Rpc[R], request: ProtoMessage, timeout: float | None = None
    ) -> R:
        method = self._method(rpc)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 1
        while True:
            try:
                remaining = max(0.0, deadline - time.monotonic())
                return rpc.convert(
                    await method(request, timeout=remaining, metadata=self._metadata)
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            pause = self._retry_pause(rpc, error, attempt, deadline)
            if pause is None:
                raise error
            await asyncio.sleep(pause)
            attempt += 1

    # -- memories ---------------------------------------------------------------------------

    async def add_memory(
        self, content: str, *, category: str | int, source: str | int,
        namespace: str | None = None, **fields: Unpack[api.MemoryFields],
    ) -> Memory:
        """Store a memory, or return the existing one with the same normalised content.

        The result's ``deduplicated`` is True when the memory already existed. Raises
        InvalidArgument for empty or oversized content and unknown categories or sources.
        """
        request = api.add_memory_request(self._ns(namespace), content, category, source, fields)
        return await self._unary(api.ADD_MEMORY, request)

    async def add_memories(
        self, memories: list[memory_pb2.NewMemory | Mapping[str, Any]], *,
        namespace: str | None = None,
    ) -> list[Memory]:
        """Add up to 1000 memories in one transaction (dicts take add_memory's arguments).

        Returns one Memory per input, in order. Raises InvalidArgument naming the bad item.
        """
        request = api.add_memories_request(self._ns(namespace), memories)
        return await self._unary(api.ADD_MEMORIES, request)

    async def get_memory(self, memory_id: int, *, namespace: str | None = None) -> Memory:
        """Return a memory by id. Raises NotFound."""
        request = memory_pb2.GetMemoryRequest(namespace=self._ns(namespace), id=memory_id)
        return await self._unary(api.GET_MEMORY, request)

    async def list_memories(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None,
        **filters: Unpack[api.MemoryFilters],
    ) -> Page[Memory]:
        """Return one page of memories, newest first; ``.next_page_token`` fetches the next."""
        request = api.list_memories_request(self._ns(namespace), page_size, page_token, filters)
        return await self._unary(api.LIST_MEMORIES, request)

    async def iter_memories(
        self, *, page_size: int = 0, namespace: str | None = None,
        **filters: Unpack[api.MemoryFilters],
    ) -> AsyncIterator[Memory]:
        """Iterate over every matching memory, newest first, fetching pages as needed."""
        token = ""
        while True:
            page = await self.list_memories(
                page_size=page_size, page_token=token, namespace=namespace, **filters
            )
            for memory in page:
                yield memory
            token = page.next_page_token
            if not token:
                return

    async def update_memory(
        self, memory_id: int, *, namespace: str | None = None, **changes: Unpack[api.MemoryChanges]
    ) -> Memory:
        """Change the given fields of a memory and return it. Raises NotFound, AlreadyExists."""
        request = api.update_memory_request(self._ns(namespace), memory_id, changes)
        return await self._unary(api.UPDATE_MEMORY, request)

    async def delete_memory(self, memory_id: int, *, namespace: str | None = None) -> None:
        """Delete a memory. Raises NotFound."""
        request = memory_pb2.DeleteMemoryRequest(namespace=self._ns(namespace), id=memory_id)
        await self._unary(api.DELETE_MEMORY, request)

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
        self, session_id: str, *, trigger: str | int = "explicit", summary: str = "",
        namespace: str | None = None,
    ) -> Session:
        """End a session ("explicit", "client_closed" or "timeout"); logs session_end.

        Raises NotFound, FailedPrecondition when it has already ended.
        """
        request = session_pb2.EndSessionRequest(
            namespace=self._ns(namespace), session_id=session_id,
            trigger=api.trigger_value(trigger), summary=summary,
        )
        return await self._unary(api.END_SESSION, request)

    async def get_session(self, session_id: str, *, namespace: str | None = None) -> Session:
        """Return a session. Raises NotFound."""
        request = session_pb2.GetSessionRequest(
            namespace=self._ns(namespace), session_id=session_id
        )
        return await self._unary(api.GET_SESSION, request)

    async def list_sessions(
        self, *, state: str | int | None = None, order_by: str | int | None = None,
        page_size: int = 0, page_token: str = "", namespace: str | None = None,
    ) -> Page[Session]:
        """Return one page of sessions, newest first.

        ``order_by`` is "start_time" (the default) or "last_activity"; ``state`` keeps only
        "active" or "ended" sessions.
        """
        request = api.list_sessions_request(
            self._ns(namespace), page_size, page_token, state, order_by
        )
        return await self._unary(api.LIST_SESSIONS, request)

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
            self._ns(namespace), session_id, day, page_size, page_token
        )
        return await self._unary(api.LIST_SESSION_EVENTS, request)

    async def append_message(
        self, session_id: str, *, role: str | int, content: str, namespace: str | None = None,
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
        request = session_pb2.ListMessagesRequest(
            namespace=self._ns(namespace), session_id=session_id, page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(api.LIST_MESSAGES, request)

    # -- events -----------------------------------------------------------------------------

    async def record_event(
        self, *, type: str | int, severity: str | int, source: str | int, summary: str,
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
        request = event_pb2.GetEventRequest(namespace=self._ns(namespace), id=event_id)
        return await self._unary(api.GET_EVENT, request)

    async def list_events(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None,
        **filters: Unpack[api.EventFilters],
    ) -> Page[Event]:
        """Return one page of events, newest first (``unresolved=True``: open problems)."""
        request = api.list_events_request(self._ns(namespace), page_size, page_token, filters)
        return await self._unary(api.LIST_EVENTS, request)

    async def resolve_event(
        self, event_id: int, *, resolved_by: str, namespace: str | None = None
    ) -> Event:
        """Mark an event resolved. Raises NotFound, FailedPrecondition if already resolved."""
        request = event_pb2.ResolveEventRequest(
            namespace=self._ns(namespace), id=event_id, resolved_by=resolved_by
        )
        return await self._unary(api.RESOLVE_EVENT, request)

    # -- search -----------------------------------------------------------------------------

    async def search_memories(
        self, query: str = "", *, limit: int = 10, mode: str | int = "keyword",
        embedding: Sequence[float] | None = None, namespace: str | None = None,
        **filters: Unpack[api.MemoryFilters],
    ) -> list[MemoryHit]:
        """Return the memories most relevant to ``query``, best first (at most 100).

        ``mode`` is "keyword" (BM25 over the words of ``query``), "vector" (cosine similarity
        to ``embedding``) or "hybrid" (both, fused by reciprocal rank). The filters are
        list_memories'. Any text is a valid query. Raises InvalidArgument for a missing query
        or embedding, or an embedding whose dimension differs from the namespace's.
        """
        request = api.search_memories_request(
            self._ns(namespace), query, limit, mode, embedding, filters
        )
        return await self._unary(api.SEARCH_MEMORIES, request)

    async def search_messages(
        self, query: str = "", *, session_id: str | None = None, limit: int = 10,
        mode: str | int = "keyword", embedding: Sequence[float] | None = None,
        namespace: str | None = None, **filters: Unpack[api.MessageSearchFilters],
    ) -> list[MessageHit]:
        """Return the messages most relevant to ``query``, in one session or all (None).

        As search_memories; the filters are ``role``, ``created_after``, ``created_before``.
        """
        request = api.search_messages_request(
            self._ns(namespace), query, limit, mode, embedding, session_id, filters
        )
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
        """Save a JSON document as the newest snapshot of its kind."""
        request = snapshot_pb2.SaveSnapshotRequest(
            namespace=self._ns(namespace), kind=kind, data=api.to_struct(data)
        )
        return await self._unary(api.SAVE_SNAPSHOT, request)

    async def get_latest_snapshot(
        self, kind: str = "cluster", *, namespace: str | None = None
    ) -> Snapshot:
        """Return the newest snapshot of a kind. Raises NotFound when there is none."""
        request = snapshot_pb2.GetLatestSnapshotRequest(namespace=self._ns(namespace), kind=kind)
        return await self._unary(api.GET_LATEST_SNAPSHOT, request)

    async def list_snapshots(
        self, kind: str = "cluster", *, since: datetime | None = None, page_size: int = 0,
        page_token: str = "", namespace: str | None = None,
    ) -> Page[Snapshot]:
        """Return one page of a kind's snapshots, newest first, taken at or after ``since``."""
        request = api.list_snapshots_request(self._ns(namespace), kind, since, page_size,
                                             page_token)
        return await self._unary(api.LIST_SNAPSHOTS, request)

    # -- preferences ------------------------------------------------------------------------

    async def set_preference(
        self, key: str, value: Any, *, namespace: str | None = None
    ) -> Preference:
        """Create or replace a preference (any JSON value)."""
        request = api.set_preference_request(self._ns(namespace), key, value)
        return await self._unary(api.SET_PREFERENCE, request)

    async def get_preference(self, key: str, *, namespace: str | None = None) -> Preference:
        """Return a preference. Raises NotFound for an unknown key."""
        request = preference_pb2.GetPreferenceRequest(namespace=self._ns(namespace), key=key)
        return await self._unary(api.GET_PREFERENCE, request)

    async def list_preferences(
        self, *, prefix: str = "", page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Preference]:
        """Return one page of preferences in key order, optionally under a key prefix."""
        request = preference_pb2.ListPreferencesRequest(
            namespace=self._ns(namespace), key_prefix=prefix, page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(api.LIST_PREFERENCES, request)

    async def delete_preference(self, key: str, *, namespace: str | None = None) -> None:
        """Delete a preference. Raises NotFound for an unknown key."""
        request = preference_pb2.DeletePreferenceRequest(namespace=self._ns(namespace), key=key)
        await self._unary(api.DELETE_PREFERENCE, request)

    # -- agent state ------------------------------------------------------------------------

    async def get_state(self, key: str, *, namespace: str | None = None) -> StateEntry:
        """Return a state entry. Raises NotFound (also once it expired)."""
        request = state_pb2.GetStateRequest(namespace=self._ns(namespace), key=key)
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
        request = state_pb2.DeleteStateRequest(namespace=self._ns(namespace), key=key)
        if expected_version is not None:
            request.expected_version = expected_version
        await self._unary(api.DELETE_STATE, request)

    async def list_state(
        self, *, prefix: str = "", page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[StateEntry]:
        """Return one page of state entries in key order, optionally under a key prefix."""
        request = state_pb2.ListStateRequest(
            namespace=self._ns(namespace), key_prefix=prefix, page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(api.LIST_STATE, request)

    # -- audit trail ------------------------------------------------------------------------

    async def start_tool_call(
        self, tool: str, *, input: Any = None, session_id: str = "", cycle_id: int = 0,
        namespace: str | None = None,
    ) -> ToolCall:
        """Record that a tool call started; returns it running, with its id."""
        request = audit_pb2.StartToolCallRequest(
            namespace=self._ns(namespace), tool=tool, session_id=session_id, cycle_id=cycle_id
        )
        api.set_json(request.input, input)
        return await self._unary(api.START_TOOL_CALL, request)

    async def finish_tool_call(
        self, call_id: int, *, status: str | int, output: Any = None, error: str = "",
        duration_ms: int = 0, namespace: str | None = None,
    ) -> ToolCall:
        """Record how a tool call ended ("succeeded", "failed", "cancelled").

        Raises NotFound, FailedPrecondition when it already finished (nothing is written).
        """
        request = audit_pb2.FinishToolCallRequest(
            namespace=self._ns(namespace), id=call_id, status=api.run_status_value(status),
            error=error, duration_ms=duration_ms,
        )
        api.set_json(request.output, output)
        return await self._unary(api.FINISH_TOOL_CALL, request)

    async def get_tool_call(self, call_id: int, *, namespace: str | None = None) -> ToolCall:
        """Return a tool call with its completion. Raises NotFound."""
        request = audit_pb2.GetToolCallRequest(namespace=self._ns(namespace), id=call_id)
        return await self._unary(api.GET_TOOL_CALL, request)

    async def list_tool_calls(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None,
        **filters: Unpack[api.ToolCallFilters],
    ) -> Page[ToolCall]:
        """Return one page of tool calls, newest first, running ones included."""
        request = api.list_tool_calls_request(self._ns(namespace), page_size, page_token, filters)
        return await self._unary(api.LIST_TOOL_CALLS, request)

    async def start_planning_cycle(
        self, goals: Any = None, *, namespace: str | None = None
    ) -> PlanningCycle:
        """Record that a planning cycle started, with its goals."""
        request = audit_pb2.StartPlanningCycleRequest(namespace=self._ns(namespace))
        api.set_json(request.goals, goals)
        return await self._unary(api.START_PLANNING_CYCLE, request)

    async def finish_planning_cycle(
        self, cycle_id: int, *, status: str | int, outcomes: Any = None,
        namespace: str | None = None,
    ) -> PlanningCycle:
        """Record how a planning cycle ended. Raises NotFound, FailedPrecondition."""
        request = audit_pb2.FinishPlanningCycleRequest(
            namespace=self._ns(namespace), id=cycle_id, status=api.run_status_value(status)
        )
        api.set_json(request.outcomes, outcomes)
        return await self._unary(api.FINISH_PLANNING_CYCLE, request)

    async def list_planning_cycles(
        self, *, status: str | int | None = None, page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[PlanningCycle]:
        """Return one page of planning cycles, newest first."""
        request = audit_pb2.ListPlanningCyclesRequest(
            namespace=self._ns(namespace), page_size=page_size, page_token=page_token,
            status=api.run_status_value(status if status is not None else 0),
        )
        return await self._unary(api.LIST_PLANNING_CYCLES, request)

    async def record_decision(
        self, decision: str, *, reasoning: Any = None, cycle_id: int = 0,
        namespace: str | None = None,
    ) -> Decision:
        """Record a decision and the reasoning behind it."""
        request = audit_pb2.RecordDecisionRequest(
            namespace=self._ns(namespace), decision=decision, cycle_id=cycle_id
        )
        api.set_json(request.reasoning, reasoning)
        return await self._unary(api.RECORD_DECISION, request)

    async def list_decisions(
        self, *, cycle_id: int = 0, page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Decision]:
        """Return one page of decisions, oldest first, of one planning cycle if given."""
        request = audit_pb2.ListDecisionsRequest(
            namespace=self._ns(namespace), cycle_id=cycle_id, page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(api.LIST_DECISIONS, request)

    # -- collections ------------------------------------------------------------------------

    async def create_collection(
        self, name: str, *, fields: Sequence[api.FieldSpec], namespace: str | None = None
    ) -> Collection:
        """Define a collection: fields as ("qty", "integer", {"indexed": True}) or dicts."""
        request = collection_pb2.CreateCollectionRequest(
            namespace=self._ns(namespace), name=name,
            fields=[api.field_message(f) for f in fields],
        )
        return await self._unary(api.CREATE_COLLECTION, request)

    async def get_collection(self, name: str, *, namespace: str | None = None) -> Collection:
        """Return a collection's definition. Raises NotFound."""
        request = collection_pb2.GetCollectionRequest(namespace=self._ns(namespace), name=name)
        return await self._unary(api.GET_COLLECTION, request)

    async def list_collections(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None
    ) -> Page[Collection]:
        """Return one page of collections, by name."""
        request = collection_pb2.ListCollectionsRequest(
            namespace=self._ns(namespace), page_size=page_size, page_token=page_token
        )
        return await self._unary(api.LIST_COLLECTIONS, request)

    async def add_field(
        self, collection: str, field: api.FieldSpec, *, namespace: str | None = None
    ) -> Collection:
        """Add an optional field to a collection."""
        request = collection_pb2.AddFieldRequest(
            namespace=self._ns(namespace), collection=collection, field=api.field_message(field)
        )
        return await self._unary(api.ADD_FIELD, request)

    async def drop_collection(self, name: str, *, namespace: str | None = None) -> None:
        """Delete a collection and its rows (admin role)."""
        request = collection_pb2.DropCollectionRequest(namespace=self._ns(namespace), name=name)
        await self._unary(api.DROP_COLLECTION, request)

    async def insert_rows(
        self, collection: str, rows: Sequence[Mapping[str, Any]], *,
        namespace: str | None = None,
    ) -> list[int]:
        """Insert rows (all or none); returns their ids.

        Raises InvalidArgument naming the row and field of a bad value.
        """
        request = collection_pb2.InsertRowsRequest(
            namespace=self._ns(namespace), collection=collection,
            rows=[api.to_struct(row) for row in rows],
        )
        return await self._unary(api.INSERT_ROWS, request)

    async def query_rows(
        self, collection: str, *, where: Sequence[api.FilterSpec] = (),
        order_by: Sequence[str] = (), page_size: int = 0, page_token: str = "",
        namespace: str | None = None,
    ) -> Page[dict[str, Any]]:
        """Return one page of rows (dicts with their "id") matching every filter.

        For example where=[("symbol", "eq", "ETH")], order_by=["-qty"].
        """
        request = collection_pb2.QueryRowsRequest(
            namespace=self._ns(namespace), collection=collection,
            filters=api.filter_messages(where), order_by=api.order_messages(order_by),
            page_size=page_size, page_token=page_token,
        )
        return await self._unary(api.QUERY_ROWS, request)

    async def update_rows(
        self, collection: str, *, set: Mapping[str, Any], where: Sequence[api.FilterSpec] = (),
        namespace: str | None = None,
    ) -> int:
        """Set fields of every matching row; returns how many rows changed."""
        request = collection_pb2.UpdateRowsRequest(
            namespace=self._ns(namespace), collection=collection,
            filters=api.filter_messages(where), set=api.to_struct(set),
        )
        return await self._unary(api.UPDATE_ROWS, request)

    async def delete_rows(
        self, collection: str, *, where: Sequence[api.FilterSpec] = (),
        namespace: str | None = None,
    ) -> int:
        """Delete every matching row; returns how many."""
        request = collection_pb2.DeleteRowsRequest(
            namespace=self._ns(namespace), collection=collection,
            filters=api.filter_messages(where),
        )
        return await self._unary(api.DELETE_ROWS, request)

    # -- change feed ------------------------------------------------------------------------

    async def watch(
        self, *, kinds: Sequence[str] | None = None, start_revision: int = 0,
        namespace: str | None = None,
    ) -> AsyncIterator[Change]:
        """Iterate over committed changes from ``start_revision`` (0: from now), forever.

        A dropped connection, or the daemon ending a watcher that fell behind, is resumed from
        the last revision seen plus one (with backoff, up to the retry policy's attempts in a
        row), so the iteration has no gap. Raises OutOfRange when the start was compacted.
        """
        start, attempt = start_revision, 0
        while True:
            stream = self._watch_method()(self._watch_request(namespace, kinds, start),
                                          metadata=self._metadata)
            try:
                async for response in stream:
                    for message in response.changes:
                        change = api.to_change(message)
                        start, attempt = change.revision + 1, 0
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
