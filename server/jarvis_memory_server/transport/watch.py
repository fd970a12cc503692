"""WatchService servicer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from jarvis.memory.v1 import watch_pb2, watch_pb2_grpc
from jarvis.memory.v1.common_pb2 import ResponseHeader
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.service.watch import WatchService
from jarvis_memory_server.store.writes import ChangeRow
from jarvis_memory_server.transport.convert import set_timestamp
from jarvis_memory_server.transport.rpc import ServicerBase, stream_rpc

OPERATION = {"create": watch_pb2.CHANGE_OPERATION_CREATE,
             "update": watch_pb2.CHANGE_OPERATION_UPDATE,
             "delete": watch_pb2.CHANGE_OPERATION_DELETE}
Context: TypeAlias = grpc.aio.ServicerContext


def fill_change(message: watch_pb2.Change, change: ChangeRow) -> None:
    """Write a committed change into a Change message."""
    message.revision = change.revision
    message.namespace = change.namespace
    message.kind = change.kind
    message.key = change.key
    message.operation = OPERATION[change.operation]
    set_timestamp(message.time, change.created_at)
    if change.resource is not None:
        message.resource.update(json.loads(change.resource))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# WatchResponse's field numbers with the length-delimited wire type: header (1), changes (3).
_HEADER_TAG, _CHANGES_TAG = b"\x0a", b"\x1a"


class ChangeMessages:
    """Serialised Change messages, built once per change and shared by every watcher.

    With many watchers every change is sent many times; building its message (the resource's
    JSON into a Struct), copying it into each response and serialising it again cost more than
    the write did. Instead each change is serialised once, and a response is assembled as the
    protobuf wire format of a WatchResponse: the header, then each change as field 3. The
    newest ``size`` changes are kept.
    """

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._messages: dict[int, bytes] = {}

    def get(self, change: ChangeRow) -> bytes:
        """The serialised Change message of a change."""
        data = self._messages.get(change.revision)
        if data is None:
            message = watch_pb2.Change()
            fill_change(message, change)
            data = self._messages[change.revision] = message.SerializeToString()
            if len(self._messages) > self._size:  # dicts keep insertion order: drop the oldest
                del self._messages[next(iter(self._messages))]
        return data

    def response(self, changes: list[ChangeRow]) -> bytes:
        """A batch of committed changes -> a serialised WatchResponse."""
        header = ResponseHeader(revision=changes[-1].revision).SerializeToString()
        parts = [_HEADER_TAG, _varint(len(header)), header]
        for change in changes:
            data = self.get(change)
            parts += (_CHANGES_TAG, _varint(len(data)), data)
        return b"".join(parts)


class WatchServicer(ServicerBase, watch_pb2_grpc.WatchServiceServicer):
    """Serves jarvis.memory.v1.WatchService."""

    def __init__(self, watch: WatchService, auth: Authenticator) -> None:
        super().__init__(watch, auth, watch_pb2.DESCRIPTOR.services_by_name["WatchService"])
        self._watch = watch
        self._messages = ChangeMessages()

    @stream_rpc
    async def Watch(  # type: ignore[override]  # responses leave pre-serialised
        self, request: watch_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[bytes]:
        # Yields serialised WatchResponses: see register() and ChangeMessages.
        changes = self._watch.watch(resolve_namespace(request.namespace),
                                    tuple(request.kinds), request.start_revision)
        async for batch in changes:
            yield self._messages.response(batch)


def register(servicer: WatchServicer, server: grpc.aio.Server) -> None:
    """Serve WatchService; its responses leave as the bytes ChangeMessages assembled."""
    handlers = {
        "Watch": grpc.unary_stream_rpc_method_handler(
            servicer.Watch,
            request_deserializer=watch_pb2.WatchRequest.FromString,
            response_serializer=bytes,  # already serialised
        ),
    }
    name = watch_pb2.DESCRIPTOR.services_by_name["WatchService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
