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


def watch_response(change: ChangeRow) -> watch_pb2.WatchResponse:
    """A committed change -> WatchResponse."""
    response = watch_pb2.WatchResponse()
    response.header.revision = change.revision
    message = response.change
    message.revision = change.revision
    message.namespace = change.namespace
    message.kind = change.kind
    message.key = change.key
    message.operation = OPERATION[change.operation]
    set_timestamp(message.time, change.created_at)
    if change.resource is not None:
        message.resource.update(json.loads(change.resource))
    return response


class WatchServicer(ServicerBase, watch_pb2_grpc.WatchServiceServicer):
    """Serves jarvis.memory.v1.WatchService."""

    def __init__(self, watch: WatchService, auth: Authenticator) -> None:
        super().__init__(watch, auth, watch_pb2.DESCRIPTOR.services_by_name["WatchService"])
        self._watch = watch

    @stream_rpc
    async def Watch(
        self, request: watch_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[watch_pb2.WatchResponse]:
        changes = self._watch.watch(resolve_namespace(request.namespace),
                                    tuple(request.kinds), request.start_revision)
        async for change in changes:
            yield watch_response(change)
