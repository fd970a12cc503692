"""What the sync and async clients share: the RPC table, request builders, converters.

The clients' methods build their requests with the functions here (which check every
argument first, see _values) and run them through the table at the end of this module; the
results come back through the same converters whether they answer a Get, a List, a search or
a change of the change feed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, Generic, Literal, TypedDict, TypeVar, cast

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.message_factory import GetMessageClass

from jarvis.memory.v1 import (
    admin_pb2,
    audit_pb2,
    collection_pb2,
    context_pb2,
    event_pb2,
    memory_pb2,
    preference_pb2,
    search_pb2,
    session_pb2,
    snapshot_pb2,
    state_pb2,
    watch_pb2,
)
from jarvis_memory import _values as check
from jarvis_memory._retry import RetryPolicy
from jarvis_memory.errors import DataLoss, JarvisMemoryError
from jarvis_memory.types import (
    BackupResult,
    Category,
    Change,
    ChangeKind,
    Collection,
    Context,
    ContextItem,
    ContextSection,
    ContextSectionName,
    Decision,
    Event,
    EventHit,
    EventSourceName,
    EventType,
    Field,
    FieldType,
    FilterOp,
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
    Resource,
    Role,
    RowCount,
    RunStatus,
    Session,
    SessionEvent,
    Severity,
    Snapshot,
    StateEntry,
    Stats,
    ToolCall,
)

R = TypeVar("R")

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0


class ClientBase:
    """A connection to a jarvis-memory daemon: what Client and AsyncClient share.

    ``namespace`` is used by every call that does not name its own ("" means "default").
    ``timeout`` is each call's deadline in seconds, retries included; ``retry`` says how calls
    that are safe to repeat (those the protos mark free of side effects: reads) are retried on
    UNAVAILABLE. ``token`` (an API token or a JWT) is sent on every call as
    ``authorization: Bearer <token>``. TLS is used when ``tls`` is true or any of ``ca_file``
    (the CA to trust instead of the system's), ``cert_file`` and ``key_file`` (a client
    certificate, for mutual TLS) is given. ``options`` are gRPC channel options. Errors are
    raised as jarvis_memory.errors.JarvisMemoryError subclasses; an argument the SDK cannot
    send is InvalidArgument before anything is sent. The raw channel stays reachable as
    ``channel`` for the generated stubs.
    """

    channel: Any

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        namespace: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        check.text(target, "target")
        self.namespace = check.text(namespace, "namespace")
        self.timeout = check.number(timeout, "timeout")
        self.retry = retry or RetryPolicy()
        token = check.optional_text(token, "token")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        credentials = None
        if tls or ca_file or cert_file or key_file:
            if bool(cert_file) != bool(key_file):
                raise check.bad("cert_file" if key_file else "key_file",
                                "a client certificate needs both cert_file and key_file")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file),
                private_key=_read(key_file),
                certificate_chain=_read(cert_file),
            )
        self.channel = self._open_channel(target, list(options), credentials)
        self._methods: dict[str, Any] = {}

    def _open_channel(
        self, target: str, options: list[tuple[str, Any]], credentials: Any
    ) -> Any:
        raise NotImplementedError

    def _method(self, rpc: Rpc[Any]) -> Any:
        """The channel's callable for an RPC (made once per client)."""
        method = self._methods.get(rpc.path)
        if method is None:
            make = self.channel.unary_stream if rpc.streaming else self.channel.unary_unary
            method = self._methods[rpc.path] = make(
                rpc.path,
                request_serializer=rpc.request.SerializeToString,
                response_deserializer=rpc.response.FromString,
            )
        return method

    def _retry_pause(
        self, rpc: Rpc[Any], error: JarvisMemoryError, attempt: int, deadline: float
    ) -> float | None:
        """Seconds to wait before retrying, or None when the error must be raised."""
        if not (rpc.idempotent and error.code == grpc.StatusCode.UNAVAILABLE
                and attempt < self.retry.max_attempts):
            return None
        pause = self.retry.backoff(attempt)
        return None if time.monotonic() + pause >= deadline else pause

    def _resume_pause(self, error: JarvisMemoryError, attempt: int) -> float | None:
        """Seconds to wait before resuming a broken watch, or None to raise the error."""
        resumable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        if error.code not in resumable or attempt >= self.retry.max_attempts:
            return None
        return self.retry.backoff(attempt)

    def _ns(self, namespace: str | None) -> str:
        return self.namespace if namespace is None else check.text(namespace, "namespace")


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(check.path(path, "certificate file"), "rb") as file:
        return file.read()


# -- enums ----------------------------------------------------------------------------------


def _enum(enum: Any, prefix: str, field: str) -> Callable[[object], Any]:
    """Name or number -> enum number, checked (InvalidArgument lists the allowed names)."""
    return lambda value: check.enum_value(enum, prefix, value, field)


def _name(enum: Any, prefix: str) -> Callable[[int], str]:
    """Enum number -> lowercase name."""
    return lambda number: check.enum_name(enum, prefix, number)


category_value = _enum(memory_pb2.MemoryCategory, "MEMORY_CATEGORY_", "category")
trigger_value = _enum(session_pb2.SessionEndTrigger, "SESSION_END_TRIGGER_", "trigger")
role_value = _enum(session_pb2.MessageRole, "MESSAGE_ROLE_", "role")
state_value = _enum(session_pb2.SessionState, "SESSION_STATE_", "state")
order_value = _enum(session_pb2.SessionOrder, "SESSION_ORDER_", "order_by")
event_type_value = _enum(event_pb2.EventType, "EVENT_TYPE_", "type")
severity_value = _enum(event_pb2.EventSeverity, "EVENT_SEVERITY_", "severity")
event_source_value = _enum(event_pb2.EventSource, "EVENT_SOURCE_", "source")
run_status_value = _enum(audit_pb2.RunStatus, "RUN_STATUS_", "status")
mode_value = _enum(search_pb2.SearchMode, "SEARCH_MODE_", "mode")

# Source names accepted besides the proto's (upper-case, as enum_value compares them).
_SOURCE_ALIASES = {"JARVIS_INFERRED": "agent_inferred"}


def source_value(value: object, field: str = "source") -> Any:
    """Memory source name or number -> enum number; "jarvis_inferred" means "agent_inferred"."""
    if isinstance(value, str):
        value = _SOURCE_ALIASES.get(value.upper().removeprefix("MEMORY_SOURCE_"), value)
    return check.enum_value(memory_pb2.MemorySource, "MEMORY_SOURCE_", value, field)


_category = _name(memory_pb2.MemoryCategory, "MEMORY_CATEGORY_")
_source = _name(memory_pb2.MemorySource, "MEMORY_SOURCE_")
_session_state = _name(session_pb2.SessionState, "SESSION_STATE_")
_trigger = _name(session_pb2.SessionEndTrigger, "SESSION_END_TRIGGER_")
_role = _name(session_pb2.MessageRole, "MESSAGE_ROLE_")
_event_type = _name(event_pb2.EventType, "EVENT_TYPE_")
_severity = _name(event_pb2.EventSeverity, "EVENT_SEVERITY_")
_event_source = _name(event_pb2.EventSource, "EVENT_SOURCE_")
_run_status = _name(audit_pb2.RunStatus, "RUN_STATUS_")
_field_type = _name(collection_pb2.FieldType, "FIELD_TYPE_")
_memory_operation = _name(memory_pb2.MemoryOperation, "MEMORY_OPERATION_")


def _optional_time(message: Any, field: str) -> datetime | None:
    return check.to_datetime(getattr(message, field)) if message.HasField(field) else None


def _duration(value: object, field: str) -> Duration:
    """A timedelta (or seconds) -> Duration."""
    duration = Duration()
    try:
        duration.FromTimedelta(check.seconds(value, field))
    except (ValueError, OverflowError):
        raise check.bad(field, f"{value} is out of range") from None
    return duration


def _ids(value: object, field: str) -> list[int]:
    """None or a sequence of ids (integers)."""
    if value is None:
        return []
    return [check.integer(item, f"{field}[{i}]")
            for i, item in enumerate(check.sequence(value, field))]


# -- memories -------------------------------------------------------------------------------


def to_memory(message: memory_pb2.Memory, deduplicated: bool = False) -> Memory:
    """Memory message -> Memory."""
    return Memory(
        id=message.id,
        namespace=message.namespace,
        content=message.content,
        content_hash=message.content_hash,
        category=_category(message.category),
        source=_source(message.source),
        subject=message.subject,
        attributes=check.json_field(message, "attributes"),
        stale=message.stale,
        created_at=check.to_datetime(message.created_at),
        updated_at=check.to_datetime(message.updated_at),
        last_accessed_at=_optional_time(message, "last_accessed_at"),
        restated_count=message.restated_count,
        revision=message.revision,
        superseded_by=message.superseded_by or None,
        superseded_at=_optional_time(message, "superseded_at"),
        supersedes=list(message.supersedes),
        valid_from=_optional_time(message, "valid_from"),
        valid_to=_optional_time(message, "valid_to"),
        expires_at=_optional_time(message, "expires_at"),
        deduplicated=deduplicated,
    )


def to_memory_version(message: memory_pb2.MemoryVersion) -> MemoryVersion:
    """MemoryVersion message -> MemoryVersion."""
    return MemoryVersion(
        memory=to_memory(message.memory),
        revision=message.revision,
        time=check.to_datetime(message.time),
        operation=_memory_operation(message.operation),
        changed_fields=list(message.changed_fields),
        credential=message.credential or None,
    )


class MemoryFields(TypedDict, total=False):
    """Optional fields of a new memory."""

    subject: str
    attributes: Mapping[str, Any] | None
    embedding: Sequence[float] | None  # computed by the caller, for vector search
    supersedes: Sequence[int]  # ids of current memories this one replaces
    valid_from: datetime | None  # when the fact began to hold in the world
    valid_to: datetime | None  # when it stops holding
    ttl: timedelta | None  # expire this long after the write (not with expires_at)
    expires_at: datetime | None  # expire then (not with ttl)


class MemoryFilters(TypedDict, total=False):
    """Filters of list_memories / iter_memories / search_memories (combined with AND)."""

    category: Category | None
    source: MemorySourceArg | None
    subject: str | None
    stale: bool | None
    created_after: datetime | None
    created_before: datetime | None
    include_superseded: bool  # also superseded memories and those not valid now
    as_of: datetime | None  # the memories as known and valid at that time


class MemoryChanges(TypedDict, total=False):
    """Fields update_memory may change; only those given are sent in the field mask."""

    content: str
    category: Category
    source: MemorySourceArg
    subject: str
    attributes: Mapping[str, Any] | None  # None removes them
    stale: bool
    embedding: Sequence[float] | None  # None or [] removes it
    valid_from: datetime | None  # None clears it, as for the three below
    valid_to: datetime | None
    expires_at: datetime | None
    ttl: timedelta | None  # expire this long after the update
    supersedes: Sequence[int]  # not a field: ids this memory replaces (may come alone)


def _keys(typed_dict: type[Any]) -> list[str]:
    return list(typed_dict.__annotations__)


# The lifecycle fields of a memory that are timestamps (in NewMemory, AddMemoryRequest and
# Memory alike), and all its lifecycle message fields.
_TIMES: tuple[Literal["valid_from", "valid_to", "expires_at"], ...] = (
    "valid_from", "valid_to", "expires_at")
_LIFECYCLE: tuple[Literal["valid_from", "valid_to", "expires_at", "ttl"], ...] = (*_TIMES, "ttl")


def new_memory(
    content: object, category: object, source: object, fields: Mapping[str, Any],
    where: str = "",
) -> memory_pb2.NewMemory:
    """Build the NewMemory of an add call (``where`` prefixes argument names in errors)."""
    check.known_keys(fields, ["content", "category", "source", *_keys(MemoryFields)],
                     "add_memory", where)
    memory = memory_pb2.NewMemory(
        content=check.text(content, where + "content"),
        category=check.enum_value(memory_pb2.MemoryCategory, "MEMORY_CATEGORY_", category,
                                  where + "category"),
        source=source_value(source, where + "source"),
        subject=check.text(fields.get("subject", ""), where + "subject"),
        attributes_json=check.optional_json(fields.get("attributes"), where + "attributes",
                                            object_only=True),
        embedding=check.floats(fields.get("embedding"), where + "embedding"),
        supersedes=_ids(fields.get("supersedes"), where + "supersedes"),
    )
    for name in _TIMES:
        if (value := fields.get(name)) is not None:
            getattr(memory, name).CopyFrom(check.timestamp(value, where + name))
    if (ttl := fields.get("ttl")) is not None:
        memory.ttl.CopyFrom(_duration(ttl, where + "ttl"))
    return memory



def add_memory_request(
    namespace: str, content: object, category: object, source: object, fields: MemoryFields
) -> memory_pb2.AddMemoryRequest:
    """Build an AddMemoryRequest."""
    m = new_memory(content, category, source, fields)
    request = memory_pb2.AddMemoryRequest(
        namespace=namespace, content=m.content, category=m.category, source=m.source,
        subject=m.subject, attributes_json=m.attributes_json, embedding=m.embedding,
        supersedes=m.supersedes,
    )
    for name in _LIFECYCLE:
        if m.HasField(name):
            getattr(request, name).CopyFrom(getattr(m, name))
    return request


def add_memories_request(
    namespace: str, memories: Sequence[memory_pb2.NewMemory | Mapping[str, Any]]
) -> memory_pb2.AddMemoriesRequest:
    """Build an AddMemoriesRequest from NewMemory messages or dicts with add_memory's arguments."""
    batch = []
    for i, item in enumerate(check.sequence(memories, "memories")):
        where = f"memories[{i}]"
        if isinstance(item, memory_pb2.NewMemory):
            batch.append(item)
            continue
        item = dict(check.mapping(item, where))
        for required in ("content", "category", "source"):
            if required not in item:
                raise check.bad(f"{where}.{required}", "is required")
        batch.append(new_memory(item.pop("content"), item.pop("category"), item.pop("source"),
                                item, where + "."))
    return memory_pb2.AddMemoriesRequest(namespace=namespace, memories=batch)


def _page(
    request_type: Callable[..., R], namespace: str, page_size: object, page_token: object
) -> R:
    """A List request with its namespace and checked page arguments."""
    return request_type(namespace=namespace, page_size=check.int32(page_size, "page_size"),
                        page_token=check.text(page_token, "page_token"))


def list_memories_request(
    namespace: str, page_size: object, page_token: object, filters: MemoryFilters
) -> memory_pb2.ListMemoriesRequest:
    """Build a ListMemoriesRequest."""
    request = _page(memory_pb2.ListMemoriesRequest, namespace, page_size, page_token)
    return _memory_filters(request, filters, "list_memories")


MemoryFilterRequest = TypeVar(
    "MemoryFilterRequest", memory_pb2.ListMemoriesRequest, memory_pb2.SearchMemoriesRequest
)


def _memory_filters(
    request: MemoryFilterRequest, filters: Mapping[str, Any], what: str
) -> MemoryFilterRequest:
    """Set the filter fields that ListMemories and SearchMemories share."""
    check.known_keys(filters, _keys(MemoryFilters), what)
    if (category := filters.get("category")) is not None:
        request.category = category_value(category)
    if (source := filters.get("source")) is not None:
        request.source = source_value(source)
    if (subject := filters.get("subject")) is not None:
        request.subject = check.text(subject, "subject")
    if (stale := filters.get("stale")) is not None:
        request.stale = check.boolean(stale, "stale")
    if (after := filters.get("created_after")) is not None:
        request.created_after.CopyFrom(check.timestamp(after, "created_after"))
    if (before := filters.get("created_before")) is not None:
        request.created_before.CopyFrom(check.timestamp(before, "created_before"))
    if (include := filters.get("include_superseded")) is not None:
        request.include_superseded = check.boolean(include, "include_superseded")
    if (as_of := filters.get("as_of")) is not None:
        request.as_of.CopyFrom(check.timestamp(as_of, "as_of"))
    return request


def update_memory_request(
    namespace: str, memory_id: object, changes: MemoryChanges
) -> memory_pb2.UpdateMemoryRequest:
    """Build an UpdateMemoryRequest whose field mask names exactly the given changes."""
    check.known_keys(changes, _keys(MemoryChanges), "update_memory")
    memory = memory_pb2.Memory(id=check.integer(memory_id, "memory_id"))
    if "content" in changes:
        memory.content = check.text(changes["content"], "content")
    if "category" in changes:
        memory.category = category_value(changes["category"])
    if "source" in changes:
        memory.source = source_value(changes["source"])
    if "subject" in changes:
        memory.subject = check.text(changes["subject"], "subject")
    if "attributes" in changes:
        memory.attributes_json = check.optional_json(changes["attributes"], "attributes",
                                                     object_only=True)
    if "stale" in changes:
        memory.stale = check.boolean(changes["stale"], "stale")
    for name in _TIMES:  # given as None: in the mask, unset, which clears it
        if (value := changes.get(name)) is not None:
            getattr(memory, name).CopyFrom(check.timestamp(value, name))
    request = memory_pb2.UpdateMemoryRequest(
        namespace=namespace, memory=memory,
        update_mask=FieldMask(paths=[path for path in changes if path != "supersedes"]),
        embedding=check.floats(changes.get("embedding"), "embedding"),
        supersedes=_ids(changes.get("supersedes"), "supersedes"),
    )
    if (ttl := changes.get("ttl")) is not None:
        request.ttl.CopyFrom(_duration(ttl, "ttl"))
    return request


def _added(response: memory_pb2.AddMemoryResponse) -> Memory:
    return to_memory(response.memory, response.deduplicated)


def _added_many(response: memory_pb2.AddMemoriesResponse) -> list[Memory]:
    return [to_memory(r.memory, r.deduplicated) for r in response.results]


def _nothing(response: Any) -> None:
    return None


def memory_history_request(
    namespace: str, memory_id: object, page_size: object, page_token: object
) -> memory_pb2.GetMemoryHistoryRequest:
    """Build a GetMemoryHistoryRequest."""
    request = _page(memory_pb2.GetMemoryHistoryRequest, namespace, page_size, page_token)
    request.id = check.integer(memory_id, "memory_id")
    return request


# The optional fields of ForgetMemoriesRequest: set means filtered.
_FORGET_FILTERS: tuple[Literal["subject", "stale", "created_after", "created_before"], ...] = (
    "subject", "stale", "created_after", "created_before")


def forget_memories_request(
    namespace: str, ids: object, category: object, source: object, subject: object,
    stale: object, created_after: object, created_before: object, dry_run: object,
) -> memory_pb2.ForgetMemoriesRequest:
    """Build a ForgetMemoriesRequest; with no filter at all it is InvalidArgument."""
    request = memory_pb2.ForgetMemoriesRequest(
        namespace=namespace, ids=_ids(ids, "ids"), dry_run=check.boolean(dry_run, "dry_run"))
    if category is not None:
        request.category = category_value(category)
    if source is not None:
        request.source = source_value(source)
    if subject is not None:
        request.subject = check.text(subject, "subject")
    if stale is not None:
        request.stale = check.boolean(stale, "stale")
    if created_after is not None:
        request.created_after.CopyFrom(check.timestamp(created_after, "created_after"))
    if created_before is not None:
        request.created_before.CopyFrom(check.timestamp(created_before, "created_before"))
    if not (request.ids or request.category or request.source
            or any(request.HasField(f) for f in _FORGET_FILTERS)):
        raise check.bad("filters", "forget_memories needs at least one filter (ids, category, "
                        "source, subject, stale, created_after or created_before)")
    return request



def to_forget_report(response: memory_pb2.ForgetMemoriesResponse, dry_run: bool) -> ForgetReport:
    """ForgetMemoriesResponse (and whether it was a dry run) -> ForgetReport."""
    return ForgetReport(count=response.count, ids=list(response.ids), dry_run=dry_run)


def _itself(response: R) -> R:
    return response


# -- sessions -------------------------------------------------------------------------------


def to_session(message: session_pb2.Session) -> Session:
    """Session message -> Session."""
    return Session(
        id=message.id,
        namespace=message.namespace,
        state=_session_state(message.state),
        started_at=check.to_datetime(message.started_at),
        ended_at=_optional_time(message, "ended_at"),
        end_trigger=_trigger(message.end_trigger) if message.end_trigger else None,
        summary=message.summary,
        last_activity_at=check.to_datetime(message.last_activity_at),
        message_count=message.message_count,
        duration=message.duration.ToTimedelta() if message.HasField("duration") else None,
        metadata=check.json_field(message, "metadata"),
        revision=message.revision,
    )


def to_message(message: session_pb2.Message) -> Message:
    """Message message -> Message."""
    return Message(
        id=message.id,
        namespace=message.namespace,
        session_id=message.session_id,
        sequence=message.sequence,
        role=_role(message.role),
        content=message.content,
        model=message.model,
        tokens_used=message.tokens_used,
        tool_calls=check.json_field(message, "tool_calls"),
        created_at=check.to_datetime(message.created_at),
        revision=message.revision,
    )


def to_session_event(message: session_pb2.SessionEvent) -> SessionEvent:
    """SessionEvent message -> SessionEvent."""
    return SessionEvent(
        id=message.id,
        namespace=message.namespace,
        session_id=message.session_id,
        event_type=message.event_type,
        data=check.json_field(message, "data"),
        logged_at=check.to_datetime(message.logged_at),
        revision=message.revision,
    )


class MessageFields(TypedDict, total=False):
    """Optional fields of append_message."""

    model: str
    tokens_used: int
    tool_calls: Any  # any JSON value
    embedding: Sequence[float] | None  # computed by the caller, for vector search


def start_session_request(
    namespace: str, session_id: object, metadata: object
) -> session_pb2.StartSessionRequest:
    """Build a StartSessionRequest."""
    return session_pb2.StartSessionRequest(
        namespace=namespace, session_id=check.optional_text(session_id, "id") or "",
        metadata_json=check.optional_json(metadata, "metadata", object_only=True),
    )


def log_session_event_request(
    namespace: str, session_id: object, event_type: object, data: object
) -> session_pb2.LogSessionEventRequest:
    """Build a LogSessionEventRequest."""
    return session_pb2.LogSessionEventRequest(
        namespace=namespace, session_id=check.text(session_id, "session_id"),
        event_type=check.text(event_type, "event_type"),
        data_json=check.optional_json(data, "data", object_only=True),
    )


def append_message_request(
    namespace: str, session_id: object, role: object, content: object, fields: MessageFields
) -> session_pb2.AppendMessageRequest:
    """Build an AppendMessageRequest."""
    check.known_keys(fields, _keys(MessageFields), "append_message")
    return session_pb2.AppendMessageRequest(
        namespace=namespace, session_id=check.text(session_id, "session_id"),
        role=role_value(role), content=check.text(content, "content"),
        model=check.text(fields.get("model", ""), "model"),
        tokens_used=check.integer(fields.get("tokens_used", 0), "tokens_used"),
        tool_calls_json=check.optional_json(fields.get("tool_calls"), "tool_calls"),
        embedding=check.floats(fields.get("embedding"), "embedding"),
    )


def list_sessions_request(
    namespace: str, page_size: object, page_token: object, state: object, order_by: object,
) -> session_pb2.ListSessionsRequest:
    """Build a ListSessionsRequest."""
    request = _page(session_pb2.ListSessionsRequest, namespace, page_size, page_token)
    if state is not None:
        request.state = state_value(state)
    if order_by is not None:
        request.order_by = order_value(order_by)
    return request


def list_session_events_request(
    namespace: str, session_id: object, day: object, page_size: object, page_token: object,
) -> session_pb2.ListSessionEventsRequest:
    """Build a ListSessionEventsRequest for one session or one UTC day."""
    request = _page(session_pb2.ListSessionEventsRequest, namespace, page_size, page_token)
    if session_id is not None and day is not None:
        raise check.bad("day", "give session_id or day, not both")
    if session_id is not None:
        request.session_id = check.text(session_id, "session_id")
    if day is not None:
        request.day = check.day(day, "day")
    return request


def list_messages_request(
    namespace: str, session_id: object, page_size: object, page_token: object
) -> session_pb2.ListMessagesRequest:
    """Build a ListMessagesRequest."""
    request = _page(session_pb2.ListMessagesRequest, namespace, page_size, page_token)
    request.session_id = check.text(session_id, "session_id")
    return request


# -- events ---------------------------------------------------------------------------------


class EventFields(TypedDict, total=False):
    """Optional fields of record_event."""

    node: str
    details: Mapping[str, Any] | None
    occurred_at: datetime | None


class EventFilters(TypedDict, total=False):
    """Filters of list_events (combined with AND); ``unresolved=True`` is ``resolved=False``."""

    types: Sequence[EventType]
    min_severity: Severity | None
    node: str | None
    source: EventSourceName | None
    since: datetime | None
    until: datetime | None
    resolved: bool | None
    unresolved: bool | None


def to_event(message: event_pb2.Event) -> Event:
    """Event message -> Event."""
    return Event(
        id=message.id,
        namespace=message.namespace,
        occurred_at=check.to_datetime(message.occurred_at),
        type=_event_type(message.type),
        severity=_severity(message.severity),
        source=_event_source(message.source),
        node=message.node,
        summary=message.summary,
        details=check.json_field(message, "details"),
        resolved=message.resolved,
        resolved_at=_optional_time(message, "resolved_at"),
        resolved_by=message.resolved_by,
        revision=message.revision,
    )


def record_event_request(
    namespace: str, type: object, severity: object, source: object, summary: object,
    fields: EventFields,
) -> event_pb2.RecordEventRequest:
    """Build a RecordEventRequest."""
    check.known_keys(fields, _keys(EventFields), "record_event")
    request = event_pb2.RecordEventRequest(
        namespace=namespace, type=event_type_value(type), severity=severity_value(severity),
        source=event_source_value(source), summary=check.text(summary, "summary"),
        node=check.text(fields.get("node", ""), "node"),
        details_json=check.optional_json(fields.get("details"), "details", object_only=True),
    )
    if (occurred_at := fields.get("occurred_at")) is not None:
        request.occurred_at.CopyFrom(check.timestamp(occurred_at, "occurred_at"))
    return request


def list_events_request(
    namespace: str, page_size: object, page_token: object, filters: EventFilters
) -> event_pb2.ListEventsRequest:
    """Build a ListEventsRequest."""
    request = _page(event_pb2.ListEventsRequest, namespace, page_size, page_token)
    return _event_filters(request, filters, "list_events")


EventFilterRequest = TypeVar(
    "EventFilterRequest", event_pb2.ListEventsRequest, event_pb2.SearchEventsRequest
)


def _event_filters(
    request: EventFilterRequest, filters: Mapping[str, Any], what: str
) -> EventFilterRequest:
    """Set the filter fields that ListEvents and SearchEvents share."""
    check.known_keys(filters, _keys(EventFilters), what)
    types = filters.get("types", ())
    if isinstance(types, str) or not isinstance(types, Sequence):
        raise check.bad("types", f"must be a list of event types, got {type(types).__name__}")
    request.types.extend(event_type_value(t) for t in types)
    if (min_severity := filters.get("min_severity")) is not None:
        request.min_severity = severity_value(min_severity)
    if (node := filters.get("node")) is not None:
        request.node = check.text(node, "node")
    if (source := filters.get("source")) is not None:
        request.source = event_source_value(source)
    if (since := filters.get("since")) is not None:
        request.since.CopyFrom(check.timestamp(since, "since"))
    if (until := filters.get("until")) is not None:
        request.until.CopyFrom(check.timestamp(until, "until"))
    if (resolved := filters.get("resolved")) is not None:
        request.resolved = check.boolean(resolved, "resolved")
    if (unresolved := filters.get("unresolved")) is not None:
        request.resolved = not check.boolean(unresolved, "unresolved")
    return request


# -- snapshots, preferences, state ----------------------------------------------------------


def to_snapshot(message: snapshot_pb2.Snapshot) -> Snapshot:
    """Snapshot message -> Snapshot."""
    return Snapshot(
        id=message.id,
        namespace=message.namespace,
        kind=message.kind,
        taken_at=check.to_datetime(message.taken_at),
        data=check.json_field(message, "data") or {},
        revision=message.revision,
    )


def save_snapshot_request(
    namespace: str, data: object, kind: object
) -> snapshot_pb2.SaveSnapshotRequest:
    """Build a SaveSnapshotRequest (data: a JSON object)."""
    return snapshot_pb2.SaveSnapshotRequest(
        namespace=namespace, kind=check.text(kind, "kind"),
        data_json=check.json_text(data, "data", object_only=True),
    )


def list_snapshots_request(
    namespace: str, kind: object, since: object, page_size: object, page_token: object
) -> snapshot_pb2.ListSnapshotsRequest:
    """Build a ListSnapshotsRequest."""
    request = _page(snapshot_pb2.ListSnapshotsRequest, namespace, page_size, page_token)
    request.kind = check.text(kind, "kind")
    if since is not None:
        request.since.CopyFrom(check.timestamp(since, "since"))
    return request


def to_preference(message: preference_pb2.Preference) -> Preference:
    """Preference message -> Preference."""
    return Preference(
        namespace=message.namespace,
        key=message.key,
        value=check.json_field(message, "value"),
        created_at=check.to_datetime(message.created_at),
        updated_at=check.to_datetime(message.updated_at),
        revision=message.revision,
    )


def set_preference_request(
    namespace: str, key: object, value: object
) -> preference_pb2.SetPreferenceRequest:
    """Build a SetPreferenceRequest (value: any JSON value, None is null)."""
    return preference_pb2.SetPreferenceRequest(
        namespace=namespace, key=check.text(key, "key"),
        value_json=check.json_text(value, "value"),
    )


def list_preferences_request(
    namespace: str, prefix: object, page_size: object, page_token: object
) -> preference_pb2.ListPreferencesRequest:
    """Build a ListPreferencesRequest."""
    request = _page(preference_pb2.ListPreferencesRequest, namespace, page_size, page_token)
    request.key_prefix = check.text(prefix, "prefix")
    return request


def to_state_entry(message: state_pb2.StateEntry) -> StateEntry:
    """StateEntry message -> StateEntry."""
    return StateEntry(
        namespace=message.namespace,
        key=message.key,
        value=check.json_field(message, "value"),
        version=message.version,
        updated_at=check.to_datetime(message.updated_at),
        expires_at=_optional_time(message, "expires_at"),
        revision=message.revision,
    )


def put_state_request(
    namespace: str, key: object, value: object, expected_version: object, ttl: object,
) -> state_pb2.PutStateRequest:
    """Build a PutStateRequest (value: any JSON value; ttl in seconds or a timedelta)."""
    request = state_pb2.PutStateRequest(
        namespace=namespace, key=check.text(key, "key"),
        value_json=check.json_text(value, "value"),
    )
    if expected_version is not None:
        request.expected_version = check.integer(expected_version, "expected_version")
    if ttl is not None:
        try:
            request.ttl.FromTimedelta(check.seconds(ttl, "ttl"))
        except ValueError:
            raise check.bad("ttl", f"{ttl} is out of range") from None
    return request


def delete_state_request(
    namespace: str, key: object, expected_version: object
) -> state_pb2.DeleteStateRequest:
    """Build a DeleteStateRequest."""
    request = state_pb2.DeleteStateRequest(namespace=namespace, key=check.text(key, "key"))
    if expected_version is not None:
        request.expected_version = check.integer(expected_version, "expected_version")
    return request


def list_state_request(
    namespace: str, prefix: object, page_size: object, page_token: object
) -> state_pb2.ListStateRequest:
    """Build a ListStateRequest."""
    request = _page(state_pb2.ListStateRequest, namespace, page_size, page_token)
    request.key_prefix = check.text(prefix, "prefix")
    return request


# -- audit ----------------------------------------------------------------------------------


def to_tool_call(message: audit_pb2.ToolCall) -> ToolCall:
    """ToolCall message -> ToolCall."""
    return ToolCall(
        id=message.id, namespace=message.namespace, tool=message.tool,
        input=check.json_field(message, "input"), session_id=message.session_id,
        cycle_id=message.cycle_id, started_at=check.to_datetime(message.started_at),
        status=_run_status(message.status), output=check.json_field(message, "output"),
        error=message.error, duration_ms=message.duration_ms,
        finished_at=_optional_time(message, "finished_at"), revision=message.revision,
    )


def to_planning_cycle(message: audit_pb2.PlanningCycle) -> PlanningCycle:
    """PlanningCycle message -> PlanningCycle."""
    return PlanningCycle(
        id=message.id, namespace=message.namespace, goals=check.json_field(message, "goals"),
        started_at=check.to_datetime(message.started_at), status=_run_status(message.status),
        outcomes=check.json_field(message, "outcomes"),
        finished_at=_optional_time(message, "finished_at"), revision=message.revision,
    )


def to_decision(message: audit_pb2.Decision) -> Decision:
    """Decision message -> Decision."""
    return Decision(
        id=message.id, namespace=message.namespace, cycle_id=message.cycle_id,
        reasoning=check.json_field(message, "reasoning"), decision=message.decision,
        created_at=check.to_datetime(message.created_at), revision=message.revision,
    )


class ToolCallFilters(TypedDict, total=False):
    """Filters of list_tool_calls (combined with AND)."""

    tool: str
    status: RunStatus | None
    cycle_id: int
    session_id: str
    since: datetime | None
    until: datetime | None


def start_tool_call_request(
    namespace: str, tool: object, input: object, session_id: object, cycle_id: object
) -> audit_pb2.StartToolCallRequest:
    """Build a StartToolCallRequest (input: any JSON value, None leaves it unset)."""
    return audit_pb2.StartToolCallRequest(
        namespace=namespace, tool=check.text(tool, "tool"),
        input_json=check.optional_json(input, "input"),
        session_id=check.text(session_id, "session_id"),
        cycle_id=check.integer(cycle_id, "cycle_id"),
    )


def finish_tool_call_request(
    namespace: str, call_id: object, status: object, output: object, error: object,
    duration_ms: object,
) -> audit_pb2.FinishToolCallRequest:
    """Build a FinishToolCallRequest."""
    return audit_pb2.FinishToolCallRequest(
        namespace=namespace, id=check.integer(call_id, "call_id"),
        status=run_status_value(status), output_json=check.optional_json(output, "output"),
        error=check.text(error, "error"),
        duration_ms=check.integer(duration_ms, "duration_ms"),
    )


def list_tool_calls_request(
    namespace: str, page_size: object, page_token: object, filters: ToolCallFilters
) -> audit_pb2.ListToolCallsRequest:
    """Build a ListToolCallsRequest."""
    check.known_keys(filters, _keys(ToolCallFilters), "list_tool_calls")
    request = _page(audit_pb2.ListToolCallsRequest, namespace, page_size, page_token)
    request.tool = check.text(filters.get("tool", ""), "tool")
    request.cycle_id = check.integer(filters.get("cycle_id", 0), "cycle_id")
    request.session_id = check.text(filters.get("session_id", ""), "session_id")
    if (status := filters.get("status")) is not None:
        request.status = run_status_value(status)
    if (since := filters.get("since")) is not None:
        request.since.CopyFrom(check.timestamp(since, "since"))
    if (until := filters.get("until")) is not None:
        request.until.CopyFrom(check.timestamp(until, "until"))
    return request


def finish_planning_cycle_request(
    namespace: str, cycle_id: object, status: object, outcomes: object
) -> audit_pb2.FinishPlanningCycleRequest:
    """Build a FinishPlanningCycleRequest."""
    return audit_pb2.FinishPlanningCycleRequest(
        namespace=namespace, id=check.integer(cycle_id, "cycle_id"),
        status=run_status_value(status), outcomes_json=check.optional_json(outcomes, "outcomes"),
    )


def list_planning_cycles_request(
    namespace: str, status: object, page_size: object, page_token: object
) -> audit_pb2.ListPlanningCyclesRequest:
    """Build a ListPlanningCyclesRequest."""
    request = _page(audit_pb2.ListPlanningCyclesRequest, namespace, page_size, page_token)
    if status is not None:
        request.status = run_status_value(status)
    return request


def record_decision_request(
    namespace: str, decision: object, reasoning: object, cycle_id: object
) -> audit_pb2.RecordDecisionRequest:
    """Build a RecordDecisionRequest."""
    return audit_pb2.RecordDecisionRequest(
        namespace=namespace, decision=check.text(decision, "decision"),
        reasoning_json=check.optional_json(reasoning, "reasoning"),
        cycle_id=check.integer(cycle_id, "cycle_id"),
    )


def list_decisions_request(
    namespace: str, cycle_id: object, page_size: object, page_token: object
) -> audit_pb2.ListDecisionsRequest:
    """Build a ListDecisionsRequest."""
    request = _page(audit_pb2.ListDecisionsRequest, namespace, page_size, page_token)
    request.cycle_id = check.integer(cycle_id, "cycle_id")
    return request


# -- collections ----------------------------------------------------------------------------

FieldSpec = (
    Field | tuple[str, FieldType] | tuple[str, FieldType, Mapping[str, bool]] | Mapping[str, Any]
)
"""A field: ("qty", "integer", {"indexed": True}), {"name": ..., "type": ...}, or a Field."""
FilterSpec = tuple[str, FilterOp] | tuple[str, FilterOp, Any] | Mapping[str, Any]
"""A filter: ("symbol", "eq", "ETH"), ("qty", "is_null") or {"field", "op", "value"}."""
_FIELD_OPTIONS = ("required", "indexed", "unique")
_IN = collection_pb2.FILTER_OPERATOR_IN
_IS_NULL = collection_pb2.FILTER_OPERATOR_IS_NULL


def field_message(spec: object, where: str = "field") -> collection_pb2.Field:
    """("qty", "integer", {"indexed": True}), a dict, or a Field -> Field message."""
    if isinstance(spec, Field):
        name, kind, options = spec.name, spec.type, {
            "required": spec.required, "indexed": spec.indexed, "unique": spec.unique}
    elif isinstance(spec, Mapping):
        check.known_keys(spec, ["name", "type", *_FIELD_OPTIONS], "a field", f"{where}.")
        for required in ("name", "type"):
            if required not in spec:
                raise check.bad(f"{where}.{required}", "is required")
        name, kind = spec["name"], spec["type"]
        options = {k: spec[k] for k in _FIELD_OPTIONS if k in spec}
    elif isinstance(spec, tuple | list) and len(spec) in (2, 3):
        name, kind = spec[0], spec[1]
        options = dict(check.mapping(spec[2], f"{where}[2]")) if len(spec) > 2 else {}
        check.known_keys(options, _FIELD_OPTIONS, "a field's options", f"{where}.")
    else:
        raise check.bad(where, "must be (name, type), (name, type, {options}), a dict or a "
                        f"Field, got {type(spec).__name__}")
    return collection_pb2.Field(
        name=check.text(name, f"{where}.name"),
        type=check.enum_value(collection_pb2.FieldType, "FIELD_TYPE_", kind, f"{where}.type"),
        **{k: check.boolean(v, f"{where}.{k}") for k, v in options.items()},
    )


def field_messages(fields: object) -> list[collection_pb2.Field]:
    """A list of field specs -> Field messages."""
    return [field_message(f, f"fields[{i}]")
            for i, f in enumerate(check.sequence(fields, "fields"))]


def filter_messages(where: object) -> list[collection_pb2.Filter]:
    """[("symbol", "eq", "ETH"), ("qty", "is_null")] or dicts -> typed Filter messages."""
    messages = []
    for i, spec in enumerate(check.sequence(where, "where")):
        at = f"where[{i}]"
        given = True
        if isinstance(spec, Mapping):
            check.known_keys(spec, ["field", "op", "value"], "a filter", f"{at}.")
            if "field" not in spec or "op" not in spec:
                raise check.bad(at, "needs a field and an op")
            field, op, value, given = spec["field"], spec["op"], spec.get("value"), "value" in spec
        elif isinstance(spec, tuple | list) and len(spec) in (2, 3):
            field, op = spec[0], spec[1]
            value, given = (spec[2], True) if len(spec) > 2 else (None, False)
        else:
            raise check.bad(at, "must be (field, op), (field, op, value) or a dict, got "
                            f"{type(spec).__name__}")
        message = collection_pb2.Filter(
            field=check.text(field, f"{at}.field"),
            op=check.enum_value(collection_pb2.FilterOperator, "FILTER_OPERATOR_", op,
                                f"{at}.op"))
        if message.op == _IN:
            values = check.sequence(value, f"{at}.value")
            message.typed_values.extend(check.field_value(v, f"{at}.value[{j}]")
                                        for j, v in enumerate(values))
        elif message.op == _IS_NULL:
            if value is not None:
                message.typed_value.boolean_value = check.boolean(value, f"{at}.value")
        elif given:
            message.typed_value.CopyFrom(check.field_value(value, f"{at}.value"))
        messages.append(message)
    return messages


def order_messages(order_by: object) -> list[collection_pb2.OrderBy]:
    """["-qty", "symbol"] -> OrderBy messages ("-" sorts descending)."""
    return [collection_pb2.OrderBy(field=o.removeprefix("-"), descending=o.startswith("-"))
            for o in check.strings(order_by, "order_by")]


def typed_row(row: object, where: str) -> collection_pb2.Row:
    """{"symbol": "ETH", "qty": 2} -> a Row of typed FieldValues."""
    message = collection_pb2.Row()
    for name, value in check.mapping(row, where).items():
        key = check.text(name, f"{where} key")
        message.fields[key].CopyFrom(check.field_value(value, f"{where}.{key}"))
    return message


def insert_rows_request(
    namespace: str, collection: object, rows: object
) -> collection_pb2.InsertRowsRequest:
    """Build an InsertRowsRequest of typed rows."""
    return collection_pb2.InsertRowsRequest(
        namespace=namespace, collection=check.text(collection, "collection"),
        typed_rows=[typed_row(row, f"rows[{i}]")
                    for i, row in enumerate(check.sequence(rows, "rows"))],
    )


def query_rows_request(
    namespace: str, collection: object, where: object, order_by: object, page_size: object,
    page_token: object,
) -> collection_pb2.QueryRowsRequest:
    """Build a QueryRowsRequest."""
    request = _page(collection_pb2.QueryRowsRequest, namespace, page_size, page_token)
    request.collection = check.text(collection, "collection")
    request.filters.extend(filter_messages(where))
    request.order_by.extend(order_messages(order_by))
    return request


def update_rows_request(
    namespace: str, collection: object, set: object, where: object
) -> collection_pb2.UpdateRowsRequest:
    """Build an UpdateRowsRequest with a typed set."""
    request = collection_pb2.UpdateRowsRequest(
        namespace=namespace, collection=check.text(collection, "collection"),
        filters=filter_messages(where),
    )
    for name, value in check.mapping(set, "set").items():
        key = check.text(name, "set key")
        request.typed_set[key].CopyFrom(check.field_value(value, f"set.{key}"))
    return request


def to_collection(message: collection_pb2.Collection) -> Collection:
    """Collection message -> Collection."""
    return Collection(
        namespace=message.namespace, name=message.name,
        fields=[Field(f.name, _field_type(f.type), f.required, f.indexed, f.unique)
                for f in message.fields],
        created_at=check.to_datetime(message.created_at), revision=message.revision,
    )


def to_row(message: collection_pb2.Row) -> dict[str, Any]:
    """Row message -> {"id": ..., field: value, ...} (an older daemon's untyped values too)."""
    if not message.fields and message.HasField("values"):
        return {"id": message.id, **check.legacy_json(message.values)}
    return {"id": message.id,
            **{name: check.from_field_value(v) for name, v in message.fields.items()}}


# -- watch ----------------------------------------------------------------------------------

_OPERATIONS = {watch_pb2.CHANGE_OPERATION_CREATE: "create",
               watch_pb2.CHANGE_OPERATION_UPDATE: "update",
               watch_pb2.CHANGE_OPERATION_DELETE: "delete"}

# The converter of each field of Change's typed_resource oneof, named after its kind: the
# same functions that convert Get and List results.
_RESOURCES: dict[str, Callable[[Any], Resource]] = {
    "memory": to_memory, "session": to_session, "message": to_message,
    "session_event": to_session_event, "event": to_event, "snapshot": to_snapshot,
    "preference": to_preference, "state": to_state_entry, "tool_call": to_tool_call,
    "planning_cycle": to_planning_cycle, "decision": to_decision,
    "collection": to_collection, "row": to_row,
}
KINDS: tuple[str, ...] = tuple(
    f.name for f in watch_pb2.Change.DESCRIPTOR.oneofs_by_name["typed_resource"].fields)
"""The kinds of the change feed (memory, session, ...), from the proto."""


def to_change(message: watch_pb2.Change) -> Change:
    """Change message -> Change, its resource as the matching get_* returns it."""
    which = message.WhichOneof("typed_resource")
    resource: Resource | None = None
    if which is not None:
        resource = _RESOURCES[which](getattr(message, which))
    elif message.HasField("resource"):  # an older daemon: its database row
        resource = check.legacy_json(message.resource)
    return Change(revision=message.revision, namespace=message.namespace, kind=message.kind,
                  key=message.key, operation=_OPERATIONS.get(message.operation, "unknown"),
                  time=check.to_datetime(message.time), resource=resource)


def _changes(response: watch_pb2.WatchResponse) -> list[Change]:
    return [to_change(c) for c in response.changes]


def watch_request(
    namespace: str, kinds: Sequence[ChangeKind] | None, start_revision: object
) -> watch_pb2.WatchRequest:
    """Build a WatchRequest; unknown kinds are InvalidArgument listing the known ones."""
    names = [] if kinds is None else check.strings(kinds, "kinds")
    unknown = [k for k in names if k not in KINDS]
    if unknown:
        raise check.bad("kinds", f"{', '.join(map(repr, unknown))} "
                        f"{'is' if len(unknown) == 1 else 'are'} not one of {', '.join(KINDS)}")
    start = check.integer(start_revision, "start_revision")
    if start < 0:
        raise check.bad("start_revision", "must be 0 (from now) or a revision")
    return watch_pb2.WatchRequest(namespace=namespace, kinds=names, start_revision=start)


# -- search ---------------------------------------------------------------------------------


def search_memories_request(
    namespace: str, query: object, limit: object, mode: object, embedding: object,
    filters: MemoryFilters, recency_weight: object = 0.0,
) -> memory_pb2.SearchMemoriesRequest:
    """Build a SearchMemoriesRequest (the filters are list_memories')."""
    request = memory_pb2.SearchMemoriesRequest(
        namespace=namespace, query=check.text(query, "query"),
        limit=check.int32(limit, "limit"), mode=mode_value(mode),
        embedding=check.floats(embedding, "embedding"),
        recency_weight=check.number(recency_weight, "recency_weight"),
    )
    return _memory_filters(request, filters, "search_memories")


class MessageSearchFilters(TypedDict, total=False):
    """Filters of search_messages (combined with AND)."""

    role: Role | None
    created_after: datetime | None
    created_before: datetime | None


def search_messages_request(
    namespace: str, query: object, limit: object, mode: object, embedding: object,
    session_id: object, filters: MessageSearchFilters,
) -> session_pb2.SearchMessagesRequest:
    """Build a SearchMessagesRequest."""
    check.known_keys(filters, _keys(MessageSearchFilters), "search_messages")
    request = session_pb2.SearchMessagesRequest(
        namespace=namespace, query=check.text(query, "query"),
        limit=check.int32(limit, "limit"), mode=mode_value(mode),
        embedding=check.floats(embedding, "embedding"),
    )
    if session_id is not None:
        request.session_id = check.text(session_id, "session_id")
    if (role := filters.get("role")) is not None:
        request.role = role_value(role)
    if (after := filters.get("created_after")) is not None:
        request.created_after.CopyFrom(check.timestamp(after, "created_after"))
    if (before := filters.get("created_before")) is not None:
        request.created_before.CopyFrom(check.timestamp(before, "created_before"))
    return request


def search_events_request(
    namespace: str, query: object, limit: object, filters: EventFilters
) -> event_pb2.SearchEventsRequest:
    """Build a SearchEventsRequest (the filters are list_events')."""
    request = event_pb2.SearchEventsRequest(
        namespace=namespace, query=check.text(query, "query"), limit=check.int32(limit, "limit"))
    return _event_filters(request, filters, "search_events")


# -- admin ----------------------------------------------------------------------------------


def assemble_context_request(
    namespace: str, query: object, session_id: object, max_tokens: object, sections: object,
    state_keys: object, embedding: object,
) -> context_pb2.AssembleContextRequest:
    """Build an AssembleContextRequest (None: the daemon's default or every section)."""
    return context_pb2.AssembleContextRequest(
        namespace=namespace, query=check.text(query, "query"),
        session_id=check.optional_text(session_id, "session_id") or "",
        max_tokens=0 if max_tokens is None else check.int32(max_tokens, "max_tokens"),
        sections=[check.enum_value(context_pb2.ContextSection, "CONTEXT_SECTION_", s,
                                   f"sections[{i}]")
                  for i, s in enumerate(check.sequence(sections or (), "sections"))],
        state_keys=check.strings(state_keys or (), "state_keys"),
        embedding=check.floats(embedding, "embedding"),
    )


def to_context(response: context_pb2.AssembleContextResponse) -> Context:
    """AssembleContextResponse -> Context."""
    return Context(
        text=response.text, tokens=response.tokens, truncated=response.truncated,
        revision=response.header.revision,
        sections=[ContextSection(
            name=cast(ContextSectionName, part.name), omitted=part.omitted,
            items=[ContextItem(i.key, i.text, i.tokens, i.score) for i in part.items])
            for part in response.sections],
    )


def to_stats(response: admin_pb2.GetStatsResponse) -> Stats:
    """GetStatsResponse -> Stats."""
    return Stats(
        revision=response.header.revision,
        counts=[RowCount(c.kind, c.namespace, c.rows) for c in response.counts],
        database_bytes=response.database_bytes, wal_bytes=response.wal_bytes,
        uptime=response.uptime.ToTimedelta(), commits=response.commits,
        committed_writes=response.committed_writes,
    )


class BackupWriter:
    """Writes a Backup stream to ``path + ".partial"``, checks it, then renames it to ``path``.

    ``discard()`` (always call it, in a finally) deletes the partial file unless ``finish()``
    put the backup in place.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.partial = path + ".partial"
        self._file = open(self.partial, "wb")  # noqa: SIM115 - closed by finish or discard
        self._digest = hashlib.sha256()
        self._size = self._total = self._revision = 0
        self._sha256 = ""
        self._done = False

    def write(self, chunk: admin_pb2.BackupResponse) -> None:
        """Append one chunk (they must arrive in order)."""
        if chunk.offset != self._size:
            raise DataLoss(f"backup: the stream jumped from byte {self._size} to {chunk.offset}",
                           reason="BACKUP_STREAM_BROKEN")
        self._file.write(chunk.data)
        self._digest.update(chunk.data)
        self._size += len(chunk.data)
        self._total, self._revision = chunk.total_size, chunk.revision
        self._sha256 = chunk.sha256 or self._sha256

    def finish(self) -> BackupResult:
        """Check size and SHA-256, make the file durable and put it in place."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self._size != self._total or not self._sha256:
            raise DataLoss(f"backup: the stream ended after {self._size} of {self._total} "
                           "bytes; nothing written", reason="BACKUP_STREAM_BROKEN")
        if self._digest.hexdigest() != self._sha256:
            raise DataLoss("backup: the file's SHA-256 does not match the daemon's; nothing "
                           "written", reason="BACKUP_CHECKSUM_MISMATCH")
        os.replace(self.partial, self.path)
        self._done = True
        return BackupResult(self.path, self._size, self._sha256, self._revision)

    def discard(self) -> None:
        """Close the file and, unless the backup finished, delete the partial file."""
        self._file.close()
        if not self._done and os.path.exists(self.partial):
            os.unlink(self.partial)


# -- the RPCs: one table ---------------------------------------------------------------------

_RETRIED_LEVELS = (descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
                   descriptor_pb2.MethodOptions.IDEMPOTENT)


@dataclass(frozen=True)
class Rpc(Generic[R]):
    """One method: its path, message types, the result's converter, and whether to retry.

    ``idempotent`` comes from the method's ``idempotency_level`` in proto/ (reads are marked
    NO_SIDE_EFFECTS): only those calls are retried on UNAVAILABLE. ``convert`` turns the
    response (each message, for a stream) into the SDK's result.
    """

    path: str
    request: type[ProtoMessage]
    response: type[ProtoMessage]
    convert: Callable[[Any], R]
    idempotent: bool
    streaming: bool


RPCS: dict[str, Rpc[Any]] = {}
"""Every RPC the SDK calls, by path."""


def _rpc(module: ModuleType, service: str, method: str, convert: Callable[[Any], R]) -> Rpc[R]:
    descriptor = module.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    rpc: Rpc[R] = Rpc(
        path=f"/{descriptor.containing_service.full_name}/{method}",
        request=GetMessageClass(descriptor.input_type),
        response=GetMessageClass(descriptor.output_type),
        convert=convert,
        idempotent=descriptor.GetOptions().idempotency_level in _RETRIED_LEVELS,
        streaming=descriptor.server_streaming,
    )
    RPCS[rpc.path] = rpc
    return rpc


def _pages(items: str, convert: Callable[[Any], R]) -> Callable[[Any], Page[R]]:
    """Converter of a List response: its ``items`` field as a Page."""
    return lambda r: Page([convert(m) for m in getattr(r, items)], r.next_page_token)


def _one(field: str, convert: Callable[[Any], R]) -> Callable[[Any], R]:
    """Converter of a response holding one resource in ``field``."""
    return lambda r: convert(getattr(r, field))


def _hits(
    hit: Callable[[Any, float, str], R], field: str, convert: Callable[[Any], Any]
) -> Callable[[Any], list[R]]:
    """Converter of a search response: its hits with the resource in ``field``."""
    return lambda r: [hit(convert(getattr(h, field)), h.score, h.snippet) for h in r.hits]


_M, _S, _E = memory_pb2, session_pb2, event_pb2
_SN, _P, _ST, _A, _C = snapshot_pb2, preference_pb2, state_pb2, audit_pb2, collection_pb2
ADD_MEMORY = _rpc(_M, "MemoryService", "AddMemory", _added)
ADD_MEMORIES = _rpc(_M, "MemoryService", "AddMemories", _added_many)
GET_MEMORY = _rpc(_M, "MemoryService", "GetMemory", _one("memory", to_memory))
LIST_MEMORIES = _rpc(_M, "MemoryService", "ListMemories", _pages("memories", to_memory))
UPDATE_MEMORY = _rpc(_M, "MemoryService", "UpdateMemory", _one("memory", to_memory))
DELETE_MEMORY = _rpc(_M, "MemoryService", "DeleteMemory", _nothing)
SEARCH_MEMORIES = _rpc(_M, "MemoryService", "SearchMemories",
                       _hits(MemoryHit, "memory", to_memory))
GET_MEMORY_HISTORY = _rpc(_M, "MemoryService", "GetMemoryHistory",
                          _pages("versions", to_memory_version))
# The report needs the request's dry_run too: forget_memories converts with to_forget_report.
FORGET_MEMORIES: Rpc[memory_pb2.ForgetMemoriesResponse] = _rpc(
    _M, "MemoryService", "ForgetMemories", _itself)
START_SESSION = _rpc(_S, "SessionService", "StartSession", _one("session", to_session))
END_SESSION = _rpc(_S, "SessionService", "EndSession", _one("session", to_session))
GET_SESSION = _rpc(_S, "SessionService", "GetSession", _one("session", to_session))
LIST_SESSIONS = _rpc(_S, "SessionService", "ListSessions", _pages("sessions", to_session))
LOG_SESSION_EVENT = _rpc(_S, "SessionService", "LogSessionEvent",
                         _one("event", to_session_event))
LIST_SESSION_EVENTS = _rpc(_S, "SessionService", "ListSessionEvents",
                           _pages("events", to_session_event))
APPEND_MESSAGE = _rpc(_S, "SessionService", "AppendMessage", _one("message", to_message))
LIST_MESSAGES = _rpc(_S, "SessionService", "ListMessages", _pages("messages", to_message))
SEARCH_MESSAGES = _rpc(_S, "SessionService", "SearchMessages",
                       _hits(MessageHit, "message", to_message))
RECORD_EVENT = _rpc(_E, "EventService", "RecordEvent", _one("event", to_event))
GET_EVENT = _rpc(_E, "EventService", "GetEvent", _one("event", to_event))
LIST_EVENTS = _rpc(_E, "EventService", "ListEvents", _pages("events", to_event))
RESOLVE_EVENT = _rpc(_E, "EventService", "ResolveEvent", _one("event", to_event))
SEARCH_EVENTS = _rpc(_E, "EventService", "SearchEvents", _hits(EventHit, "event", to_event))
SAVE_SNAPSHOT = _rpc(_SN, "SnapshotService", "SaveSnapshot", _one("snapshot", to_snapshot))
GET_LATEST_SNAPSHOT = _rpc(_SN, "SnapshotService", "GetLatestSnapshot",
                           _one("snapshot", to_snapshot))
LIST_SNAPSHOTS = _rpc(_SN, "SnapshotService", "ListSnapshots", _pages("snapshots", to_snapshot))
SET_PREFERENCE = _rpc(_P, "PreferenceService", "SetPreference",
                      _one("preference", to_preference))
GET_PREFERENCE = _rpc(_P, "PreferenceService", "GetPreference",
                      _one("preference", to_preference))
LIST_PREFERENCES = _rpc(_P, "PreferenceService", "ListPreferences",
                        _pages("preferences", to_preference))
DELETE_PREFERENCE = _rpc(_P, "PreferenceService", "DeletePreference", _nothing)
GET_STATE = _rpc(_ST, "StateService", "GetState", _one("entry", to_state_entry))
PUT_STATE = _rpc(_ST, "StateService", "PutState", _one("entry", to_state_entry))
DELETE_STATE = _rpc(_ST, "StateService", "DeleteState", _nothing)
LIST_STATE = _rpc(_ST, "StateService", "ListState", _pages("entries", to_state_entry))
START_TOOL_CALL = _rpc(_A, "AuditService", "StartToolCall", _one("tool_call", to_tool_call))
FINISH_TOOL_CALL = _rpc(_A, "AuditService", "FinishToolCall", _one("tool_call", to_tool_call))
GET_TOOL_CALL = _rpc(_A, "AuditService", "GetToolCall", _one("tool_call", to_tool_call))
LIST_TOOL_CALLS = _rpc(_A, "AuditService", "ListToolCalls", _pages("tool_calls", to_tool_call))
START_PLANNING_CYCLE = _rpc(_A, "AuditService", "StartPlanningCycle",
                            _one("cycle", to_planning_cycle))
FINISH_PLANNING_CYCLE = _rpc(_A, "AuditService", "FinishPlanningCycle",
                             _one("cycle", to_planning_cycle))
LIST_PLANNING_CYCLES = _rpc(_A, "AuditService", "ListPlanningCycles",
                            _pages("cycles", to_planning_cycle))
RECORD_DECISION = _rpc(_A, "AuditService", "RecordDecision", _one("decision", to_decision))
LIST_DECISIONS = _rpc(_A, "AuditService", "ListDecisions", _pages("decisions", to_decision))
CREATE_COLLECTION = _rpc(_C, "CollectionService", "CreateCollection",
                         _one("collection", to_collection))
GET_COLLECTION = _rpc(_C, "CollectionService", "GetCollection",
                      _one("collection", to_collection))
LIST_COLLECTIONS = _rpc(_C, "CollectionService", "ListCollections",
                        _pages("collections", to_collection))
ADD_FIELD = _rpc(_C, "CollectionService", "AddField", _one("collection", to_collection))
DROP_COLLECTION = _rpc(_C, "CollectionService", "DropCollection", _nothing)
INSERT_ROWS = _rpc(_C, "CollectionService", "InsertRows", lambda r: list(r.ids))
QUERY_ROWS = _rpc(_C, "CollectionService", "QueryRows", _pages("rows", to_row))
UPDATE_ROWS = _rpc(_C, "CollectionService", "UpdateRows", lambda r: int(r.updated))
DELETE_ROWS = _rpc(_C, "CollectionService", "DeleteRows", lambda r: int(r.deleted))
WATCH = _rpc(watch_pb2, "WatchService", "Watch", _changes)
GET_STATS = _rpc(admin_pb2, "AdminService", "GetStats", to_stats)
ASSEMBLE_CONTEXT = _rpc(context_pb2, "ContextService", "AssembleContext", to_context)
BACKUP = _rpc(admin_pb2, "AdminService", "Backup", lambda chunk: chunk)

