"""EventService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from jarvis.memory.v1 import (
    event_pb2,
    event_pb2_grpc,
)
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.service.events import (
    SEVERITIES,
    EventFilter,
    EventRow,
    EventService,
    NewEvent,
    search_filter_values,
)
from jarvis_memory_server.service.search import SearchService
from jarvis_memory_server.store.search import EVENTS
from jarvis_memory_server.transport.convert import (
    EnumNames,
    json_input,
    micros,
    set_json,
    set_timestamp,
)
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, write_rpc
from jarvis_memory_server.transport.search import add_hits, search_request

TYPE = EnumNames(event_pb2.EventType, "EVENT_TYPE_")
SEVERITY = EnumNames(event_pb2.EventSeverity, "EVENT_SEVERITY_")
SOURCE = EnumNames(event_pb2.EventSource, "EVENT_SOURCE_")
Context: TypeAlias = grpc.aio.ServicerContext


def fill_event(message: event_pb2.Event, row: EventRow) -> event_pb2.Event:
    """Write a stored event into an Event message."""
    message.id = row.id
    message.namespace = row.namespace
    set_timestamp(message.occurred_at, row.occurred_at)
    message.type = TYPE.to_number[row.type]
    message.severity = SEVERITY.to_number[SEVERITIES[row.severity - 1]]
    message.source = SOURCE.to_number[row.source]
    message.node = row.node
    message.summary = row.summary
    message.resolved = bool(row.resolved)
    message.resolved_by = row.resolved_by
    message.revision = row.revision
    if row.resolved_at is not None:
        set_timestamp(message.resolved_at, row.resolved_at)
    set_json(message, "details", row.details)
    return message


def event_filter(
    request: event_pb2.ListEventsRequest | event_pb2.SearchEventsRequest,
) -> EventFilter:
    """The filters of a ListEvents or SearchEvents request."""
    return EventFilter(
        types=tuple(TYPE.required(t, "types") for t in request.types),
        min_severity=SEVERITY.optional(request.min_severity, "min_severity"),
        node=request.node if request.HasField("node") else None,
        source=SOURCE.optional(request.source, "source"),
        since=micros(request.since, "since") if request.HasField("since") else None,
        until=micros(request.until, "until") if request.HasField("until") else None,
        resolved=request.resolved if request.HasField("resolved") else None,
    )


class EventServicer(ServicerBase, event_pb2_grpc.EventServiceServicer):
    """Serves jarvis.memory.v1.EventService."""

    def __init__(self, events: EventService, search: SearchService, auth: Authenticator) -> None:
        super().__init__(events, auth, event_pb2.DESCRIPTOR.services_by_name["EventService"])
        self._events = events
        self._search = search

    @write_rpc
    def RecordEvent(
        self, request: event_pb2.RecordEventRequest, context: Context
    ) -> event_pb2.RecordEventResponse:
        event = NewEvent(
            type=TYPE.required(request.type, "type"),
            severity=SEVERITY.required(request.severity, "severity"),
            source=SOURCE.required(request.source, "source"),
            summary=request.summary,
            node=request.node,
            details=json_input(request, "details"),
            occurred_at=(
                micros(request.occurred_at, "occurred_at")
                if request.HasField("occurred_at") else None
            ),
        )
        row = self._events.record(resolve_namespace(request.namespace), event)
        response = event_pb2.RecordEventResponse()
        fill_event(response.event, row)
        return response

    @read_rpc
    def GetEvent(
        self, request: event_pb2.GetEventRequest, context: Context
    ) -> event_pb2.GetEventResponse:
        row = self._events.get(resolve_namespace(request.namespace), request.id)
        response = event_pb2.GetEventResponse()
        fill_event(response.event, row)
        return response

    @read_rpc
    def ListEvents(
        self, request: event_pb2.ListEventsRequest, context: Context
    ) -> event_pb2.ListEventsResponse:
        rows, token = self._events.list_page(
            resolve_namespace(request.namespace), event_filter(request),
            size=request.page_size, token=request.page_token,
        )
        response = event_pb2.ListEventsResponse(next_page_token=token)
        for row in rows:
            fill_event(response.events.add(), row)
        return response

    @write_rpc
    def ResolveEvent(
        self, request: event_pb2.ResolveEventRequest, context: Context
    ) -> event_pb2.ResolveEventResponse:
        row = self._events.resolve(
            resolve_namespace(request.namespace), request.id, request.resolved_by
        )
        response = event_pb2.ResolveEventResponse()
        fill_event(response.event, row)
        return response

    @read_rpc
    async def SearchEvents(
        self, request: event_pb2.SearchEventsRequest, context: Context
    ) -> event_pb2.SearchEventsResponse:
        values = search_filter_values(event_filter(request))
        hits = await self._search.run(EVENTS, search_request(self._search, request, values))
        response = event_pb2.SearchEventsResponse()
        add_hits(response.hits, hits, "event", fill_event, EventRow)
        return response
