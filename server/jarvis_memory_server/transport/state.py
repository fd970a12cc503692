"""StateService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from jarvis.memory.v1 import state_pb2, state_pb2_grpc
from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import ABSENT, MAX_TIME_US, resolve_namespace
from jarvis_memory_server.service.state import StateRow, StateService
from jarvis_memory_server.store.backend import now_us
from jarvis_memory_server.transport.convert import (
    duration_micros,
    json_input,
    set_json,
    set_timestamp,
)
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, write_rpc

Context: TypeAlias = grpc.aio.ServicerContext


def fill_entry(message: state_pb2.StateEntry, row: StateRow) -> state_pb2.StateEntry:
    """Write a stored state entry into a StateEntry message."""
    message.namespace = row.namespace
    message.key = row.key
    set_json(message, "value", row.value)
    message.version = row.version
    set_timestamp(message.updated_at, row.updated_at)
    if row.expires_at is not None:
        set_timestamp(message.expires_at, row.expires_at)
    message.revision = row.revision
    return message


class StateServicer(ServicerBase, state_pb2_grpc.StateServiceServicer):
    """Serves jarvis.memory.v1.StateService."""

    def __init__(self, state: StateService, auth: Authenticator) -> None:
        super().__init__(state, auth, state_pb2.DESCRIPTOR.services_by_name["StateService"])
        self._state = state

    @read_rpc
    def GetState(
        self, request: state_pb2.GetStateRequest, context: Context
    ) -> state_pb2.GetStateResponse:
        row = self._state.get(resolve_namespace(request.namespace), request.key)
        response = state_pb2.GetStateResponse()
        fill_entry(response.entry, row)
        return response

    @write_rpc
    def PutState(
        self, request: state_pb2.PutStateRequest, context: Context
    ) -> state_pb2.PutStateResponse:
        value = json_input(request, "value", absent=ABSENT)
        if value is ABSENT:
            raise InvalidArgument("value", "is required (a JSON null is a value)")
        ttl_us = None
        if request.HasField("ttl"):
            ttl_us = duration_micros(request.ttl, "ttl")
            if ttl_us > MAX_TIME_US - now_us():
                raise InvalidArgument("ttl", "would expire after year 9999 (UTC)")
        row = self._state.put(
            resolve_namespace(request.namespace), request.key, value,
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            ttl_us=ttl_us,
        )
        response = state_pb2.PutStateResponse()
        fill_entry(response.entry, row)
        return response

    @write_rpc
    def DeleteState(
        self, request: state_pb2.DeleteStateRequest, context: Context
    ) -> state_pb2.DeleteStateResponse:
        self._state.delete(
            resolve_namespace(request.namespace), request.key,
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
        )
        return state_pb2.DeleteStateResponse()

    @read_rpc
    def ListState(
        self, request: state_pb2.ListStateRequest, context: Context
    ) -> state_pb2.ListStateResponse:
        rows, token = self._state.list_page(
            resolve_namespace(request.namespace), prefix=request.key_prefix,
            size=request.page_size, token=request.page_token,
        )
        response = state_pb2.ListStateResponse(next_page_token=token)
        for row in rows:
            fill_entry(response.entries.add(), row)
        return response
