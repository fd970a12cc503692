"""PreferenceService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from jarvis.memory.v1 import (
    preference_pb2,
    preference_pb2_grpc,
)
from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import ABSENT, resolve_namespace
from jarvis_memory_server.service.preferences import PreferenceRow, PreferenceService
from jarvis_memory_server.transport.convert import json_input, set_json, set_timestamp
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, write_rpc

Context: TypeAlias = grpc.aio.ServicerContext


def fill_preference(
    message: preference_pb2.Preference, row: PreferenceRow
) -> preference_pb2.Preference:
    """Write a stored preference into a Preference message."""
    message.namespace = row.namespace
    message.key = row.key
    set_json(message, "value", row.value)
    set_timestamp(message.created_at, row.created_at)
    set_timestamp(message.updated_at, row.updated_at)
    message.revision = row.revision
    return message


class PreferenceServicer(ServicerBase, preference_pb2_grpc.PreferenceServiceServicer):
    """Serves jarvis.memory.v1.PreferenceService."""

    def __init__(self, preferences: PreferenceService, auth: Authenticator) -> None:
        super().__init__(
            preferences, auth, preference_pb2.DESCRIPTOR.services_by_name["PreferenceService"]
        )
        self._preferences = preferences

    @read_rpc
    def GetPreference(
        self, request: preference_pb2.GetPreferenceRequest, context: Context
    ) -> preference_pb2.GetPreferenceResponse:
        row = self._preferences.get(resolve_namespace(request.namespace), request.key)
        response = preference_pb2.GetPreferenceResponse()
        fill_preference(response.preference, row)
        return response

    @write_rpc
    def SetPreference(
        self, request: preference_pb2.SetPreferenceRequest, context: Context
    ) -> preference_pb2.SetPreferenceResponse:
        value = json_input(request, "value", absent=ABSENT)
        if value is ABSENT:
            raise InvalidArgument("value", "is required (a JSON null is a value)")
        row = self._preferences.set(resolve_namespace(request.namespace), request.key, value)
        response = preference_pb2.SetPreferenceResponse()
        fill_preference(response.preference, row)
        return response

    @read_rpc
    def ListPreferences(
        self, request: preference_pb2.ListPreferencesRequest, context: Context
    ) -> preference_pb2.ListPreferencesResponse:
        rows, token = self._preferences.list_page(
            resolve_namespace(request.namespace), prefix=request.key_prefix,
            size=request.page_size, token=request.page_token,
        )
        response = preference_pb2.ListPreferencesResponse(next_page_token=token)
        for row in rows:
            fill_preference(response.preferences.add(), row)
        return response

    @write_rpc
    def DeletePreference(
        self, request: preference_pb2.DeletePreferenceRequest, context: Context
    ) -> preference_pb2.DeletePreferenceResponse:
        self._preferences.delete(resolve_namespace(request.namespace), request.key)
        return preference_pb2.DeletePreferenceResponse()
