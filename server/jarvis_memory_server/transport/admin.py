"""AdminService servicer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from jarvis.memory.v1 import admin_pb2, admin_pb2_grpc
from jarvis_memory_server.service.admin import AdminService
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, stream_rpc

Context: TypeAlias = grpc.aio.ServicerContext


class AdminServicer(ServicerBase, admin_pb2_grpc.AdminServiceServicer):
    """Serves jarvis.memory.v1.AdminService."""

    def __init__(self, admin: AdminService, auth: Authenticator) -> None:
        super().__init__(admin, auth, admin_pb2.DESCRIPTOR.services_by_name["AdminService"])
        self._admin = admin

    @stream_rpc
    async def Backup(
        self, request: admin_pb2.BackupRequest, context: Context
    ) -> AsyncIterator[admin_pb2.BackupResponse]:
        # Closed as soon as the call ends, also when cancelled: the next backup's turn comes.
        async with contextlib.aclosing(self._admin.backup(request.chunk_size)) as chunks:
            async for chunk in chunks:
                yield admin_pb2.BackupResponse(
                    offset=chunk.offset, data=chunk.data, total_size=chunk.total_size,
                    revision=chunk.revision, sha256=chunk.sha256,
                )

    @read_rpc
    def GetStats(
        self, request: admin_pb2.GetStatsRequest, context: Context
    ) -> admin_pb2.GetStatsResponse:
        stats = self._admin.stats()
        response = admin_pb2.GetStatsResponse(
            counts=[admin_pb2.RowCount(kind=k, namespace=ns, rows=n) for k, ns, n in stats.counts],
            database_bytes=stats.database_bytes, wal_bytes=stats.wal_bytes,
            commits=stats.commits, committed_writes=stats.committed_writes,
        )
        response.uptime.FromNanoseconds(int(stats.uptime_s * 1e9))
        return response
