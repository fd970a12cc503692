"""SessionService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from jarvis.memory.v1 import session_pb2, session_pb2_grpc
from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import ABSENT, resolve_namespace
from jarvis_memory_server.service.search import SearchService
from jarvis_memory_server.service.sessions import (
    EventRow,
    MessageRow,
    NewMessage,
    SessionRow,
    SessionService,
)
from jarvis_memory_server.store.search import MESSAGES
from jarvis_memory_server.transport.convert import (
    EnumNames,
    json_input,
    micros,
    set_json,
    set_timestamp,
)
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, write_rpc
from jarvis_memory_server.transport.search import add_hits, search_request

STATE = EnumNames(session_pb2.SessionState, "SESSION_STATE_")
TRIGGER = EnumNames(session_pb2.SessionEndTrigger, "SESSION_END_TRIGGER_")
ROLE = EnumNames(session_pb2.MessageRole, "MESSAGE_ROLE_")
ORDER_COLUMN = {
    session_pb2.SESSION_ORDER_UNSPECIFIED: "started_at",
    session_pb2.SESSION_ORDER_START_TIME: "started_at",
    session_pb2.SESSION_ORDER_LAST_ACTIVITY: "last_activity_at",
}
Context: TypeAlias = grpc.aio.ServicerContext


def fill_session(message: session_pb2.Session, row: SessionRow) -> session_pb2.Session:
    """Write a stored session into a Session message."""
    message.id = row.session_id
    message.namespace = row.namespace
    message.state = STATE.to_number[row.state]
    set_timestamp(message.started_at, row.started_at)
    set_timestamp(message.last_activity_at, row.last_activity_at)
    message.summary = row.summary
    message.message_count = row.message_count
    message.revision = row.revision
    if row.ended_at is not None:
        set_timestamp(message.ended_at, row.ended_at)
        message.duration.FromMicroseconds(row.ended_at - row.started_at)
    if row.end_trigger is not None:
        message.end_trigger = TRIGGER.to_number[row.end_trigger]
    set_json(message, "metadata", row.metadata)
    return message


def fill_message(message: session_pb2.Message, row: MessageRow) -> session_pb2.Message:
    """Write a stored message into a Message message."""
    message.id = row.id
    message.namespace = row.namespace
    message.session_id = row.session_id
    message.sequence = row.sequence
    message.role = ROLE.to_number[row.role]
    message.content = row.content
    message.model = row.model
    message.tokens_used = row.tokens_used
    set_timestamp(message.created_at, row.created_at)
    message.revision = row.revision
    set_json(message, "tool_calls", row.tool_calls)
    return message


def fill_event(message: session_pb2.SessionEvent, row: EventRow) -> session_pb2.SessionEvent:
    """Write a stored session event into a SessionEvent message."""
    message.id = row.id
    message.namespace = row.namespace
    message.session_id = row.session_id
    message.event_type = row.event_type
    set_timestamp(message.logged_at, row.logged_at)
    message.revision = row.revision
    set_json(message, "data", row.data)
    return message


class SessionServicer(ServicerBase, session_pb2_grpc.SessionServiceServicer):
    """Serves jarvis.memory.v1.SessionService."""

    def __init__(
        self, sessions: SessionService, search: SearchService, auth: Authenticator
    ) -> None:
        super().__init__(sessions, auth, session_pb2.DESCRIPTOR.services_by_name["SessionService"])
        self._sessions = sessions
        self._search = search

    @write_rpc
    def StartSession(
        self, request: session_pb2.StartSessionRequest, context: Context
    ) -> session_pb2.StartSessionResponse:
        row = self._sessions.start(
            resolve_namespace(request.namespace),
            request.session_id,
            json_input(request, "metadata"),
        )
        response = session_pb2.StartSessionResponse()
        fill_session(response.session, row)
        return response

    @write_rpc
    def EndSession(
        self, request: session_pb2.EndSessionRequest, context: Context
    ) -> session_pb2.EndSessionResponse:
        row = self._sessions.end(
            resolve_namespace(request.namespace),
            request.session_id,
            TRIGGER.required(request.trigger, "trigger"),
            request.summary,
        )
        response = session_pb2.EndSessionResponse()
        fill_session(response.session, row)
        return response

    @read_rpc
    def GetSession(
        self, request: session_pb2.GetSessionRequest, context: Context
    ) -> session_pb2.GetSessionResponse:
        row = self._sessions.get(resolve_namespace(request.namespace), request.session_id)
        response = session_pb2.GetSessionResponse()
        fill_session(response.session, row)
        return response

    @read_rpc
    def ListSessions(
        self, request: session_pb2.ListSessionsRequest, context: Context
    ) -> session_pb2.ListSessionsResponse:
        order = ORDER_COLUMN.get(request.order_by)
        if order is None:
            raise InvalidArgument("order_by", f"{request.order_by} is not a known SessionOrder")
        rows, token = self._sessions.list_page(
            resolve_namespace(request.namespace),
            size=request.page_size,
            token=request.page_token,
            state=STATE.optional(request.state, "state"),
            order=order,
        )
        response = session_pb2.ListSessionsResponse(next_page_token=token)
        for row in rows:
            fill_session(response.sessions.add(), row)
        return response

    @write_rpc
    def LogSessionEvent(
        self, request: session_pb2.LogSessionEventRequest, context: Context
    ) -> session_pb2.LogSessionEventResponse:
        row = self._sessions.log_event(
            resolve_namespace(request.namespace),
            request.session_id,
            request.event_type,
            json_input(request, "data"),
        )
        response = session_pb2.LogSessionEventResponse()
        fill_event(response.event, row)
        return response

    @read_rpc
    def ListSessionEvents(
        self, request: session_pb2.ListSessionEventsRequest, context: Context
    ) -> session_pb2.ListSessionEventsResponse:
        scope = request.WhichOneof("scope")
        rows, token = self._sessions.list_events(
            resolve_namespace(request.namespace),
            session_id=request.session_id if scope == "session_id" else None,
            day=request.day if scope == "day" else None,
            size=request.page_size,
            token=request.page_token,
        )
        response = session_pb2.ListSessionEventsResponse(next_page_token=token)
        for row in rows:
            fill_event(response.events.add(), row)
        return response

    @write_rpc
    def AppendMessage(
        self, request: session_pb2.AppendMessageRequest, context: Context
    ) -> session_pb2.AppendMessageResponse:
        message = NewMessage(
            role=ROLE.required(request.role, "role"),
            content=request.content,
            model=request.model,
            tokens_used=request.tokens_used,
            tool_calls=json_input(request, "tool_calls", absent=ABSENT),
            embedding=request.embedding,
        )
        row = self._sessions.append_message(
            resolve_namespace(request.namespace), request.session_id, message
        )
        response = session_pb2.AppendMessageResponse()
        fill_message(response.message, row)
        return response

    @read_rpc
    def ListMessages(
        self, request: session_pb2.ListMessagesRequest, context: Context
    ) -> session_pb2.ListMessagesResponse:
        rows, token = self._sessions.list_messages(
            resolve_namespace(request.namespace),
            request.session_id,
            size=request.page_size,
            token=request.page_token,
        )
        response = session_pb2.ListMessagesResponse(next_page_token=token)
        for row in rows:
            fill_message(response.messages.add(), row)
        return response

    @read_rpc
    async def SearchMessages(
        self, request: session_pb2.SearchMessagesRequest, context: Context
    ) -> session_pb2.SearchMessagesResponse:
        filters: dict[str, object] = {}
        if request.HasField("session_id"):
            filters["session_id"] = request.session_id
        role = ROLE.optional(request.role, "role")
        if role is not None:
            filters["role"] = role
        if request.HasField("created_after"):
            filters["created_after"] = micros(request.created_after, "created_after")
        if request.HasField("created_before"):
            filters["created_before"] = micros(request.created_before, "created_before")
        hits = await self._search.run(MESSAGES, search_request(self._search, request, filters))
        response = session_pb2.SearchMessagesResponse()
        add_hits(response.hits, hits, "message", fill_message, MessageRow)
        return response
