"""MemoryService servicer."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any, TypeAlias

import grpc

from jarvis.memory.v1 import memory_pb2, memory_pb2_grpc
from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.service.memories import (
    ERASE_BATCH,
    MemoryRow,
    MemoryService,
    NewMemory,
    Version,
    memory_filters,
)
from jarvis_memory_server.service.search import SearchService
from jarvis_memory_server.store.search import MEMORIES
from jarvis_memory_server.transport.convert import (
    EnumNames,
    duration_micros,
    json_input,
    micros,
    set_json,
    set_timestamp,
)
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, steps_rpc, write_rpc
from jarvis_memory_server.transport.search import add_hits, search_request

CATEGORY = EnumNames(memory_pb2.MemoryCategory, "MEMORY_CATEGORY_")
SOURCE = EnumNames(memory_pb2.MemorySource, "MEMORY_SOURCE_")
OPERATION = EnumNames(memory_pb2.MemoryOperation, "MEMORY_OPERATION_")
Context: TypeAlias = grpc.aio.ServicerContext


def fill_memory(message: memory_pb2.Memory, row: MemoryRow) -> memory_pb2.Memory:
    """Write a stored memory into a Memory message (in place: no copy into the response)."""
    message.id = row.id
    message.namespace = row.namespace
    message.content = row.content
    message.content_hash = row.content_hash.hex()
    message.category = CATEGORY.to_number[row.category]
    message.source = SOURCE.to_number[row.source]
    message.subject = row.subject
    message.stale = bool(row.stale)
    message.restated_count = row.restated_count
    message.revision = row.revision
    set_timestamp(message.created_at, row.created_at)
    set_timestamp(message.updated_at, row.updated_at)
    if row.last_accessed_at is not None:
        set_timestamp(message.last_accessed_at, row.last_accessed_at)
    set_json(message, "attributes", row.attributes)
    if row.superseded_by is not None:
        message.superseded_by = row.superseded_by
        set_timestamp(message.superseded_at, row.superseded_at)  # type: ignore[arg-type]
    if row.supersedes is not None:
        message.supersedes.extend(json.loads(row.supersedes))
    if row.valid_from is not None:
        set_timestamp(message.valid_from, row.valid_from)
    if row.valid_to is not None:
        set_timestamp(message.valid_to, row.valid_to)
    if row.expires_at is not None:
        set_timestamp(message.expires_at, row.expires_at)
    return message


def optional_micros(message: Any, name: str, prefix: str = "") -> int | None:
    """A Timestamp field of a request in microseconds; None when unset."""
    return micros(getattr(message, name), prefix + name) if message.HasField(name) else None


def fill_version(message: memory_pb2.MemoryVersion, version: Version) -> None:
    """Write one version of a memory into a MemoryVersion message."""
    fill_memory(message.memory, version.memory)
    message.revision = version.revision
    set_timestamp(message.time, version.time)
    message.operation = OPERATION.to_number[version.operation]
    message.changed_fields.extend(version.changed_fields)
    message.credential = version.credential or ""


def new_memory(
    message: memory_pb2.AddMemoryRequest | memory_pb2.NewMemory, prefix: str = ""
) -> NewMemory:
    """AddMemoryRequest or NewMemory -> the service's NewMemory."""
    return NewMemory(
        content=message.content,
        category=CATEGORY.required(message.category, prefix + "category"),
        source=SOURCE.required(message.source, prefix + "source"),
        subject=message.subject,
        attributes=json_input(message, "attributes", prefix),
        embedding=message.embedding,
        supersedes=message.supersedes,
        valid_from=optional_micros(message, "valid_from", prefix),
        valid_to=optional_micros(message, "valid_to", prefix),
        ttl_us=(duration_micros(message.ttl, prefix + "ttl")
                if message.HasField("ttl") else None),
        expires_at=optional_micros(message, "expires_at", prefix),
    )


def memory_filter_args(
    request: memory_pb2.ListMemoriesRequest | memory_pb2.SearchMemoriesRequest
    | memory_pb2.ForgetMemoriesRequest,
) -> dict[str, Any]:
    """The filters of a ListMemories or SearchMemories request, as memory_filters' arguments."""
    return {
        "category": CATEGORY.optional(request.category, "category"),
        "source": SOURCE.optional(request.source, "source"),
        "subject": request.subject if request.HasField("subject") else None,
        "stale": request.stale if request.HasField("stale") else None,
        "created_after_us": optional_micros(request, "created_after"),
        "created_before_us": optional_micros(request, "created_before"),
    }


def read_filter_args(
    request: memory_pb2.ListMemoriesRequest | memory_pb2.SearchMemoriesRequest,
) -> dict[str, Any]:
    """memory_filter_args, and which memories a read sees (include_superseded, as_of)."""
    return {**memory_filter_args(request), "include_superseded": request.include_superseded,
            "as_of_us": optional_micros(request, "as_of")}


class MemoryServicer(ServicerBase, memory_pb2_grpc.MemoryServiceServicer):
    """Serves jarvis.memory.v1.MemoryService."""

    def __init__(
        self, memories: MemoryService, search: SearchService, auth: Authenticator
    ) -> None:
        super().__init__(memories, auth, memory_pb2.DESCRIPTOR.services_by_name["MemoryService"])
        self._memories = memories
        self._search = search

    @write_rpc
    def AddMemory(
        self, request: memory_pb2.AddMemoryRequest, context: Context
    ) -> memory_pb2.AddMemoryResponse:
        namespace = resolve_namespace(request.namespace)
        row, deduplicated = self._memories.add(namespace, new_memory(request))
        response = memory_pb2.AddMemoryResponse(deduplicated=deduplicated)
        fill_memory(response.memory, row)
        return response

    @write_rpc
    def AddMemories(
        self, request: memory_pb2.AddMemoriesRequest, context: Context
    ) -> memory_pb2.AddMemoriesResponse:
        namespace = resolve_namespace(request.namespace)
        batch = [new_memory(m, f"memories[{i}].") for i, m in enumerate(request.memories)]
        response = memory_pb2.AddMemoriesResponse()
        for row, deduplicated in self._memories.add_many(namespace, batch):
            fill_memory(response.results.add(deduplicated=deduplicated).memory, row)
        return response

    @read_rpc
    def GetMemory(
        self, request: memory_pb2.GetMemoryRequest, context: Context
    ) -> memory_pb2.GetMemoryResponse:
        row = self._memories.get(resolve_namespace(request.namespace), request.id)
        response = memory_pb2.GetMemoryResponse()
        fill_memory(response.memory, row)
        return response

    @read_rpc
    def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: Context
    ) -> memory_pb2.ListMemoriesResponse:
        rows, next_token = self._memories.list_page(
            resolve_namespace(request.namespace),
            size=request.page_size,
            token=request.page_token,
            **read_filter_args(request),
        )
        response = memory_pb2.ListMemoriesResponse(next_page_token=next_token)
        for row in rows:
            fill_memory(response.memories.add(), row)
        return response

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
            elif path in ("attributes", "attributes_json"):  # one field, in either form
                changes["attributes"] = json_input(given, "attributes", "memory.")
            elif path == "stale":
                changes["stale"] = given.stale
            elif path == "embedding":
                changes["embedding"] = request.embedding
            elif path in ("valid_from", "valid_to", "expires_at"):
                changes[path] = optional_micros(given, path, "memory.")
            elif path == "ttl":
                changes["ttl"] = (duration_micros(request.ttl, "ttl")
                                  if request.HasField("ttl") else None)
            else:
                raise InvalidArgument(
                    "update_mask",
                    f"{path!r} is not an updatable field (content, category, source, subject, "
                    "attributes, stale, embedding, valid_from, valid_to, expires_at, ttl)",
                )
        if request.supersedes:
            changes["supersedes"] = list(request.supersedes)
        row = self._memories.update(namespace, given.id, changes)
        response = memory_pb2.UpdateMemoryResponse()
        fill_memory(response.memory, row)
        return response

    @write_rpc
    def DeleteMemory(
        self, request: memory_pb2.DeleteMemoryRequest, context: Context
    ) -> memory_pb2.DeleteMemoryResponse:
        self._memories.delete(resolve_namespace(request.namespace), request.id)
        return memory_pb2.DeleteMemoryResponse()

    @read_rpc
    async def SearchMemories(
        self, request: memory_pb2.SearchMemoriesRequest, context: Context
    ) -> memory_pb2.SearchMemoriesResponse:
        filters = self._memories.read_filters(
            resolve_namespace(request.namespace), memory_filters(**read_filter_args(request)))
        hits = await self._search.run(MEMORIES, search_request(
            self._search, request, filters, recency_weight=request.recency_weight))
        response = memory_pb2.SearchMemoriesResponse()
        add_hits(response.hits, hits, "memory", fill_memory, MemoryRow)
        return response

    @read_rpc
    def GetMemoryHistory(
        self, request: memory_pb2.GetMemoryHistoryRequest, context: Context
    ) -> memory_pb2.GetMemoryHistoryResponse:
        versions, next_token = self._memories.history_page(
            resolve_namespace(request.namespace), request.id, size=request.page_size,
            token=request.page_token)
        response = memory_pb2.GetMemoryHistoryResponse(next_page_token=next_token)
        for version in versions:
            fill_version(response.versions.add(), version)
        return response

    @steps_rpc
    async def ForgetMemories(
        self, request: memory_pb2.ForgetMemoriesRequest, context: Context
    ) -> memory_pb2.ForgetMemoriesResponse:
        namespace = resolve_namespace(request.namespace)
        filters = memory_filters(**memory_filter_args(request))
        ids = await asyncio.to_thread(
            self._memories.forget_targets, namespace, filters, list(request.ids))
        response = memory_pb2.ForgetMemoriesResponse(count=len(ids), ids=ids)
        if request.dry_run or not ids:
            return response
        # What the change log says of them: read off the loop, then, for changes logged since,
        # in each erasing write (a scan of the log's newest part only).
        scanned = self.revision
        logged = await asyncio.to_thread(self._memories.logged_changes, namespace, ids, 0)
        erased: list[int] = []
        for start in range(0, len(ids), ERASE_BATCH):
            chunk = ids[start:start + ERASE_BATCH]
            revisions = [r for memory_id in chunk for r in logged.get(memory_id, ())]
            done, _ = await self.run_write(
                functools.partial(self._memories.erase, namespace, chunk, revisions, scanned))
            erased += done
        del response.ids[:]
        response.ids.extend(erased)
        response.count = len(erased)
        return response

