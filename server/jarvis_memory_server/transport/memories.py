"""MemoryService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from jarvis.memory.v1 import common_pb2, memory_pb2, memory_pb2_grpc

from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.service.memories import MemoryRow, MemoryService, NewMemory
from jarvis_memory_server.transport.convert import (
    EnumNames,
    json_to_struct,
    micros,
    struct_to_dict,
    timestamp,
)
from jarvis_memory_server.transport.rpc import read_rpc, write_rpc

CATEGORY = EnumNames(memory_pb2.MemoryCategory, "MEMORY_CATEGORY_")
SOURCE = EnumNames(memory_pb2.MemorySource, "MEMORY_SOURCE_")
Context: TypeAlias = grpc.aio.ServicerContext


def memory_to_pb(row: MemoryRow) -> memory_pb2.Memory:
    """Stored memory -> Memory message."""
    message = memory_pb2.Memory(
        id=row.id,
        namespace=row.namespace,
        content=row.content,
        content_hash=row.content_hash.hex(),
        category=CATEGORY.to_number[row.category],
        source=SOURCE.to_number[row.source],
        subject=row.subject,
        stale=bool(row.stale),
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
        restated_count=row.restated_count,
        revision=row.revision,
    )
    if row.last_accessed_at is not None:
        message.last_accessed_at.CopyFrom(timestamp(row.last_accessed_at))
    if row.attributes is not None:
        message.attributes.CopyFrom(json_to_struct(row.attributes))
    return message


def new_memory(
    message: memory_pb2.AddMemoryRequest | memory_pb2.NewMemory, prefix: str = ""
) -> NewMemory:
    """AddMemoryRequest or NewMemory -> the service's NewMemory."""
    return NewMemory(
        content=message.content,
        category=CATEGORY.required(message.category, prefix + "category"),
        source=SOURCE.required(message.source, prefix + "source"),
        subject=message.subject,
        attributes=struct_to_dict(message.attributes) if message.HasField("attributes") else None,
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Serves jarvis.memory.v1.MemoryService."""

    def __init__(self, memories: MemoryService) -> None:
        self._memories = memories
        self.writable = memories.writable

    def _header(self) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(revision=self._memories.revision)

    @write_rpc
    def AddMemory(
        self, request: memory_pb2.AddMemoryRequest, context: Context
    ) -> memory_pb2.AddMemoryResponse:
        namespace = resolve_namespace(request.namespace)
        row, deduplicated = self._memories.add(namespace, new_memory(request))
        return memory_pb2.AddMemoryResponse(
            header=self._header(), memory=memory_to_pb(row), deduplicated=deduplicated
        )

    @write_rpc
    def AddMemories(
        self, request: memory_pb2.AddMemoriesRequest, context: Context
    ) -> memory_pb2.AddMemoriesResponse:
        namespace = resolve_namespace(request.namespace)
        batch = [new_memory(m, f"memories[{i}].") for i, m in enumerate(request.memories)]
        results = self._memories.add_many(namespace, batch)
        return memory_pb2.AddMemoriesResponse(
            header=self._header(),
            results=[
                memory_pb2.AddMemoryResult(memory=memory_to_pb(row), deduplicated=dedup)
                for row, dedup in results
            ],
        )

    @read_rpc
    def GetMemory(
        self, request: memory_pb2.GetMemoryRequest, context: Context
    ) -> memory_pb2.GetMemoryResponse:
        row = self._memories.get(resolve_namespace(request.namespace), request.id)
        return memory_pb2.GetMemoryResponse(header=self._header(), memory=memory_to_pb(row))

    @read_rpc
    def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: Context
    ) -> memory_pb2.ListMemoriesResponse:
        rows, next_token = self._memories.list_page(
            resolve_namespace(request.namespace),
            size=request.page_size,
            token=request.page_token,
            category=CATEGORY.optional(request.category, "category"),
            source=SOURCE.optional(request.source, "source"),
            subject=request.subject if request.HasField("subject") else None,
            stale=request.stale if request.HasField("stale") else None,
            created_after_us=(
                micros(request.created_after, "created_after")
                if request.HasField("created_after") else None
            ),
            created_before_us=(
                micros(request.created_before, "created_before")
                if request.HasField("created_before") else None
            ),
        )
        return memory_pb2.ListMemoriesResponse(
            header=self._header(),
            memories=[memory_to_pb(row) for row in rows],
            next_page_token=next_token,
        )

    @write_rpc
    def UpdateMemory(
        self, request: memory_pb2.UpdateMemoryRequest, context: Context
    ) -> memory_pb2.UpdateMemoryResponse:
        namespace = resolve_namespace(request.namespace)
        given = request.memory
        changes: dict[str, object] = {}
        for path in request.update_mask.paths:
            if path == "content":
                changes["content"] = given.content
            elif path == "category":
                changes["category"] = CATEGORY.required(given.category, "memory.category")
            elif path == "source":
                changes["source"] = SOURCE.required(given.source, "memory.source")
            elif path == "subject":
                changes["subject"] = given.subject
            elif path == "attributes":
                changes["attributes"] = (
                    struct_to_dict(given.attributes) if given.HasField("attributes") else None
                )
            elif path == "stale":
                changes["stale"] = given.stale
            else:
                raise InvalidArgument(
                    "update_mask",
                    f"{path!r} is not an updatable field (content, category, source, subject, "
                    "attributes, stale)",
                )
        row = self._memories.update(namespace, given.id, changes)
        return memory_pb2.UpdateMemoryResponse(header=self._header(), memory=memory_to_pb(row))

    @write_rpc
    def DeleteMemory(
        self, request: memory_pb2.DeleteMemoryRequest, context: Context
    ) -> memory_pb2.DeleteMemoryResponse:
        self._memories.delete(resolve_namespace(request.namespace), request.id)
        return memory_pb2.DeleteMemoryResponse(header=self._header())
