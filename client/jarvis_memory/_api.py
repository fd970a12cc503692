"""What the sync and async clients share: RPC descriptions, request builders, converters."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypedDict, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from jarvis.memory.v1 import memory_pb2
from jarvis_memory._retry import RetryPolicy
from jarvis_memory.errors import JarvisMemoryError
from jarvis_memory.types import Memory, Page

R = TypeVar("R")

_MEMORY_SERVICE = "/jarvis.memory.v1.MemoryService/"


@dataclass(frozen=True)
class Rpc(Generic[R]):
    """One unary method: its path, message types, whether a retry is safe, and the result."""

    path: str
    request: type[Message]
    response: type[Message]
    convert: Callable[[Any], R]
    idempotent: bool



DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0


class ClientBase:
    """A connection to a jarvis-memory daemon: what Client and AsyncClient share.

    ``namespace`` is used by every call that does not name its own ("" means "default").
    ``timeout`` is each call's deadline in seconds, retries included; ``retry`` says how calls
    that are safe to repeat are retried on UNAVAILABLE. ``options`` are gRPC channel options.
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
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.channel = self._open_channel(target, list(options))
        self._methods: dict[str, Any] = {}

    def _open_channel(self, target: str, options: list[tuple[str, Any]]) -> Any:
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


# -- conversions ----------------------------------------------------------------------------


def _enum_value(enum: Any, prefix: str, value: str | int, field: str) -> int:
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
    return message


def add_memory_request(
    namespace: str, content: str, category: str | int, source: str | int, fields: MemoryFields
) -> memory_pb2.AddMemoryRequest:
    """Build an AddMemoryRequest."""
    m = new_memory(content, category, source, fields)
    request = memory_pb2.AddMemoryRequest(
        namespace=namespace, content=m.content, category=m.category, source=m.source,
        subject=m.subject,
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
            batch.append(new_memory(item["content"], item["category"], item["source"], fields))
    return memory_pb2.AddMemoriesRequest(namespace=namespace, memories=batch)


def list_memories_request(
    namespace: str, page_size: int, page_token: str, filters: MemoryFilters
) -> memory_pb2.ListMemoriesRequest:
    """Build a ListMemoriesRequest."""
    request = memory_pb2.ListMemoriesRequest(
        namespace=namespace, page_size=page_size, page_token=page_token
    )
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
        namespace=namespace, memory=memory, update_mask=FieldMask(paths=list(changes))
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
