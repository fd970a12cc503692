"""WatchService servicer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple, TypeAlias

import grpc

from jarvis.memory.v1 import collection_pb2, watch_pb2, watch_pb2_grpc
from jarvis.memory.v1.common_pb2 import ResponseHeader
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.service.watch import KINDS, WatchService
from jarvis_memory_server.store.audit import CycleRow, DecisionRow, ToolCallRow
from jarvis_memory_server.store.collections import DefRow, RowChange
from jarvis_memory_server.store.events import EventRow
from jarvis_memory_server.store.memories import MemoryRow
from jarvis_memory_server.store.preferences import PreferenceRow
from jarvis_memory_server.store.sessions import EventRow as SessionEventRow
from jarvis_memory_server.store.sessions import MessageRow, SessionRow
from jarvis_memory_server.store.snapshots import SnapshotRow
from jarvis_memory_server.store.state import StateRow
from jarvis_memory_server.store.writes import ChangeRow
from jarvis_memory_server.transport import (
    audit,
    collections,
    events,
    memories,
    preferences,
    sessions,
    snapshots,
    state,
)
from jarvis_memory_server.transport.convert import set_timestamp
from jarvis_memory_server.transport.rpc import ServicerBase, stream_rpc
from jarvis_memory_server.transport.rpc import register as register_rpc

OPERATION = {"create": watch_pb2.CHANGE_OPERATION_CREATE,
             "update": watch_pb2.CHANGE_OPERATION_UPDATE,
             "delete": watch_pb2.CHANGE_OPERATION_DELETE}
Context: TypeAlias = grpc.aio.ServicerContext


def _fill_row(message: collection_pb2.Row, row: RowChange) -> collection_pb2.Row:
    return collections.fill_row(message, row.collection, row.id, row.cells)


class _Resource(NamedTuple):
    """How a kind's stored row becomes its Change field (which is named like the kind).

    ``fill`` is the function Get and List use, so that every client sees one shape.
    """

    row: Any  # the NamedTuple class
    fill: Callable[[Any, Any], Any]


RESOURCES: dict[str, _Resource] = {
    "memory": _Resource(MemoryRow, memories.fill_memory),
    "session": _Resource(SessionRow, sessions.fill_session),
    "message": _Resource(MessageRow, sessions.fill_message),
    "session_event": _Resource(SessionEventRow, sessions.fill_event),
    "event": _Resource(EventRow, events.fill_event),
    "snapshot": _Resource(SnapshotRow, snapshots.fill_snapshot),
    "preference": _Resource(PreferenceRow, preferences.fill_preference),
    "state": _Resource(StateRow, state.fill_entry),
    "tool_call": _Resource(ToolCallRow, audit.fill_call),
    "planning_cycle": _Resource(CycleRow, audit.fill_cycle),
    "decision": _Resource(DecisionRow, audit.fill_decision),
    "collection": _Resource(DefRow, collections.fill_collection),
    "row": _Resource(RowChange, _fill_row),
}
assert set(RESOURCES) == set(KINDS), "every kind of change needs a resource"


def fill_change(message: watch_pb2.Change, change: ChangeRow) -> None:
    """Write a committed change into a Change message.

    The resource goes in twice: typed (the message Get returns) and as the deprecated
    ``resource`` Struct (the database row).
    """
    message.revision = change.revision
    message.namespace = change.namespace
    message.kind = change.kind
    message.key = change.key
    message.operation = OPERATION[change.operation]
    set_timestamp(message.time, change.created_at)
    if change.resource is None:
        return
    resource = RESOURCES[change.kind]
    values = json.loads(change.resource)
    if isinstance(values, dict):  # logged before rows were stored by position
        message.resource.update(values)
        if not all(name in values for name in resource.row._fields):
            return  # an older record of another shape: no typed resource
        values = [values[name] for name in resource.row._fields]
    elif len(values) < len(resource.row._fields):  # logged before the row type grew
        values += [None] * (len(resource.row._fields) - len(values))
        message.resource.update(dict(zip(resource.row._fields, values, strict=True)))
    elif change.kind == "row":
        message.resource.update({"id": values[1], **{name: v for name, _, v in values[2]}})
    else:
        message.resource.update(dict(zip(resource.row._fields, values, strict=True)))
    row = resource.row._make(values)
    if change.kind == "memory":  # the content hash went into JSON as hex
        row = row._replace(content_hash=bytes.fromhex(row.content_hash))
    resource.fill(getattr(message, change.kind), row)


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
    register_rpc(servicer, server, serializers={"Watch": bytes})  # already serialised
