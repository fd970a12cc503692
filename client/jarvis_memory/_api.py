"""What the sync and async clients share: RPC descriptions, request builders, converters."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, TypedDict, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message as ProtoMessage

from jarvis.memory.v1 import (
    audit_pb2,
    collection_pb2,
    event_pb2,
    memory_pb2,
    preference_pb2,
    search_pb2,
    session_pb2,
    snapshot_pb2,
    state_pb2,
    watch_pb2,
)
from jarvis_memory._retry import RetryPolicy
from jarvis_memory.errors import JarvisMemoryError
from jarvis_memory.types import (
    Change,
    Collection,
    Decision,
    Event,
    EventHit,
    Field,
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

_MEMORY_SERVICE = "/jarvis.memory.v1.MemoryService/"
_SESSION_SERVICE = "/jarvis.memory.v1.SessionService/"
_EVENT_SERVICE = "/jarvis.memory.v1.EventService/"
_SNAPSHOT_SERVICE = "/jarvis.memory.v1.SnapshotService/"
_PREFERENCE_SERVICE = "/jarvis.memory.v1.PreferenceService/"
_STATE_SERVICE = "/jarvis.memory.v1.StateService/"
_AUDIT_SERVICE = "/jarvis.memory.v1.AuditService/"
_COLLECTION_SERVICE = "/jarvis.memory.v1.CollectionService/"


@dataclass(frozen=True)
class Rpc(Generic[R]):
    """One unary method: its path, message types, whether a retry is safe, and the result."""

    path: str
    request: type[ProtoMessage]
    response: type[ProtoMessage]
    convert: Callable[[Any], R]
    idempotent: bool



DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0


class ClientBase:
    """A connection to a jarvis-memory daemon: what Client and AsyncClient share.

    ``namespace`` is used by every call that does not name its own ("" means "default").
    ``timeout`` is each call's deadline in seconds, retries included; ``retry`` says how calls
    that are safe to repeat are retried on UNAVAILABLE. ``token`` (an API token or a JWT) is
    sent on every call as ``authorization: Bearer <token>``. TLS is used when ``tls`` is true or
    any of ``ca_file`` (the CA to trust instead of the system's), ``cert_file`` and ``key_file``
    (a client certificate, for mutual TLS) is given. ``options`` are gRPC channel options.
    Errors are raised as jarvis_memory.errors.JarvisMemoryError subclasses. The raw channel
    stays reachable as ``channel`` for the generated stubs.
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
        self.namespace = namespace
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        credentials = None
        if tls or ca_file or cert_file or key_file:
            if bool(cert_file) != bool(key_file):
                raise ValueError("a client certificate needs both cert_file and key_file")
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
        method = self._methods.get(rpc.path)
        if method is None:
            method = self._methods[rpc.path] = self.channel.unary_unary(
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

    def _ns(self, namespace: str | None) -> str:
        return self.namespace if namespace is None else namespace

    def _watch_method(self) -> Any:
        method = self._methods.get(WATCH_PATH)
        if method is None:
            method = self._methods[WATCH_PATH] = self.channel.unary_stream(
                WATCH_PATH, request_serializer=watch_pb2.WatchRequest.SerializeToString,
                response_deserializer=watch_pb2.WatchResponse.FromString,
            )
        return method

    def _watch_request(
        self, namespace: str | None, kinds: Sequence[str] | None, start: int
    ) -> watch_pb2.WatchRequest:
        return watch_pb2.WatchRequest(namespace=self._ns(namespace), kinds=list(kinds or ()),
                                      start_revision=start)

    def _resume_pause(self, error: JarvisMemoryError, attempt: int) -> float | None:
        """Seconds to wait before resuming a broken watch, or None to raise the error."""
        resumable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        if error.code not in resumable or attempt >= self.retry.max_attempts:
            return None
        return self.retry.backoff(attempt)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as file:
        return file.read()


# -- conversions ----------------------------------------------------------------------------


def _enum_value(enum: Any, prefix: str, value: str | int, field: str) -> Any:
    """Accept "fact", "FACT", "MEMORY_CATEGORY_FACT" or the number."""
    if isinstance(value, int):
        return value
    name = value.upper()
    if not name.startswith(prefix):
        name = prefix + name
    try:
        return int(enum.Value(name))
    except ValueError:
        names = [n for n in enum.keys() if not n.endswith("UNSPECIFIED")]  # noqa: SIM118
        allowed = [n.removeprefix(prefix).lower() for n in names]
        raise ValueError(f"{field}: {value!r} is not one of {', '.join(allowed)}") from None


def _enum_name(enum: Any, prefix: str, number: int) -> str:
    try:
        return str(enum.Name(number)).removeprefix(prefix).lower()
    except ValueError:
        return str(number)


def category_value(value: str | int) -> Any:
    """Category name or number -> MemoryCategory number (Any: the stubs' enum NewType)."""
    return _enum_value(memory_pb2.MemoryCategory, "MEMORY_CATEGORY_", value, "category")


def source_value(value: str | int) -> Any:
    """Source name or number -> MemorySource number."""
    return _enum_value(memory_pb2.MemorySource, "MEMORY_SOURCE_", value, "source")


def to_datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    """Timestamp -> aware UTC datetime."""
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """Datetime (naive means UTC) -> Timestamp."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """Dict -> Struct."""
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def to_memory(message: memory_pb2.Memory, deduplicated: bool = False) -> Memory:
    """Memory message -> Memory."""
    return Memory(
        id=message.id,
        namespace=message.namespace,
        content=message.content,
        content_hash=message.content_hash,
        category=_enum_name(memory_pb2.MemoryCategory, "MEMORY_CATEGORY_", message.category),
        source=_enum_name(memory_pb2.MemorySource, "MEMORY_SOURCE_", message.source),
        subject=message.subject,
        attributes=(
            json_format.MessageToDict(message.attributes)
            if message.HasField("attributes")
            else None
        ),
        stale=message.stale,
        created_at=to_datetime(message.created_at),
        updated_at=to_datetime(message.updated_at),
        last_accessed_at=(
            to_datetime(message.last_accessed_at) if message.HasField("last_accessed_at") else None
        ),
        restated_count=message.restated_count,
        revision=message.revision,
        deduplicated=deduplicated,
    )


# -- memories -------------------------------------------------------------------------------


class MemoryFields(TypedDict, total=False):
    """Optional fields of a new memory."""

    subject: str
    attributes: Mapping[str, Any] | None
    embedding: Sequence[float] | None  # computed by the caller, for vector search


class MemoryFilters(TypedDict, total=False):
    """Filters of list_memories / iter_memories (combined with AND)."""

    category: str | int | None
    source: str | int | None
    subject: str | None
    stale: bool | None
    created_after: datetime | None
    created_before: datetime | None


class MemoryChanges(TypedDict, total=False):
    """Fields update_memory may change; only those given are sent in the field mask."""

    content: str
    category: str | int
    source: str | int
    subject: str
    attributes: Mapping[str, Any] | None
    stale: bool
    embedding: Sequence[float] | None  # None or [] removes it


def new_memory(
    content: str, category: str | int, source: str | int, fields: MemoryFields
) -> memory_pb2.NewMemory:
    """Build the NewMemory of an add call."""
    message = memory_pb2.NewMemory(
        content=content,
        category=category_value(category),
        source=source_value(source),
        subject=fields.get("subject", ""),
    )
    attributes = fields.get("attributes")
    if attributes is not None:
        message.attributes.CopyFrom(to_struct(attributes))
    message.embedding.extend(fields.get("embedding") or ())
    return message


def add_memory_request(
    namespace: str, content: str, category: str | int, source: str | int, fields: MemoryFields
) -> memory_pb2.AddMemoryRequest:
    """Build an AddMemoryRequest."""
    m = new_memory(content, category, source, fields)
    request = memory_pb2.AddMemoryRequest(
        namespace=namespace, content=m.content, category=m.category, source=m.source,
        subject=m.subject, embedding=m.embedding,
    )
    if m.HasField("attributes"):
        request.attributes.CopyFrom(m.attributes)
    return request


def add_memories_request(
    namespace: str, memories: list[memory_pb2.NewMemory | Mapping[str, Any]]
) -> memory_pb2.AddMemoriesRequest:
    """Build an AddMemoriesRequest from NewMemory messages or dicts with add_memory's arguments."""
    batch = []
    for item in memories:
        if isinstance(item, memory_pb2.NewMemory):
            batch.append(item)
        else:
            fields: MemoryFields = {}
            if "subject" in item:
                fields["subject"] = item["subject"]
            if "attributes" in item:
                fields["attributes"] = item["attributes"]
            if "embedding" in item:
                fields["embedding"] = item["embedding"]
            batch.append(new_memory(item["content"], item["category"], item["source"], fields))
    return memory_pb2.AddMemoriesRequest(namespace=namespace, memories=batch)


def list_memories_request(
    namespace: str, page_size: int, page_token: str, filters: MemoryFilters
) -> memory_pb2.ListMemoriesRequest:
    """Build a ListMemoriesRequest."""
    request = memory_pb2.ListMemoriesRequest(
        namespace=namespace, page_size=page_size, page_token=page_token
    )
    return _memory_filters(request, filters)


MemoryFilterRequest = TypeVar(
    "MemoryFilterRequest", memory_pb2.ListMemoriesRequest, memory_pb2.SearchMemoriesRequest
)


def _memory_filters(request: MemoryFilterRequest, filters: MemoryFilters) -> MemoryFilterRequest:
    """Set the filter fields that ListMemories and SearchMemories share."""
    if (category := filters.get("category")) is not None:
        request.category = category_value(category)
    if (source := filters.get("source")) is not None:
        request.source = source_value(source)
    if (subject := filters.get("subject")) is not None:
        request.subject = subject
    if (stale := filters.get("stale")) is not None:
        request.stale = stale
    if (after := filters.get("created_after")) is not None:
        request.created_after.CopyFrom(to_timestamp(after))
    if (before := filters.get("created_before")) is not None:
        request.created_before.CopyFrom(to_timestamp(before))
    return request


def update_memory_request(
    namespace: str, memory_id: int, changes: MemoryChanges
) -> memory_pb2.UpdateMemoryRequest:
    """Build an UpdateMemoryRequest whose field mask names exactly the given changes."""
    unknown = set(changes) - set(MemoryChanges.__annotations__)
    if unknown:
        raise TypeError(f"update_memory() got unexpected fields {sorted(unknown)}")
    memory = memory_pb2.Memory(id=memory_id)
    if "content" in changes:
        memory.content = changes["content"]
    if "category" in changes:
        memory.category = category_value(changes["category"])
    if "source" in changes:
        memory.source = source_value(changes["source"])
    if "subject" in changes:
        memory.subject = changes["subject"]
    if (attributes := changes.get("attributes")) is not None:
        memory.attributes.CopyFrom(to_struct(attributes))
    if "stale" in changes:
        memory.stale = changes["stale"]
    return memory_pb2.UpdateMemoryRequest(
        namespace=namespace, memory=memory, update_mask=FieldMask(paths=list(changes)),
        embedding=changes.get("embedding") or (),
    )


def _added(response: memory_pb2.AddMemoryResponse) -> Memory:
    return to_memory(response.memory, response.deduplicated)


def _added_many(response: memory_pb2.AddMemoriesResponse) -> list[Memory]:
    return [to_memory(r.memory, r.deduplicated) for r in response.results]


def _memory_page(response: memory_pb2.ListMemoriesResponse) -> Page[Memory]:
    return Page([to_memory(m) for m in response.memories], response.next_page_token)


def _memory(response: Any) -> Memory:
    return to_memory(response.memory)


def _nothing(response: Any) -> None:
    return None


# AddMemory and AddMemories are safe to retry: content dedup makes a repeat a restatement.
ADD_MEMORY = Rpc(_MEMORY_SERVICE + "AddMemory", memory_pb2.AddMemoryRequest,
                 memory_pb2.AddMemoryResponse, _added, idempotent=True)
ADD_MEMORIES = Rpc(_MEMORY_SERVICE + "AddMemories", memory_pb2.AddMemoriesRequest,
                   memory_pb2.AddMemoriesResponse, _added_many, idempotent=True)
GET_MEMORY = Rpc(_MEMORY_SERVICE + "GetMemory", memory_pb2.GetMemoryRequest,
                 memory_pb2.GetMemoryResponse, _memory, idempotent=True)
LIST_MEMORIES = Rpc(_MEMORY_SERVICE + "ListMemories", memory_pb2.ListMemoriesRequest,
                    memory_pb2.ListMemoriesResponse, _memory_page, idempotent=True)
UPDATE_MEMORY = Rpc(_MEMORY_SERVICE + "UpdateMemory", memory_pb2.UpdateMemoryRequest,
                    memory_pb2.UpdateMemoryResponse, _memory, idempotent=False)
DELETE_MEMORY = Rpc(_MEMORY_SERVICE + "DeleteMemory", memory_pb2.DeleteMemoryRequest,
                    memory_pb2.DeleteMemoryResponse, _nothing, idempotent=False)


# -- sessions -------------------------------------------------------------------------------


def trigger_value(value: str | int) -> Any:
    """End trigger name ("explicit", "timeout", "client_closed") or number -> enum number."""
    return _enum_value(session_pb2.SessionEndTrigger, "SESSION_END_TRIGGER_", value, "trigger")


def role_value(value: str | int) -> Any:
    """Role name ("user", "assistant", "system", "tool") or number -> enum number."""
    return _enum_value(session_pb2.MessageRole, "MESSAGE_ROLE_", value, "role")


def state_value(value: str | int) -> Any:
    """Session state name ("active", "ended") or number -> enum number."""
    return _enum_value(session_pb2.SessionState, "SESSION_STATE_", value, "state")


def order_value(value: str | int) -> Any:
    """Session order ("start_time", "last_activity") or number -> enum number."""
    return _enum_value(session_pb2.SessionOrder, "SESSION_ORDER_", value, "order_by")


def _optional_struct(message: Any, field: str) -> dict[str, Any] | None:
    if not message.HasField(field):
        return None
    result: dict[str, Any] = json_format.MessageToDict(getattr(message, field))
    return result


def to_session(message: session_pb2.Session) -> Session:
    """Session message -> Session."""
    ended = message.HasField("ended_at")
    return Session(
        id=message.id,
        namespace=message.namespace,
        state=_enum_name(session_pb2.SessionState, "SESSION_STATE_", message.state),
        started_at=to_datetime(message.started_at),
        ended_at=to_datetime(message.ended_at) if ended else None,
        end_trigger=(
            _enum_name(session_pb2.SessionEndTrigger, "SESSION_END_TRIGGER_", message.end_trigger)
            if message.end_trigger else None
        ),
        summary=message.summary,
        last_activity_at=to_datetime(message.last_activity_at),
        message_count=message.message_count,
        duration=message.duration.ToTimedelta() if message.HasField("duration") else None,
        metadata=_optional_struct(message, "metadata"),
        revision=message.revision,
    )


def to_message(message: session_pb2.Message) -> Message:
    """Message message -> Message."""
    return Message(
        id=message.id,
        namespace=message.namespace,
        session_id=message.session_id,
        sequence=message.sequence,
        role=_enum_name(session_pb2.MessageRole, "MESSAGE_ROLE_", message.role),
        content=message.content,
        model=message.model,
        tokens_used=message.tokens_used,
        tool_calls=(
            json_format.MessageToDict(message.tool_calls)
            if message.HasField("tool_calls") else None
        ),
        created_at=to_datetime(message.created_at),
        revision=message.revision,
    )


def to_event(message: session_pb2.SessionEvent) -> SessionEvent:
    """SessionEvent message -> SessionEvent."""
    return SessionEvent(
        id=message.id,
        namespace=message.namespace,
        session_id=message.session_id,
        event_type=message.event_type,
        data=_optional_struct(message, "data"),
        logged_at=to_datetime(message.logged_at),
        revision=message.revision,
    )


class MessageFields(TypedDict, total=False):
    """Optional fields of append_message."""

    model: str
    tokens_used: int
    tool_calls: Any
    embedding: Sequence[float] | None  # computed by the caller, for vector search


def start_session_request(
    namespace: str, session_id: str | None, metadata: Mapping[str, Any] | None
) -> session_pb2.StartSessionRequest:
    """Build a StartSessionRequest."""
    request = session_pb2.StartSessionRequest(namespace=namespace, session_id=session_id or "")
    if metadata is not None:
        request.metadata.CopyFrom(to_struct(metadata))
    return request


def log_session_event_request(
    namespace: str, session_id: str, event_type: str, data: Mapping[str, Any] | None
) -> session_pb2.LogSessionEventRequest:
    """Build a LogSessionEventRequest."""
    request = session_pb2.LogSessionEventRequest(
        namespace=namespace, session_id=session_id, event_type=event_type
    )
    if data is not None:
        request.data.CopyFrom(to_struct(data))
    return request


def append_message_request(
    namespace: str, session_id: str, role: str | int, content: str, fields: MessageFields
) -> session_pb2.AppendMessageRequest:
    """Build an AppendMessageRequest."""
    request = session_pb2.AppendMessageRequest(
        namespace=namespace, session_id=session_id, role=role_value(role), content=content,
        model=fields.get("model", ""), tokens_used=fields.get("tokens_used", 0),
        embedding=fields.get("embedding") or (),
    )
    tool_calls = fields.get("tool_calls")
    if tool_calls is not None:
        json_format.ParseDict(tool_calls, request.tool_calls)
    return request


def list_sessions_request(
    namespace: str, page_size: int, page_token: str, state: str | int | None,
    order_by: str | int | None,
) -> session_pb2.ListSessionsRequest:
    """Build a ListSessionsRequest."""
    request = session_pb2.ListSessionsRequest(
        namespace=namespace, page_size=page_size, page_token=page_token
    )
    if state is not None:
        request.state = state_value(state)
    if order_by is not None:
        request.order_by = order_value(order_by)
    return request


def list_session_events_request(
    namespace: str, session_id: str | None, day: str | date | None, page_size: int,
    page_token: str,
) -> session_pb2.ListSessionEventsRequest:
    """Build a ListSessionEventsRequest for one session or one UTC day."""
    request = session_pb2.ListSessionEventsRequest(
        namespace=namespace, page_size=page_size, page_token=page_token
    )
    if session_id is not None:
        request.session_id = session_id
    if day is not None:
        request.day = day.isoformat() if isinstance(day, date) else day
    return request


def _session(response: Any) -> Session:
    return to_session(response.session)


def _session_page(response: session_pb2.ListSessionsResponse) -> Page[Session]:
    return Page([to_session(s) for s in response.sessions], response.next_page_token)


def _event(response: session_pb2.LogSessionEventResponse) -> SessionEvent:
    return to_event(response.event)


def _event_page(response: session_pb2.ListSessionEventsResponse) -> Page[SessionEvent]:
    return Page([to_event(e) for e in response.events], response.next_page_token)


def _message(response: session_pb2.AppendMessageResponse) -> Message:
    return to_message(response.message)


def _message_page(response: session_pb2.ListMessagesResponse) -> Page[Message]:
    return Page([to_message(m) for m in response.messages], response.next_page_token)


START_SESSION = Rpc(_SESSION_SERVICE + "StartSession", session_pb2.StartSessionRequest,
                    session_pb2.StartSessionResponse, _session, idempotent=False)
END_SESSION = Rpc(_SESSION_SERVICE + "EndSession", session_pb2.EndSessionRequest,
                  session_pb2.EndSessionResponse, _session, idempotent=False)
GET_SESSION = Rpc(_SESSION_SERVICE + "GetSession", session_pb2.GetSessionRequest,
                  session_pb2.GetSessionResponse, _session, idempotent=True)
LIST_SESSIONS = Rpc(_SESSION_SERVICE + "ListSessions", session_pb2.ListSessionsRequest,
                    session_pb2.ListSessionsResponse, _session_page, idempotent=True)
LOG_SESSION_EVENT = Rpc(_SESSION_SERVICE + "LogSessionEvent", session_pb2.LogSessionEventRequest,
                        session_pb2.LogSessionEventResponse, _event, idempotent=False)
LIST_SESSION_EVENTS = Rpc(_SESSION_SERVICE + "ListSessionEvents",
                          session_pb2.ListSessionEventsRequest,
                          session_pb2.ListSessionEventsResponse, _event_page, idempotent=True)
APPEND_MESSAGE = Rpc(_SESSION_SERVICE + "AppendMessage", session_pb2.AppendMessageRequest,
                     session_pb2.AppendMessageResponse, _message, idempotent=False)
LIST_MESSAGES = Rpc(_SESSION_SERVICE + "ListMessages", session_pb2.ListMessagesRequest,
                    session_pb2.ListMessagesResponse, _message_page, idempotent=True)


# -- events, snapshots, preferences ---------------------------------------------------------


def _event_enum(enum: Any, prefix: str, field: str) -> Callable[[str | int], Any]:
    return lambda value: _enum_value(enum, prefix, value, field)


event_type_value = _event_enum(event_pb2.EventType, "EVENT_TYPE_", "type")
severity_value = _event_enum(event_pb2.EventSeverity, "EVENT_SEVERITY_", "severity")
event_source_value = _event_enum(event_pb2.EventSource, "EVENT_SOURCE_", "source")


class EventFields(TypedDict, total=False):
    """Optional fields of record_event."""

    node: str
    details: Mapping[str, Any] | None
    occurred_at: datetime | None


class EventFilters(TypedDict, total=False):
    """Filters of list_events (combined with AND); ``unresolved=True`` is ``resolved=False``."""

    types: Sequence[str | int]
    min_severity: str | int | None
    node: str | None
    source: str | int | None
    since: datetime | None
    until: datetime | None
    resolved: bool | None
    unresolved: bool | None


def to_event_record(message: event_pb2.Event) -> Event:
    """Event message -> Event."""
    return Event(
        id=message.id,
        namespace=message.namespace,
        occurred_at=to_datetime(message.occurred_at),
        type=_enum_name(event_pb2.EventType, "EVENT_TYPE_", message.type),
        severity=_enum_name(event_pb2.EventSeverity, "EVENT_SEVERITY_", message.severity),
        source=_enum_name(event_pb2.EventSource, "EVENT_SOURCE_", message.source),
        node=message.node,
        summary=message.summary,
        details=_optional_struct(message, "details"),
        resolved=message.resolved,
        resolved_at=to_datetime(message.resolved_at) if message.HasField("resolved_at") else None,
        resolved_by=message.resolved_by,
        revision=message.revision,
    )


def record_event_request(
    namespace: str, type: str | int, severity: str | int, source: str | int, summary: str,
    fields: EventFields,
) -> event_pb2.RecordEventRequest:
    """Build a RecordEventRequest."""
    request = event_pb2.RecordEventRequest(
        namespace=namespace, type=event_type_value(type), severity=severity_value(severity),
        source=event_source_value(source), summary=summary, node=fields.get("node", ""),
    )
    if (details := fields.get("details")) is not None:
        request.details.CopyFrom(to_struct(details))
    if (occurred_at := fields.get("occurred_at")) is not None:
        request.occurred_at.CopyFrom(to_timestamp(occurred_at))
    return request


def list_events_request(
    namespace: str, page_size: int, page_token: str, filters: EventFilters
) -> event_pb2.ListEventsRequest:
    """Build a ListEventsRequest."""
    request = event_pb2.ListEventsRequest(
        namespace=namespace, page_size=page_size, page_token=page_token
    )
    return _event_filters(request, filters)


EventFilterRequest = TypeVar(
    "EventFilterRequest", event_pb2.ListEventsRequest, event_pb2.SearchEventsRequest
)


def _event_filters(request: EventFilterRequest, filters: EventFilters) -> EventFilterRequest:
    """Set the filter fields that ListEvents and SearchEvents share."""
    request.types.extend(event_type_value(t) for t in filters.get("types", ()))
    if (min_severity := filters.get("min_severity")) is not None:
        request.min_severity = severity_value(min_severity)
    if (node := filters.get("node")) is not None:
        request.node = node
    if (source := filters.get("source")) is not None:
        request.source = event_source_value(source)
    if (since := filters.get("since")) is not None:
        request.since.CopyFrom(to_timestamp(since))
    if (until := filters.get("until")) is not None:
        request.until.CopyFrom(to_timestamp(until))
    if (resolved := filters.get("resolved")) is not None:
        request.resolved = resolved
    if (unresolved := filters.get("unresolved")) is not None:
        request.resolved = not unresolved
    return request


def to_snapshot(message: snapshot_pb2.Snapshot) -> Snapshot:
    """Snapshot message -> Snapshot."""
    return Snapshot(
        id=message.id,
        namespace=message.namespace,
        kind=message.kind,
        taken_at=to_datetime(message.taken_at),
        data=json_format.MessageToDict(message.data),
        revision=message.revision,
    )


def list_snapshots_request(
    namespace: str, kind: str, since: datetime | None, page_size: int, page_token: str
) -> snapshot_pb2.ListSnapshotsRequest:
    """Build a ListSnapshotsRequest."""
    request = snapshot_pb2.ListSnapshotsRequest(
        namespace=namespace, kind=kind, page_size=page_size, page_token=page_token
    )
    if since is not None:
        request.since.CopyFrom(to_timestamp(since))
    return request


def to_preference(message: preference_pb2.Preference) -> Preference:
    """Preference message -> Preference."""
    return Preference(
        namespace=message.namespace,
        key=message.key,
        value=json_format.MessageToDict(message.value),
        created_at=to_datetime(message.created_at),
        updated_at=to_datetime(message.updated_at),
        revision=message.revision,
    )


def set_preference_request(
    namespace: str, key: str, value: Any
) -> preference_pb2.SetPreferenceRequest:
    """Build a SetPreferenceRequest (value: any JSON value)."""
    request = preference_pb2.SetPreferenceRequest(namespace=namespace, key=key)
    json_format.ParseDict(value, request.value)
    return request


RECORD_EVENT = Rpc(_EVENT_SERVICE + "RecordEvent", event_pb2.RecordEventRequest,
                   event_pb2.RecordEventResponse, lambda r: to_event_record(r.event),
                   idempotent=False)
GET_EVENT = Rpc(_EVENT_SERVICE + "GetEvent", event_pb2.GetEventRequest,
                event_pb2.GetEventResponse, lambda r: to_event_record(r.event), idempotent=True)
LIST_EVENTS = Rpc(_EVENT_SERVICE + "ListEvents", event_pb2.ListEventsRequest,
                  event_pb2.ListEventsResponse,
                  lambda r: Page([to_event_record(e) for e in r.events], r.next_page_token),
                  idempotent=True)
RESOLVE_EVENT = Rpc(_EVENT_SERVICE + "ResolveEvent", event_pb2.ResolveEventRequest,
                    event_pb2.ResolveEventResponse, lambda r: to_event_record(r.event),
                    idempotent=False)
SAVE_SNAPSHOT = Rpc(_SNAPSHOT_SERVICE + "SaveSnapshot", snapshot_pb2.SaveSnapshotRequest,
                    snapshot_pb2.SaveSnapshotResponse, lambda r: to_snapshot(r.snapshot),
                    idempotent=False)
GET_LATEST_SNAPSHOT = Rpc(_SNAPSHOT_SERVICE + "GetLatestSnapshot",
                          snapshot_pb2.GetLatestSnapshotRequest,
                          snapshot_pb2.GetLatestSnapshotResponse,
                          lambda r: to_snapshot(r.snapshot), idempotent=True)
LIST_SNAPSHOTS = Rpc(_SNAPSHOT_SERVICE + "ListSnapshots", snapshot_pb2.ListSnapshotsRequest,
                     snapshot_pb2.ListSnapshotsResponse,
                     lambda r: Page([to_snapshot(s) for s in r.snapshots], r.next_page_token),
                     idempotent=True)
GET_PREFERENCE = Rpc(_PREFERENCE_SERVICE + "GetPreference", preference_pb2.GetPreferenceRequest,
                     preference_pb2.GetPreferenceResponse,
                     lambda r: to_preference(r.preference), idempotent=True)
# Setting the same value twice leaves the same state: safe to retry.
SET_PREFERENCE = Rpc(_PREFERENCE_SERVICE + "SetPreference", preference_pb2.SetPreferenceRequest,
                     preference_pb2.SetPreferenceResponse,
                     lambda r: to_preference(r.preference), idempotent=True)
LIST_PREFERENCES = Rpc(_PREFERENCE_SERVICE + "ListPreferences",
                       preference_pb2.ListPreferencesRequest,
                       preference_pb2.ListPreferencesResponse,
                       lambda r: Page([to_preference(p) for p in r.preferences],
                                      r.next_page_token),
                       idempotent=True)
DELETE_PREFERENCE = Rpc(_PREFERENCE_SERVICE + "DeletePreference",
                        preference_pb2.DeletePreferenceRequest,
                        preference_pb2.DeletePreferenceResponse, _nothing, idempotent=False)


# -- agent state ----------------------------------------------------------------------------


def to_state_entry(message: state_pb2.StateEntry) -> StateEntry:
    """StateEntry message -> StateEntry."""
    return StateEntry(
        namespace=message.namespace,
        key=message.key,
        value=json_format.MessageToDict(message.value),
        version=message.version,
        updated_at=to_datetime(message.updated_at),
        expires_at=to_datetime(message.expires_at) if message.HasField("expires_at") else None,
        revision=message.revision,
    )


def put_state_request(
    namespace: str, key: str, value: Any, expected_version: int | None,
    ttl: float | timedelta | None,
) -> state_pb2.PutStateRequest:
    """Build a PutStateRequest (ttl in seconds or a timedelta)."""
    request = state_pb2.PutStateRequest(namespace=namespace, key=key)
    json_format.ParseDict(value, request.value)
    if expected_version is not None:
        request.expected_version = expected_version
    if ttl is not None:
        request.ttl.FromTimedelta(ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl))
    return request


_STATE = lambda r: to_state_entry(r.entry)  # noqa: E731 - a converter, like the others
GET_STATE = Rpc(_STATE_SERVICE + "GetState", state_pb2.GetStateRequest,
                state_pb2.GetStateResponse, _STATE, idempotent=True)
# Retrying a put is only safe when it is conditional; the clients retry no put.
PUT_STATE = Rpc(_STATE_SERVICE + "PutState", state_pb2.PutStateRequest,
                state_pb2.PutStateResponse, _STATE, idempotent=False)
DELETE_STATE = Rpc(_STATE_SERVICE + "DeleteState", state_pb2.DeleteStateRequest,
                   state_pb2.DeleteStateResponse, _nothing, idempotent=False)
LIST_STATE = Rpc(_STATE_SERVICE + "ListState", state_pb2.ListStateRequest,
                 state_pb2.ListStateResponse,
                 lambda r: Page([to_state_entry(e) for e in r.entries], r.next_page_token),
                 idempotent=True)


# -- audit ----------------------------------------------------------------------------------


def run_status_value(value: str | int) -> Any:
    """Run status name ("running", "succeeded", "failed", "cancelled") or number -> enum."""
    return _enum_value(audit_pb2.RunStatus, "RUN_STATUS_", value, "status")


def _run_status(number: int) -> str:
    return _enum_name(audit_pb2.RunStatus, "RUN_STATUS_", number)


def _json_value(message: Any, field: str) -> Any:
    return json_format.MessageToDict(getattr(message, field)) if message.HasField(field) else None


def set_json(target: Any, value: Any) -> None:
    """Fill a google.protobuf.Value field from a Python value (None leaves it unset)."""
    if value is not None:
        json_format.ParseDict(value, target)


def to_tool_call(message: audit_pb2.ToolCall) -> ToolCall:
    """ToolCall message -> ToolCall."""
    return ToolCall(
        id=message.id, namespace=message.namespace, tool=message.tool,
        input=_json_value(message, "input"), session_id=message.session_id,
        cycle_id=message.cycle_id, started_at=to_datetime(message.started_at),
        status=_run_status(message.status), output=_json_value(message, "output"),
        error=message.error, duration_ms=message.duration_ms,
        finished_at=to_datetime(message.finished_at) if message.HasField("finished_at") else None,
        revision=message.revision,
    )


def to_cycle(message: audit_pb2.PlanningCycle) -> PlanningCycle:
    """PlanningCycle message -> PlanningCycle."""
    return PlanningCycle(
        id=message.id, namespace=message.namespace, goals=_json_value(message, "goals"),
        started_at=to_datetime(message.started_at), status=_run_status(message.status),
        outcomes=_json_value(message, "outcomes"),
        finished_at=to_datetime(message.finished_at) if message.HasField("finished_at") else None,
        revision=message.revision,
    )


def to_decision(message: audit_pb2.Decision) -> Decision:
    """Decision message -> Decision."""
    return Decision(
        id=message.id, namespace=message.namespace, cycle_id=message.cycle_id,
        reasoning=_json_value(message, "reasoning"), decision=message.decision,
        created_at=to_datetime(message.created_at), revision=message.revision,
    )


class ToolCallFilters(TypedDict, total=False):
    """Filters of list_tool_calls (combined with AND)."""

    tool: str
    status: str | int | None
    cycle_id: int
    session_id: str
    since: datetime | None
    until: datetime | None


def list_tool_calls_request(
    namespace: str, page_size: int, page_token: str, filters: ToolCallFilters
) -> audit_pb2.ListToolCallsRequest:
    """Build a ListToolCallsRequest."""
    request = audit_pb2.ListToolCallsRequest(
        namespace=namespace, page_size=page_size, page_token=page_token,
        tool=filters.get("tool", ""), cycle_id=filters.get("cycle_id", 0),
        session_id=filters.get("session_id", ""),
    )
    if (status := filters.get("status")) is not None:
        request.status = run_status_value(status)
    if (since := filters.get("since")) is not None:
        request.since.CopyFrom(to_timestamp(since))
    if (until := filters.get("until")) is not None:
        request.until.CopyFrom(to_timestamp(until))
    return request


_CALL = lambda r: to_tool_call(r.tool_call)  # noqa: E731
_CYCLE = lambda r: to_cycle(r.cycle)  # noqa: E731
START_TOOL_CALL = Rpc(_AUDIT_SERVICE + "StartToolCall", audit_pb2.StartToolCallRequest,
                      audit_pb2.StartToolCallResponse, _CALL, idempotent=False)
FINISH_TOOL_CALL = Rpc(_AUDIT_SERVICE + "FinishToolCall", audit_pb2.FinishToolCallRequest,
                       audit_pb2.FinishToolCallResponse, _CALL, idempotent=False)
GET_TOOL_CALL = Rpc(_AUDIT_SERVICE + "GetToolCall", audit_pb2.GetToolCallRequest,
                    audit_pb2.GetToolCallResponse, _CALL, idempotent=True)
LIST_TOOL_CALLS = Rpc(_AUDIT_SERVICE + "ListToolCalls", audit_pb2.ListToolCallsRequest,
                      audit_pb2.ListToolCallsResponse,
                      lambda r: Page([to_tool_call(c) for c in r.tool_calls], r.next_page_token),
                      idempotent=True)
START_PLANNING_CYCLE = Rpc(_AUDIT_SERVICE + "StartPlanningCycle",
                           audit_pb2.StartPlanningCycleRequest,
                           audit_pb2.StartPlanningCycleResponse, _CYCLE, idempotent=False)
FINISH_PLANNING_CYCLE = Rpc(_AUDIT_SERVICE + "FinishPlanningCycle",
                            audit_pb2.FinishPlanningCycleRequest,
                            audit_pb2.FinishPlanningCycleResponse, _CYCLE, idempotent=False)
LIST_PLANNING_CYCLES = Rpc(_AUDIT_SERVICE + "ListPlanningCycles",
                           audit_pb2.ListPlanningCyclesRequest,
                           audit_pb2.ListPlanningCyclesResponse,
                           lambda r: Page([to_cycle(c) for c in r.cycles], r.next_page_token),
                           idempotent=True)
RECORD_DECISION = Rpc(_AUDIT_SERVICE + "RecordDecision", audit_pb2.RecordDecisionRequest,
                      audit_pb2.RecordDecisionResponse, lambda r: to_decision(r.decision),
                      idempotent=False)
LIST_DECISIONS = Rpc(_AUDIT_SERVICE + "ListDecisions", audit_pb2.ListDecisionsRequest,
                     audit_pb2.ListDecisionsResponse,
                     lambda r: Page([to_decision(d) for d in r.decisions], r.next_page_token),
                     idempotent=True)


# -- collections ----------------------------------------------------------------------------

FieldSpec = Field | tuple[str, str] | tuple[str, str, Mapping[str, bool]] | Mapping[str, Any]
FilterSpec = tuple[str, str] | tuple[str, str, Any] | Mapping[str, Any]


def field_message(spec: FieldSpec) -> collection_pb2.Field:
    """("qty", "integer", {"indexed": True}), a dict, or a Field -> Field message."""
    if isinstance(spec, Field):
        name, kind, options = spec.name, spec.type, {
            "required": spec.required, "indexed": spec.indexed, "unique": spec.unique}
    elif isinstance(spec, Mapping):
        name, kind = spec["name"], spec["type"]
        options = {k: spec[k] for k in ("required", "indexed", "unique") if k in spec}
    else:
        name, kind = spec[0], spec[1]
        options = dict(spec[2]) if len(spec) > 2 else {}
    unknown = set(options) - {"required", "indexed", "unique"}
    if unknown:
        raise TypeError(f"unknown field options {sorted(unknown)}")
    return collection_pb2.Field(
        name=name, type=_enum_value(collection_pb2.FieldType, "FIELD_TYPE_", kind, "type"),
        **options,
    )


def filter_messages(where: Sequence[FilterSpec]) -> list[collection_pb2.Filter]:
    """[("symbol", "eq", "ETH"), ("qty", "is_null")] or dicts -> Filter messages."""
    messages = []
    for spec in where:
        if isinstance(spec, Mapping):
            field, op, value = spec["field"], spec["op"], spec.get("value")
        else:
            field, op = spec[0], spec[1]
            value = spec[2] if len(spec) > 2 else None
        message = collection_pb2.Filter(field=field, op=_enum_value(
            collection_pb2.FilterOperator, "FILTER_OPERATOR_", op, "op"))
        set_json(message.value, value)
        messages.append(message)
    return messages


def order_messages(order_by: Sequence[str]) -> list[collection_pb2.OrderBy]:
    """["-qty", "symbol"] -> OrderBy messages ("-" sorts descending)."""
    return [collection_pb2.OrderBy(field=o.removeprefix("-"), descending=o.startswith("-"))
            for o in order_by]


def to_collection(message: collection_pb2.Collection) -> Collection:
    """Collection message -> Collection."""
    return Collection(
        namespace=message.namespace, name=message.name,
        fields=[Field(f.name, _enum_name(collection_pb2.FieldType, "FIELD_TYPE_", f.type),
                      f.required, f.indexed, f.unique) for f in message.fields],
        created_at=to_datetime(message.created_at), revision=message.revision,
    )


def _rows(response: collection_pb2.QueryRowsResponse) -> Page[dict[str, Any]]:
    return Page([{"id": r.id, **json_format.MessageToDict(r.values)} for r in response.rows],
                response.next_page_token)


_COLLECTION = lambda r: to_collection(r.collection)  # noqa: E731
CREATE_COLLECTION = Rpc(_COLLECTION_SERVICE + "CreateCollection",
                        collection_pb2.CreateCollectionRequest,
                        collection_pb2.CreateCollectionResponse, _COLLECTION, idempotent=False)
GET_COLLECTION = Rpc(_COLLECTION_SERVICE + "GetCollection", collection_pb2.GetCollectionRequest,
                     collection_pb2.GetCollectionResponse, _COLLECTION, idempotent=True)
LIST_COLLECTIONS = Rpc(_COLLECTION_SERVICE + "ListCollections",
                       collection_pb2.ListCollectionsRequest,
                       collection_pb2.ListCollectionsResponse,
                       lambda r: Page([to_collection(c) for c in r.collections],
                                      r.next_page_token), idempotent=True)
ADD_FIELD = Rpc(_COLLECTION_SERVICE + "AddField", collection_pb2.AddFieldRequest,
                collection_pb2.AddFieldResponse, _COLLECTION, idempotent=False)
DROP_COLLECTION = Rpc(_COLLECTION_SERVICE + "DropCollection",
                      collection_pb2.DropCollectionRequest,
                      collection_pb2.DropCollectionResponse, _nothing, idempotent=False)
INSERT_ROWS = Rpc(_COLLECTION_SERVICE + "InsertRows", collection_pb2.InsertRowsRequest,
                  collection_pb2.InsertRowsResponse, lambda r: list(r.ids), idempotent=False)
QUERY_ROWS = Rpc(_COLLECTION_SERVICE + "QueryRows", collection_pb2.QueryRowsRequest,
                 collection_pb2.QueryRowsResponse, _rows, idempotent=True)
UPDATE_ROWS = Rpc(_COLLECTION_SERVICE + "UpdateRows", collection_pb2.UpdateRowsRequest,
                  collection_pb2.UpdateRowsResponse, lambda r: int(r.updated),
                  idempotent=False)
DELETE_ROWS = Rpc(_COLLECTION_SERVICE + "DeleteRows", collection_pb2.DeleteRowsRequest,
                  collection_pb2.DeleteRowsResponse, lambda r: int(r.deleted),
                  idempotent=False)


# -- watch ----------------------------------------------------------------------------------

WATCH_PATH = "/jarvis.memory.v1.WatchService/Watch"
_OPERATIONS = {watch_pb2.CHANGE_OPERATION_CREATE: "create",
               watch_pb2.CHANGE_OPERATION_UPDATE: "update",
               watch_pb2.CHANGE_OPERATION_DELETE: "delete"}


def to_change(message: watch_pb2.Change) -> Change:
    """Change message -> Change."""
    return Change(revision=message.revision, namespace=message.namespace, kind=message.kind,
                  key=message.key, operation=_OPERATIONS.get(message.operation, "unknown"),
                  time=to_datetime(message.time),
                  resource=_optional_struct(message, "resource"))


# -- search ---------------------------------------------------------------------------------


def mode_value(value: str | int) -> Any:
    """Search mode name ("keyword", "vector", "hybrid") or number -> SearchMode number."""
    return _enum_value(search_pb2.SearchMode, "SEARCH_MODE_", value, "mode")


def search_memories_request(
    namespace: str, query: str, limit: int, mode: str | int, embedding: Sequence[float] | None,
    filters: MemoryFilters,
) -> memory_pb2.SearchMemoriesRequest:
    """Build a SearchMemoriesRequest (the filters are list_memories')."""
    request = memory_pb2.SearchMemoriesRequest(
        namespace=namespace, query=query, limit=limit, mode=mode_value(mode),
        embedding=embedding or (),
    )
    return _memory_filters(request, filters)


class MessageSearchFilters(TypedDict, total=False):
    """Filters of search_messages (combined with AND)."""

    role: str | int | None
    created_after: datetime | None
    created_before: datetime | None


def search_messages_request(
    namespace: str, query: str, limit: int, mode: str | int, embedding: Sequence[float] | None,
    session_id: str | None, filters: MessageSearchFilters,
) -> session_pb2.SearchMessagesRequest:
    """Build a SearchMessagesRequest."""
    request = session_pb2.SearchMessagesRequest(
        namespace=namespace, query=query, limit=limit, mode=mode_value(mode),
        embedding=embedding or (),
    )
    if session_id is not None:
        request.session_id = session_id
    if (role := filters.get("role")) is not None:
        request.role = role_value(role)
    if (after := filters.get("created_after")) is not None:
        request.created_after.CopyFrom(to_timestamp(after))
    if (before := filters.get("created_before")) is not None:
        request.created_before.CopyFrom(to_timestamp(before))
    return request


def search_events_request(
    namespace: str, query: str, limit: int, filters: EventFilters
) -> event_pb2.SearchEventsRequest:
    """Build a SearchEventsRequest (the filters are list_events')."""
    request = event_pb2.SearchEventsRequest(namespace=namespace, query=query, limit=limit)
    return _event_filters(request, filters)


def _memory_hits(response: memory_pb2.SearchMemoriesResponse) -> list[MemoryHit]:
    return [MemoryHit(to_memory(h.memory), h.score, h.snippet) for h in response.hits]


def _message_hits(response: session_pb2.SearchMessagesResponse) -> list[MessageHit]:
    return [MessageHit(to_message(h.message), h.score, h.snippet) for h in response.hits]


def _event_hits(response: event_pb2.SearchEventsResponse) -> list[EventHit]:
    return [EventHit(to_event_record(h.event), h.score, h.snippet) for h in response.hits]


SEARCH_MEMORIES = Rpc(_MEMORY_SERVICE + "SearchMemories", memory_pb2.SearchMemoriesRequest,
                      memory_pb2.SearchMemoriesResponse, _memory_hits, idempotent=True)
SEARCH_MESSAGES = Rpc(_SESSION_SERVICE + "SearchMessages", session_pb2.SearchMessagesRequest,
                      session_pb2.SearchMessagesResponse, _message_hits, idempotent=True)
SEARCH_EVENTS = Rpc(_EVENT_SERVICE + "SearchEvents", event_pb2.SearchEventsRequest,
                    event_pb2.SearchEventsResponse, _event_hits, idempotent=True)
