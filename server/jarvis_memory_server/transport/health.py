"""The gRPC health service, with List.

grpcio-health-checking's asyncio servicer implements Check and Watch but not List, which its
health.proto declares (and reflection lists): a List call failed with UNIMPLEMENTED and a
traceback in the daemon's log. This servicer adds it.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

# health.proto: "The server may respond with a RESOURCE_EXHAUSTED error if too many services
# exist." The daemon registers about a dozen; grpc-go's limit is the same.
MAX_LISTED = 100


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """Check, Watch and graceful shutdown as grpcio-health-checking has them, plus List."""

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # A snapshot: set() replaces values in this dict and never awaits while doing so.
        statuses = dict(self._server_status)
        if len(statuses) > MAX_LISTED:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(statuses)} services have a health status, more than {MAX_LISTED}: "
                "Check them one by one",
            )
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in statuses.items()
        })
