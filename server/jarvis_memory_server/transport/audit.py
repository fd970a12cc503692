"""AuditService servicer."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from jarvis.memory.v1 import audit_pb2, audit_pb2_grpc
from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.audit import AuditService, CycleRow, DecisionRow, ToolCallRow
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.common import ABSENT, resolve_namespace
from jarvis_memory_server.transport.convert import (
    EnumNames,
    json_input,
    micros,
    set_json,
    set_timestamp,
)
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, write_rpc

STATUS = EnumNames(audit_pb2.RunStatus, "RUN_STATUS_")
Context: TypeAlias = grpc.aio.ServicerContext


def _value(message: Any, field: str) -> Any:
    """An optional JSON value of a request, or ABSENT (null is a value here)."""
    return json_input(message, field, absent=ABSENT)


def _final_status(number: int) -> str:
    status = STATUS.required(number, "status")
    if status == "running":
        raise InvalidArgument("status", "must be SUCCEEDED, FAILED or CANCELLED to finish")
    return status


def fill_call(message: audit_pb2.ToolCall, row: ToolCallRow) -> audit_pb2.ToolCall:
    """Write a tool call into a ToolCall message."""
    message.id = row.id
    message.namespace = row.namespace
    message.tool = row.tool
    set_json(message, "input", row.input)
    message.session_id = row.session_id
    message.cycle_id = row.cycle_id or 0
    set_timestamp(message.started_at, row.started_at)
    message.status = STATUS.to_number[row.status or "running"]
    set_json(message, "output", row.output)
    message.error = row.error or ""
    message.duration_ms = row.duration_ms or 0
    if row.finished_at is not None:
        set_timestamp(message.finished_at, row.finished_at)
    message.revision = row.revision
    return message


def fill_cycle(message: audit_pb2.PlanningCycle, row: CycleRow) -> audit_pb2.PlanningCycle:
    """Write a planning cycle into a PlanningCycle message."""
    message.id = row.id
    message.namespace = row.namespace
    set_json(message, "goals", row.goals)
    set_timestamp(message.started_at, row.started_at)
    message.status = STATUS.to_number[row.status or "running"]
    set_json(message, "outcomes", row.outcomes)
    if row.finished_at is not None:
        set_timestamp(message.finished_at, row.finished_at)
    message.revision = row.revision
    return message


def fill_decision(message: audit_pb2.Decision, row: DecisionRow) -> audit_pb2.Decision:
    """Write a decision into a Decision message."""
    message.id = row.id
    message.namespace = row.namespace
    message.cycle_id = row.cycle_id or 0
    set_json(message, "reasoning", row.reasoning)
    message.decision = row.decision
    set_timestamp(message.created_at, row.created_at)
    message.revision = row.revision
    return message


class AuditServicer(ServicerBase, audit_pb2_grpc.AuditServiceServicer):
    """Serves jarvis.memory.v1.AuditService."""

    def __init__(self, audit: AuditService, auth: Authenticator) -> None:
        super().__init__(audit, auth, audit_pb2.DESCRIPTOR.services_by_name["AuditService"])
        self._audit = audit

    @write_rpc
    def StartToolCall(
        self, request: audit_pb2.StartToolCallRequest, context: Context
    ) -> audit_pb2.StartToolCallResponse:
        row = self._audit.start_tool_call(
            resolve_namespace(request.namespace), request.tool, _value(request, "input"),
            session_id=request.session_id, cycle_id=request.cycle_id,
        )
        response = audit_pb2.StartToolCallResponse()
        fill_call(response.tool_call, row)
        return response

    @write_rpc
    def FinishToolCall(
        self, request: audit_pb2.FinishToolCallRequest, context: Context
    ) -> audit_pb2.FinishToolCallResponse:
        row = self._audit.finish_tool_call(
            resolve_namespace(request.namespace), request.id, _final_status(request.status),
            _value(request, "output"), error=request.error, duration_ms=request.duration_ms,
        )
        response = audit_pb2.FinishToolCallResponse()
        fill_call(response.tool_call, row)
        return response

    @read_rpc
    def GetToolCall(
        self, request: audit_pb2.GetToolCallRequest, context: Context
    ) -> audit_pb2.GetToolCallResponse:
        row = self._audit.get_tool_call(resolve_namespace(request.namespace), request.id)
        response = audit_pb2.GetToolCallResponse()
        fill_call(response.tool_call, row)
        return response

    @read_rpc
    def ListToolCalls(
        self, request: audit_pb2.ListToolCallsRequest, context: Context
    ) -> audit_pb2.ListToolCallsResponse:
        rows, token = self._audit.list_tool_calls(
            resolve_namespace(request.namespace), tool=request.tool,
            status=STATUS.optional(request.status, "status"), cycle_id=request.cycle_id,
            session_id=request.session_id,
            since=micros(request.since, "since") if request.HasField("since") else None,
            until=micros(request.until, "until") if request.HasField("until") else None,
            size=request.page_size, token=request.page_token,
        )
        response = audit_pb2.ListToolCallsResponse(next_page_token=token)
        for row in rows:
            fill_call(response.tool_calls.add(), row)
        return response

    @write_rpc
    def StartPlanningCycle(
        self, request: audit_pb2.StartPlanningCycleRequest, context: Context
    ) -> audit_pb2.StartPlanningCycleResponse:
        row = self._audit.start_cycle(resolve_namespace(request.namespace),
                                      _value(request, "goals"))
        response = audit_pb2.StartPlanningCycleResponse()
        fill_cycle(response.cycle, row)
        return response

    @write_rpc
    def FinishPlanningCycle(
        self, request: audit_pb2.FinishPlanningCycleRequest, context: Context
    ) -> audit_pb2.FinishPlanningCycleResponse:
        row = self._audit.finish_cycle(
            resolve_namespace(request.namespace), request.id, _final_status(request.status),
            _value(request, "outcomes"),
        )
        response = audit_pb2.FinishPlanningCycleResponse()
        fill_cycle(response.cycle, row)
        return response

    @read_rpc
    def ListPlanningCycles(
        self, request: audit_pb2.ListPlanningCyclesRequest, context: Context
    ) -> audit_pb2.ListPlanningCyclesResponse:
        rows, token = self._audit.list_cycles(
            resolve_namespace(request.namespace), status=STATUS.optional(request.status, "status"),
            size=request.page_size, token=request.page_token,
        )
        response = audit_pb2.ListPlanningCyclesResponse(next_page_token=token)
        for row in rows:
            fill_cycle(response.cycles.add(), row)
        return response

    @write_rpc
    def RecordDecision(
        self, request: audit_pb2.RecordDecisionRequest, context: Context
    ) -> audit_pb2.RecordDecisionResponse:
        row = self._audit.record_decision(
            resolve_namespace(request.namespace), request.decision,
            _value(request, "reasoning"), cycle_id=request.cycle_id,
        )
        response = audit_pb2.RecordDecisionResponse()
        fill_decision(response.decision, row)
        return response

    @read_rpc
    def ListDecisions(
        self, request: audit_pb2.ListDecisionsRequest, context: Context
    ) -> audit_pb2.ListDecisionsResponse:
        rows, token = self._audit.list_decisions(
            resolve_namespace(request.namespace), cycle_id=request.cycle_id,
            size=request.page_size, token=request.page_token,
        )
        response = audit_pb2.ListDecisionsResponse(next_page_token=token)
        for row in rows:
            fill_decision(response.decisions.add(), row)
        return response
