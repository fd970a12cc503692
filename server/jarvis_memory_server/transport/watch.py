"""WatchService servicer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from jarvis.memory.v1 import watch_pb2, watch_pb2_grpc
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


class ChangeMessages:
    """Change messages built once per change and shared by every watcher that sends it.

    Building one (the resource's JSON into a Struct) costs far more than copying it, and with
    many watchers every change is sent many times. The newest ``size`` are kept.
    """

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._messages: dict[int, watch_pb2.Change] = {}

    def get(self, change: ChangeRow) -> watch_pb2.Change:
        """The message of a change."""
        message = self._messages.get(change.revision)
        if message is None:
            message = watch_pb2.Change()
            fill_change(message, change)
            self._messages[change.revision] = message
            if len(self._messages) > self._size:  # dicts keep insertion order: drop the oldest
                del self._messages[next(iter(self._messages))]
        return message

    def response(self, changes: list[ChangeRow]) -> watch_pb2.WatchResponse:
        """A batch of committed changes -> WatchResponse."""
        response = watch_pb2.WatchResponse(changes=[self.get(change) for change in changes])
        response.header.revision = changes[-1].revision
        return response


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


class WatchServicer(ServicerBase, watch_pb2_grpc.WatchServiceServicer):
    """Serves jarvis.memory.v1.WatchService."""

    def __init__(self, watch: WatchService, auth: Authenticator) -> None:
        super().__init__(watch, auth, watch_pb2.DESCRIPTOR.services_by_name["WatchService"])
        self._watch = watch
        self._messages = ChangeMessages()

    @stream_rpc
    async def Watch(
        self, request: watch_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[watch_pb2.WatchResponse]:
        changes = self._watch.watch(resolve_namespace(request.namespace),
                                    tuple(request.kinds), request.start_revision)
        async for batch in changes:
            yield self._messages.response(batch)
