"""ContextService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from jarvis.memory.v1 import context_pb2, context_pb2_grpc
from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.service.context import SECTIONS, ContextService
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc

Context: TypeAlias = grpc.aio.ServicerContext

# ContextSection values <-> section names (CONTEXT_SECTION_PREFERENCES is 1, ...).
SECTION_NAMES = {i + 1: name for i, name in enumerate(SECTIONS)}
SECTION_VALUES = {name: value for value, name in SECTION_NAMES.items()}


class ContextServicer(ServicerBase, context_pb2_grpc.ContextServiceServicer):
    """Serves jarvis.memory.v1.ContextService."""

    def __init__(self, contexts: ContextService, auth: Authenticator) -> None:
        super().__init__(contexts, auth, context_pb2.DESCRIPTOR.services_by_name["ContextService"])
        self._contexts = contexts

    @read_rpc
    async def AssembleContext(
        self, request: context_pb2.AssembleContextRequest, context: Context
    ) -> context_pb2.AssembleContextResponse:
        sections = []
        for i, value in enumerate(request.sections):
            name = SECTION_NAMES.get(value)
            if name is None:
                raise InvalidArgument(f"sections[{i}]", f"{value} is not a ContextSection")
            sections.append(name)
        assembled = await self._contexts.assemble(
            resolve_namespace(request.namespace), request.query,
            session_id=request.session_id, max_tokens=request.max_tokens, sections=sections,
            state_keys=list(request.state_keys), embedding=list(request.embedding))
        response = context_pb2.AssembleContextResponse(
            text=assembled.text, tokens=assembled.tokens, truncated=assembled.truncated)
        for part in assembled.parts:
            message = response.sections.add(
                section=SECTION_VALUES[part.name],
                name=part.name, omitted=part.omitted)
            for item in part.items:
                message.items.add(key=item.key, text=item.text, tokens=item.tokens,
                                  score=item.score)
        return response
