"""Server reflection that also resolves method symbols.

Stock grpcio-reflection answers ``file_containing_symbol`` only for messages, enums and
services, so ``grpcurl describe jarvis.memory.v1.MemoryService.AddMemory`` fails with "Symbol
not found" (grpc/grpc issue 34743). This servicer falls back to looking the symbol up as a
method and answers with the file of its service.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc


class MethodAwareReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """Reflection for grpc.aio servers, with method symbols resolved."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response"):
            try:
                method = self._pool.FindMethodByName(fully_qualified_name)
            except KeyError:
                return response
            return super()._file_containing_symbol(request, method.containing_service.full_name)
        return response


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serve reflection for these services (and itself) on the server."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        MethodAwareReflection((*service_names, reflection.SERVICE_NAME)), server
    )
