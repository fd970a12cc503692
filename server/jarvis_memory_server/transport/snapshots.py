"""SnapshotService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from jarvis.memory.v1 import (
    snapshot_pb2,
    snapshot_pb2_grpc,
)
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.service.snapshots import SnapshotRow, SnapshotService
from jarvis_memory_server.transport.convert import json_input, micros, set_json, set_timestamp
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, write_rpc

Context: TypeAlias = grpc.aio.ServicerContext


def fill_snapshot(message: snapshot_pb2.Snapshot, row: SnapshotRow) -> snapshot_pb2.Snapshot:
    """Write a stored snapshot into a Snapshot message."""
    message.id = row.id
    message.namespace = row.namespace
    message.kind = row.kind
    set_timestamp(message.taken_at, row.taken_at)
    set_json(message, "data", row.data)
    message.revision = row.revision
    return message


class SnapshotServicer(ServicerBase, snapshot_pb2_grpc.SnapshotServiceServicer):
    """Serves jarvis.memory.v1.SnapshotService."""

    def __init__(self, snapshots: SnapshotService, auth: Authenticator) -> None:
        super().__init__(
            snapshots, auth, snapshot_pb2.DESCRIPTOR.services_by_name["SnapshotService"]
        )
        self._snapshots = snapshots

    @write_rpc
    def SaveSnapshot(
        self, request: snapshot_pb2.SaveSnapshotRequest, context: Context
    ) -> snapshot_pb2.SaveSnapshotResponse:
        row = self._snapshots.save(
            resolve_namespace(request.namespace), request.kind,
            json_input(request, "data"),
        )
        response = snapshot_pb2.SaveSnapshotResponse()
        fill_snapshot(response.snapshot, row)
        return response

    @read_rpc
    def GetLatestSnapshot(
        self, request: snapshot_pb2.GetLatestSnapshotRequest, context: Context
    ) -> snapshot_pb2.GetLatestSnapshotResponse:
        row = self._snapshots.latest(resolve_namespace(request.namespace), request.kind)
        response = snapshot_pb2.GetLatestSnapshotResponse()
        fill_snapshot(response.snapshot, row)
        return response

    @read_rpc
    def ListSnapshots(
        self, request: snapshot_pb2.ListSnapshotsRequest, context: Context
    ) -> snapshot_pb2.ListSnapshotsResponse:
        rows, token = self._snapshots.list_page(
            resolve_namespace(request.namespace), request.kind,
            since=micros(request.since, "since") if request.HasField("since") else None,
            size=request.page_size, token=request.page_token,
        )
        response = snapshot_pb2.ListSnapshotsResponse(next_page_token=token)
        for row in rows:
            fill_snapshot(response.snapshots.add(), row)
        return response


