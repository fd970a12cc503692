"""The change feed speaks the API's own types: every change carries the message Get returns."""

from __future__ import annotations

import difflib
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from conftest import Stubs
from jarvis.memory.v1 import (
    audit_pb2,
    collection_pb2,
    event_pb2,
    memory_pb2,
    preference_pb2,
    session_pb2,
    snapshot_pb2,
    state_pb2,
    watch_pb2,
)

NS = "feed"


def changes(stubs: Stubs, count: int, **request: Any) -> list[watch_pb2.Change]:
    """The first ``count`` changes of a replay from revision 1 (then the stream is cancelled)."""
    stream = stubs.watch.Watch(
        watch_pb2.WatchRequest(namespace=NS, start_revision=1, **request), timeout=30)
    found: list[watch_pb2.Change] = []
    for response in stream:
        found += response.changes
        if len(found) >= count:
            break
    stream.cancel()
    return found[:count]


def diff(got: Message, wanted: Message) -> str:
    """The lines in which two messages differ (pytest truncates long messages)."""
    return "\n".join(difflib.unified_diff(str(got).splitlines(), str(wanted).splitlines()))


def integer(value: int) -> collection_pb2.FieldValue:
    return collection_pb2.FieldValue(integer_value=value)


def test_every_change_carries_what_get_or_list_returned_after_the_write(stubs: Stubs) -> None:
    """Each write is followed by the Get or List of its resource; the replayed feed must carry
    exactly those messages (deletes: the key and no resource), in order."""
    expected: list[tuple[str, str, Message | str]] = []  # (kind, operation, resource or key)
    s = stubs

    # memories: create, update, restate, delete
    m = s.memory.AddMemory(memory_pb2.AddMemoryRequest(
        namespace=NS, content="Prefers tea", category=memory_pb2.MEMORY_CATEGORY_PREFERENCE,
        source=memory_pb2.MEMORY_SOURCE_USER_EXPLICIT,
        attributes_json='{"strength":3,"ids":[1152921504606846976,-7],"r":0.5}')).memory
    get_memory = memory_pb2.GetMemoryRequest(namespace=NS, id=m.id)
    expected.append(("memory", "create", s.memory.GetMemory(get_memory).memory))
    s.memory.UpdateMemory(memory_pb2.UpdateMemoryRequest(
        namespace=NS, memory=memory_pb2.Memory(id=m.id, stale=True),
        update_mask={"paths": ["stale"]}))
    expected.append(("memory", "update", s.memory.GetMemory(get_memory).memory))
    s.memory.AddMemory(memory_pb2.AddMemoryRequest(
        namespace=NS, content="prefers TEA", category=memory_pb2.MEMORY_CATEGORY_PREFERENCE,
        source=memory_pb2.MEMORY_SOURCE_USER_EXPLICIT))
    expected.append(("memory", "update", s.memory.GetMemory(get_memory).memory))
    s.memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(namespace=NS, id=m.id))
    expected.append(("memory", "delete", str(m.id)))

    # sessions, their messages and events (starting logs a session_start event)
    s.session.StartSession(session_pb2.StartSessionRequest(
        namespace=NS, session_id="tab-1", metadata_json='{"client":"cli","n":4}'))
    get_session = session_pb2.GetSessionRequest(namespace=NS, session_id="tab-1")
    expected.append(("session", "create", s.session.GetSession(get_session).session))

    def session_events() -> list[session_pb2.SessionEvent]:
        return list(s.session.ListSessionEvents(session_pb2.ListSessionEventsRequest(
            namespace=NS, session_id="tab-1")).events)

    expected.append(("session_event", "create", session_events()[-1]))
    s.session.AppendMessage(session_pb2.AppendMessageRequest(
        namespace=NS, session_id="tab-1", role=session_pb2.MESSAGE_ROLE_USER,
        content="good morning", tool_calls_json='[{"name":"clock","args":{"tz":1}}]'))
    expected.append(("message", "create", s.session.ListMessages(
        session_pb2.ListMessagesRequest(namespace=NS, session_id="tab-1")).messages[-1]))
    s.session.LogSessionEvent(session_pb2.LogSessionEventRequest(
        namespace=NS, session_id="tab-1", event_type="topic_change", data_json='{"pct":91}'))
    expected.append(("session_event", "create", session_events()[-1]))
    s.session.EndSession(session_pb2.EndSessionRequest(
        namespace=NS, session_id="tab-1", trigger=session_pb2.SESSION_END_TRIGGER_EXPLICIT,
        summary="coffee"))
    expected.append(("session", "update", s.session.GetSession(get_session).session))
    expected.append(("session_event", "create", session_events()[-1]))

    # monitoring events, snapshots, preferences, state
    e = s.event.RecordEvent(event_pb2.RecordEventRequest(
        namespace=NS, type=event_pb2.EVENT_TYPE_ALERT, severity=event_pb2.EVENT_SEVERITY_WARNING,
        source=event_pb2.EVENT_SOURCE_MONITOR, summary="disk 91% full",
        details_json='{"pct":91,"ratio":0.91}')).event
    get_event = event_pb2.GetEventRequest(namespace=NS, id=e.id)
    expected.append(("event", "create", s.event.GetEvent(get_event).event))
    s.event.ResolveEvent(event_pb2.ResolveEventRequest(namespace=NS, id=e.id, resolved_by="me"))
    expected.append(("event", "update", s.event.GetEvent(get_event).event))
    s.snapshot.SaveSnapshot(snapshot_pb2.SaveSnapshotRequest(
        namespace=NS, data_json='{"nodes":4,"load":[0.5,1]}'))
    expected.append(("snapshot", "create", s.snapshot.GetLatestSnapshot(
        snapshot_pb2.GetLatestSnapshotRequest(namespace=NS)).snapshot))
    for value in ('"07:30"', "7"):
        s.preference.SetPreference(preference_pb2.SetPreferenceRequest(
            namespace=NS, key="briefing", value_json=value))
        expected.append(("preference", "create" if value.startswith('"') else "update",
                         s.preference.GetPreference(preference_pb2.GetPreferenceRequest(
                             namespace=NS, key="briefing")).preference))
    s.preference.DeletePreference(preference_pb2.DeletePreferenceRequest(
        namespace=NS, key="briefing"))
    expected.append(("preference", "delete", "briefing"))
    s.state.PutState(state_pb2.PutStateRequest(
        namespace=NS, key="planner/cursor", value_json='{"step":4,"done":false,"note":null}'))
    expected.append(("state", "create", s.state.GetState(state_pb2.GetStateRequest(
        namespace=NS, key="planner/cursor")).entry))
    s.state.DeleteState(state_pb2.DeleteStateRequest(namespace=NS, key="planner/cursor"))
    expected.append(("state", "delete", "planner/cursor"))

    # the audit trail: a call and a cycle each start and finish; a decision
    cycle = s.audit.StartPlanningCycle(audit_pb2.StartPlanningCycleRequest(
        namespace=NS, goals_json='["triage"]')).cycle

    def cycles() -> audit_pb2.PlanningCycle:
        return s.audit.ListPlanningCycles(
            audit_pb2.ListPlanningCyclesRequest(namespace=NS)).cycles[0]

    expected.append(("planning_cycle", "create", cycles()))
    call = s.audit.StartToolCall(audit_pb2.StartToolCallRequest(
        namespace=NS, tool="web_search", input_json='{"q":"weather","n":3}',
        cycle_id=cycle.id)).tool_call
    get_call = audit_pb2.GetToolCallRequest(namespace=NS, id=call.id)
    expected.append(("tool_call", "create", s.audit.GetToolCall(get_call).tool_call))
    s.audit.FinishToolCall(audit_pb2.FinishToolCallRequest(
        namespace=NS, id=call.id, status=audit_pb2.RUN_STATUS_SUCCEEDED,
        output_json='{"temp":11,"ok":true}', duration_ms=420))
    expected.append(("tool_call", "update", s.audit.GetToolCall(get_call).tool_call))
    s.audit.RecordDecision(audit_pb2.RecordDecisionRequest(
        namespace=NS, decision="restart nginx", reasoning_json='{"why":"502s"}',
        cycle_id=cycle.id))
    expected.append(("decision", "create", s.audit.ListDecisions(
        audit_pb2.ListDecisionsRequest(namespace=NS)).decisions[-1]))
    s.audit.FinishPlanningCycle(audit_pb2.FinishPlanningCycleRequest(
        namespace=NS, id=cycle.id, status=audit_pb2.RUN_STATUS_SUCCEEDED,
        outcomes_json='{"triaged":3}'))
    expected.append(("planning_cycle", "update", cycles()))

    # runtime collections: the definition and its rows
    s.collection.CreateCollection(collection_pb2.CreateCollectionRequest(
        namespace=NS, name="trades", fields=[
            collection_pb2.Field(name="symbol", type=collection_pb2.FIELD_TYPE_STRING),
            collection_pb2.Field(name="qty", type=collection_pb2.FIELD_TYPE_INTEGER),
            collection_pb2.Field(name="meta", type=collection_pb2.FIELD_TYPE_JSON)]))
    get_collection = collection_pb2.GetCollectionRequest(namespace=NS, name="trades")
    expected.append(("collection", "create",
                     s.collection.GetCollection(get_collection).collection))
    s.collection.AddField(collection_pb2.AddFieldRequest(
        namespace=NS, collection="trades",
        field=collection_pb2.Field(name="at", type=collection_pb2.FIELD_TYPE_TIMESTAMP)))
    expected.append(("collection", "update",
                     s.collection.GetCollection(get_collection).collection))
    s.collection.InsertRows(collection_pb2.InsertRowsRequest(
        namespace=NS, collection="trades", typed_rows=[
            collection_pb2.Row(fields={"symbol": collection_pb2.FieldValue(string_value="ETH"),
                                       "qty": integer(2**60),
                                       "meta": collection_pb2.FieldValue(json_value='{"v":1}')}),
            collection_pb2.Row(fields={"symbol": collection_pb2.FieldValue(string_value="BTC")}),
        ]))
    query = collection_pb2.QueryRowsRequest(namespace=NS, collection="trades")
    rows = list(s.collection.QueryRows(query).rows)
    expected += [("row", "create", row) for row in rows]
    eth = collection_pb2.Filter(field="symbol", op=collection_pb2.FILTER_OPERATOR_EQ,
                                typed_value=collection_pb2.FieldValue(string_value="ETH"))
    s.collection.UpdateRows(collection_pb2.UpdateRowsRequest(
        namespace=NS, collection="trades", filters=[eth], typed_set={"qty": integer(3)}))
    expected.append(("row", "update", s.collection.QueryRows(query).rows[0]))
    s.collection.DeleteRows(collection_pb2.DeleteRowsRequest(
        namespace=NS, collection="trades", filters=[eth]))
    expected.append(("row", "delete", f"trades/{rows[0].id}"))
    s.collection.DropCollection(collection_pb2.DropCollectionRequest(namespace=NS, name="trades"))
    expected.append(("collection", "delete", "trades"))

    operations = {"create": watch_pb2.CHANGE_OPERATION_CREATE,
                  "update": watch_pb2.CHANGE_OPERATION_UPDATE,
                  "delete": watch_pb2.CHANGE_OPERATION_DELETE}
    feed = changes(stubs, len(expected))
    assert [(c.kind, c.operation) for c in feed] == [
        (kind, operations[operation]) for kind, operation, _ in expected]
    for change, (kind, operation, resource) in zip(feed, expected, strict=True):
        if operation == "delete":
            assert change.WhichOneof("typed_resource") is None
            assert change.key == resource
        else:
            assert change.WhichOneof("typed_resource") == kind
            assert getattr(change, kind) == resource, diff(getattr(change, kind), resource)
    # the exact JSON text, not a float's idea of it
    assert feed[0].memory.attributes_json == (
        '{"strength":3,"ids":[1152921504606846976,-7],"r":0.5}')
    # the rows' typed values: an integer beyond 2^53 survives
    assert next(c.row.fields["qty"].integer_value for c in feed if c.kind == "row") == 2**60


def test_unknown_kinds_are_invalid_argument_naming_the_known_ones(stubs: Stubs) -> None:
    stream = stubs.watch.Watch(
        watch_pb2.WatchRequest(namespace=NS, kinds=["memory", "memorys"]), timeout=10)
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(stream))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kinds[1]" in raised.value.details()
    assert "'memorys' is not a kind of change" in raised.value.details()
    assert "memory, session, message, session_event" in raised.value.details()
