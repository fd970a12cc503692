"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc
from google.protobuf.message import Message

from jarvis.memory.v1 import memory_pb2
from jarvis_memory import _api as api
from jarvis_memory.errors import from_rpc_error
from jarvis_memory.types import Memory, Page

R = TypeVar("R")

class Client(api.ClientBase):
    """A connection to a jarvis-memory daemon (see ClientBase for the arguments)."""

    def _open_channel(self, target: str, options: list[tuple[str, Any]]) -> Any:
        return grpc.insecure_channel(target, options=options)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(self, rpc: api.Rpc[R], request: Message, timeout: float | None = None) -> R:
        method = self._method(rpc)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 1
        while True:
            try:
                remaining = max(0.0, deadline - time.monotonic())
                return rpc.convert(method(request, timeout=remaining))
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            pause = self._retry_pause(rpc, error, attempt, deadline)
            if pause is None:
                raise error
            time.sleep(pause)
            attempt += 1

    # -- memories ---------------------------------------------------------------------------

    def add_memory(
        self, content: str, *, category: str | int, source: str | int,
        namespace: str | None = None, **fields: Unpack[api.MemoryFields],
    ) -> Memory:
        """Store a memory, or return the existing one with the same normalised content.

        The result's ``deduplicated`` is True when the memory already existed. Raises
        InvalidArgument for empty or oversized content and unknown categories or sources.
        """
        request = api.add_memory_request(self._ns(namespace), content, category, source, fields)
        return self._unary(api.ADD_MEMORY, request)

    def add_memories(
        self, memories: list[memory_pb2.NewMemory | Mapping[str, Any]], *,
        namespace: str | None = None,
    ) -> list[Memory]:
        """Add up to 1000 memories in one transaction (dicts take add_memory's arguments).

        Returns one Memory per input, in order. Raises InvalidArgument naming the bad item.
        """
        request = api.add_memories_request(self._ns(namespace), memories)
        return self._unary(api.ADD_MEMORIES, request)

    def get_memory(self, memory_id: int, *, namespace: str | None = None) -> Memory:
        """Return a memory by id. Raises NotFound."""
        request = memory_pb2.GetMemoryRequest(namespace=self._ns(namespace), id=memory_id)
        return self._unary(api.GET_MEMORY, request)

    def list_memories(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None,
        **filters: Unpack[api.MemoryFilters],
    ) -> Page[Memory]:
        """Return one page of memories, newest first; ``.next_page_token`` fetches the next."""
        request = api.list_memories_request(self._ns(namespace), page_size, page_token, filters)
        return self._unary(api.LIST_MEMORIES, request)

    def iter_memories(
        self, *, page_size: int = 0, namespace: str | None = None,
        **filters: Unpack[api.MemoryFilters],
    ) -> Iterator[Memory]:
        """Iterate over every matching memory, newest first, fetching pages as needed."""
        token = ""
        while True:
            page = self.list_memories(
                page_size=page_size, page_token=token, namespace=namespace, **filters
            )
            yield from page
            token = page.next_page_token
            if not token:
                return

    def update_memory(
        self, memory_id: int, *, namespace: str | None = None, **changes: Unpack[api.MemoryChanges]
    ) -> Memory:
        """Change the given fields of a memory and return it. Raises NotFound, AlreadyExists."""
        request = api.update_memory_request(self._ns(namespace), memory_id, changes)
        return self._unary(api.UPDATE_MEMORY, request)

    def delete_memory(self, memory_id: int, *, namespace: str | None = None) -> None:
        """Delete a memory. Raises NotFound."""
        request = memory_pb2.DeleteMemoryRequest(namespace=self._ns(namespace), id=memory_id)
        self._unary(api.DELETE_MEMORY, request)
