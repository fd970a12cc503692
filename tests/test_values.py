"""Exact JSON values: every JSON-valued field, through the raw stubs, comes back as it went in.

Each field is written as ``<field>_json`` text and through the older Struct/Value field, then
read back from the write's own response and from Get/List. The comparison is type-strict
(4 is not 4.0, True is not 1) and keeps the order of object keys.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonvalues import JSON_OBJECTS, JSON_VALUES, assert_identical

from conftest import Stubs
from jarvis.memory.v1 import (
    audit_pb2,
    event_pb2,
    memory_pb2,
    preference_pb2,
    session_pb2,
    snapshot_pb2,
    state_pb2,
)

FACT = memory_pb2.MEMORY_CATEGORY_FACT
USER = memory_pb2.MEMORY_SOURCE_USER_EXPLICIT
SUCCEEDED = audit_pb2.RUN_STATUS_SUCCEEDED
_namespaces = itertools.count()


def fresh_namespace() -> str:
    """A namespace of its own for every write, so each listing holds only what the test wrote."""
    return f"values-{next(_namespaces)}"


# -- the JSON-valued fields ------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One JSON-valued field of one write.

    ``setup`` prepares a namespace (a session to log into, a call to finish) and returns what
    ``write`` needs; ``write`` sends the field's keyword arguments (``x_json`` or ``x``) and
    returns the written resource; ``read`` returns that resource as Get and List return it;
    ``stored`` is everything in the namespace, to check that a refused write left nothing.
    """

    id: str
    name: str  # the field: "attributes"
    struct: bool  # a Struct (a JSON object) or a Value (any JSON value)
    path: str  # the field as the encoding errors name it: "memories[1].attributes"
    input_path: str  # the field as the request-decoding errors name it
    required: bool
    write: Callable[[Stubs, str, Any, dict[str, Any]], Any]
    read: Callable[[Stubs, str, Any, Any], list[Any]]
    stored: Callable[[Stubs, str, Any], list[Any]]
    setup: Callable[[Stubs, str], Any] = lambda s, ns: None


def _same(listed: list[Any], resource: Any) -> list[Any]:
    """The items of a listing that are ``resource`` (by id or key)."""
    key = "id" if any(f.name == "id" for f in resource.DESCRIPTOR.fields) else "key"
    found = [item for item in listed if getattr(item, key) == getattr(resource, key)]
    assert len(found) == 1
    return found


def _memories(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    return list(s.memory.ListMemories(memory_pb2.ListMemoriesRequest(namespace=ns)).memories)


def _read_memory(s: Stubs, ns: str, ctx: Any, m: Any) -> list[Any]:
    got = s.memory.GetMemory(memory_pb2.GetMemoryRequest(namespace=ns, id=m.id)).memory
    return [got, *_same(_memories(s, ns, ctx), m)]


def _add_memory(s: Stubs, ns: str, ctx: Any, kw: dict[str, Any]) -> Any:
    request = memory_pb2.AddMemoryRequest(namespace=ns, content="m", category=FACT, source=USER,
                                          **kw)
    return s.memory.AddMemory(request).memory


def _add_memories(s: Stubs, ns: str, ctx: Any, kw: dict[str, Any]) -> Any:
    batch = [memory_pb2.NewMemory(content="first", category=FACT, source=USER),
             memory_pb2.NewMemory(content="second", category=FACT, source=USER, **kw)]
    response = s.memory.AddMemories(memory_pb2.AddMemoriesRequest(namespace=ns, memories=batch))
    return response.results[1].memory


def _old_memory(s: Stubs, ns: str) -> int:
    request = memory_pb2.AddMemoryRequest(namespace=ns, content="m", category=FACT, source=USER,
                                          attributes_json='{"old":1}')
    return int(s.memory.AddMemory(request).memory.id)


def _update_memory(mask: str) -> Callable[[Stubs, str, Any, dict[str, Any]], Any]:
    def write(s: Stubs, ns: str, ctx: Any, kw: dict[str, Any]) -> Any:
        request = memory_pb2.UpdateMemoryRequest(
            namespace=ns, memory=memory_pb2.Memory(id=ctx, **kw),
            update_mask=field_mask_pb2.FieldMask(paths=[mask]))
        return s.memory.UpdateMemory(request).memory
    return write


def _start_session(s: Stubs, ns: str) -> str:
    s.session.StartSession(session_pb2.StartSessionRequest(namespace=ns, session_id="s"))
    return "s"


def _sessions(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    return list(s.session.ListSessions(session_pb2.ListSessionsRequest(namespace=ns)).sessions)


def _session_events(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    request = session_pb2.ListSessionEventsRequest(namespace=ns, session_id="s")
    return list(s.session.ListSessionEvents(request).events)


def _messages(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    request = session_pb2.ListMessagesRequest(namespace=ns, session_id="s")
    return list(s.session.ListMessages(request).messages)


def _events(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    return list(s.event.ListEvents(event_pb2.ListEventsRequest(namespace=ns)).events)


def _snapshots(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    request = snapshot_pb2.ListSnapshotsRequest(namespace=ns, kind="k")
    return list(s.snapshot.ListSnapshots(request).snapshots)


def _preferences(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    request = preference_pb2.ListPreferencesRequest(namespace=ns)
    return list(s.preference.ListPreferences(request).preferences)


def _entries(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    return list(s.state.ListState(state_pb2.ListStateRequest(namespace=ns)).entries)


def _calls(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    return list(s.audit.ListToolCalls(audit_pb2.ListToolCallsRequest(namespace=ns)).tool_calls)


def _read_call(s: Stubs, ns: str, ctx: Any, call: Any) -> list[Any]:
    got = s.audit.GetToolCall(audit_pb2.GetToolCallRequest(namespace=ns, id=call.id)).tool_call
    return [got, *_same(_calls(s, ns, ctx), call)]


def _cycles(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    request = audit_pb2.ListPlanningCyclesRequest(namespace=ns)
    return list(s.audit.ListPlanningCycles(request).cycles)


def _decisions(s: Stubs, ns: str, ctx: Any) -> list[Any]:
    return list(s.audit.ListDecisions(audit_pb2.ListDecisionsRequest(namespace=ns)).decisions)


def _listed(stored: Callable[[Stubs, str, Any], list[Any]]) -> Callable[..., list[Any]]:
    """A read that finds the resource in a listing."""
    return lambda s, ns, ctx, resource: _same(stored(s, ns, ctx), resource)


FIELDS = [
    Field("AddMemory.attributes", "attributes", True, "attributes", "attributes", False,
          _add_memory, _read_memory, _memories),
    Field("AddMemories.attributes", "attributes", True, "memories[1].attributes",
          "memories[1].attributes", False, _add_memories, _read_memory, _memories),
    Field("UpdateMemory.attributes", "attributes", True, "attributes", "memory.attributes",
          False, _update_memory("attributes"), _read_memory, _memories, _old_memory),
    Field("UpdateMemory.attributes_json", "attributes", True, "attributes",
          "memory.attributes", False, _update_memory("attributes_json"), _read_memory,
          _memories, _old_memory),
    Field("StartSession.metadata", "metadata", True, "metadata", "metadata", False,
          lambda s, ns, ctx, kw: s.session.StartSession(
              session_pb2.StartSessionRequest(namespace=ns, session_id="s", **kw)).session,
          lambda s, ns, ctx, r: [
              s.session.GetSession(session_pb2.GetSessionRequest(namespace=ns, session_id="s"))
              .session, *_sessions(s, ns, ctx)],
          _sessions),
    Field("LogSessionEvent.data", "data", True, "data", "data", False,
          lambda s, ns, ctx, kw: s.session.LogSessionEvent(session_pb2.LogSessionEventRequest(
              namespace=ns, session_id=ctx, event_type="e", **kw)).event,
          _listed(_session_events), _session_events, _start_session),
    Field("AppendMessage.tool_calls", "tool_calls", False, "tool_calls", "tool_calls", False,
          lambda s, ns, ctx, kw: s.session.AppendMessage(session_pb2.AppendMessageRequest(
              namespace=ns, session_id=ctx, role=session_pb2.MESSAGE_ROLE_ASSISTANT,
              content="hi", **kw)).message,
          _listed(_messages), _messages, _start_session),
    Field("RecordEvent.details", "details", True, "details", "details", False,
          lambda s, ns, ctx, kw: s.event.RecordEvent(event_pb2.RecordEventRequest(
              namespace=ns, type=event_pb2.EVENT_TYPE_ALERT,
              severity=event_pb2.EVENT_SEVERITY_INFO, source=event_pb2.EVENT_SOURCE_MONITOR,
              summary="e", **kw)).event,
          lambda s, ns, ctx, e: [
              s.event.GetEvent(event_pb2.GetEventRequest(namespace=ns, id=e.id)).event,
              *_same(_events(s, ns, ctx), e)],
          _events),
    Field("SaveSnapshot.data", "data", True, "data", "data", True,
          lambda s, ns, ctx, kw: s.snapshot.SaveSnapshot(
              snapshot_pb2.SaveSnapshotRequest(namespace=ns, kind="k", **kw)).snapshot,
          lambda s, ns, ctx, r: [
              s.snapshot.GetLatestSnapshot(
                  snapshot_pb2.GetLatestSnapshotRequest(namespace=ns, kind="k")).snapshot,
              *_same(_snapshots(s, ns, ctx), r)],
          _snapshots),
    Field("SetPreference.value", "value", False, "value", "value", True,
          lambda s, ns, ctx, kw: s.preference.SetPreference(
              preference_pb2.SetPreferenceRequest(namespace=ns, key="k", **kw)).preference,
          lambda s, ns, ctx, r: [
              s.preference.GetPreference(
                  preference_pb2.GetPreferenceRequest(namespace=ns, key="k")).preference,
              *_same(_preferences(s, ns, ctx), r)],
          _preferences),
    Field("PutState.value", "value", False, "value", "value", True,
          lambda s, ns, ctx, kw: s.state.PutState(
              state_pb2.PutStateRequest(namespace=ns, key="k", **kw)).entry,
          lambda s, ns, ctx, r: [
              s.state.GetState(state_pb2.GetStateRequest(namespace=ns, key="k")).entry,
              *_same(_entries(s, ns, ctx), r)],
          _entries),
    Field("StartToolCall.input", "input", False, "input", "input", False,
          lambda s, ns, ctx, kw: s.audit.StartToolCall(
              audit_pb2.StartToolCallRequest(namespace=ns, tool="t", **kw)).tool_call,
          _read_call, _calls),
    Field("FinishToolCall.output", "output", False, "output", "output", False,
          lambda s, ns, ctx, kw: s.audit.FinishToolCall(audit_pb2.FinishToolCallRequest(
              namespace=ns, id=ctx, status=SUCCEEDED, **kw)).tool_call,
          _read_call, _calls,
          lambda s, ns: s.audit.StartToolCall(
              audit_pb2.StartToolCallRequest(namespace=ns, tool="t")).tool_call.id),
    Field("StartPlanningCycle.goals", "goals", False, "goals", "goals", False,
          lambda s, ns, ctx, kw: s.audit.StartPlanningCycle(
              audit_pb2.StartPlanningCycleRequest(namespace=ns, **kw)).cycle,
          _listed(_cycles), _cycles),
    Field("FinishPlanningCycle.outcomes", "outcomes", False, "outcomes", "outcomes", False,
          lambda s, ns, ctx, kw: s.audit.FinishPlanningCycle(
              audit_pb2.FinishPlanningCycleRequest(
                  namespace=ns, id=ctx, status=SUCCEEDED, **kw)).cycle,
          _listed(_cycles), _cycles,
          lambda s, ns: s.audit.StartPlanningCycle(
              audit_pb2.StartPlanningCycleRequest(namespace=ns)).cycle.id),
    Field("RecordDecision.reasoning", "reasoning", False, "reasoning", "reasoning", False,
          lambda s, ns, ctx, kw: s.audit.RecordDecision(
              audit_pb2.RecordDecisionRequest(namespace=ns, decision="d", **kw)).decision,
          _listed(_decisions), _decisions),
]
STRUCT_FIELDS = [f for f in FIELDS if f.struct]
by_field = pytest.mark.parametrize("field", FIELDS, ids=[f.id for f in FIELDS])


# -- comparing -------------------------------------------------------------------------------


def as_doubles(value: Any) -> Any:
    """A JSON value as the older Struct/Value fields hold it: every number a double."""
    if isinstance(value, dict):
        return {key: as_doubles(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_doubles(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def assert_carries(message: Any, field: str, value: Any, *, ordered: bool = True) -> None:
    """``message.<field>_json`` is exactly ``value`` and the older field holds it too."""
    text = getattr(message, field + "_json")
    loaded = json.loads(text)
    assert text == compact(loaded)
    assert_identical(loaded, value, ordered=ordered)
    assert message.HasField(field)
    older = json_format.MessageToDict(getattr(message, field))
    assert as_doubles(older) == as_doubles(value)


def round_trip(stubs: Stubs, field: Field, value: Any, *, legacy: bool = False) -> None:
    """Write ``value`` into ``field`` and check the write's response and every read."""
    ns = fresh_namespace()
    ctx = field.setup(stubs, ns)
    kw = {field.name: older(field, value)} if legacy else {field.name + "_json": json.dumps(value)}
    written = field.write(stubs, ns, ctx, kw)
    want = legacy_value(value) if legacy else value
    for message in [written, *field.read(stubs, ns, ctx, written)]:
        assert_carries(message, field.name, want, ordered=not legacy)


def older(field: Field, value: Any) -> Any:
    """``value`` in the field's older form: a Struct or a Value."""
    if field.struct:
        struct = struct_pb2.Struct()
        struct.update(value)
        return struct
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def legacy_value(value: Any) -> Any:
    """What the daemon reads from the older form: whole numbers within +-2^53 are int."""
    if isinstance(value, dict):
        return {key: legacy_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [legacy_value(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return int(number) if number.is_integer() and abs(number) <= 2**53 else number
    return value


# -- exact round trips -----------------------------------------------------------------------

EXAMPLE: dict[str, Any] = {
    "zeta": 1,  # keys stay in the order written, not sorted
    "big": 2**60,
    "min": -(2**63),
    "max": 2**63 - 1,
    "neg": -7,
    "half": 0.5,
    "four": 4.0,
    "huge": 1e300,
    "tiny": -5e-324,
    "none": None,
    "yes": True,
    "no": False,
    "one": 1,
    "text": "héllo ✓ 日本語 🎉 \"quoted\" \\ \n\t\u0000",
    "nested": {"list": [1, 1.0, [True, None, {"b": 1, "a": [2, 2.0]}]], "empty": {}, "none": []},
    "alpha": 2,
}
VALUE_ROOTS: list[Any] = [[1, 4.0, "x", None], "text", 4, 4.0, -0.5, True, False, None,
                          2**63 - 1, -(2**63), 1e300]


@by_field
def test_exact_round_trip(stubs: Stubs, field: Field) -> None:
    round_trip(stubs, field, EXAMPLE)
    round_trip(stubs, field, {})
    if not field.struct:
        for root in VALUE_ROOTS:
            round_trip(stubs, field, root)


@by_field
def test_text_is_stored_compact_in_key_order(stubs: Stubs, field: Field) -> None:
    ns = fresh_namespace()
    ctx = field.setup(stubs, ns)
    text = '{ "b" : 1.50,\n "a": [ 1 ,2e0, -0 ], "b": 4 }'  # a key twice keeps its last value
    written = field.write(stubs, ns, ctx, {field.name + "_json": text})
    for message in [written, *field.read(stubs, ns, ctx, written)]:
        assert getattr(message, field.name + "_json") == '{"b":4,"a":[1,2.0,0]}'


@by_field
def test_the_older_form_reads_back_as_exact_text(stubs: Stubs, field: Field) -> None:
    # One key each: a Struct is a protobuf map, whose order is not kept.
    for value, text in (({"step": 4}, '{"step":4}'), ({"r": 0.5}, '{"r":0.5}'),
                        ({"big": 2.0**60}, '{"big":1.152921504606847e+18}')):
        ns = fresh_namespace()
        ctx = field.setup(stubs, ns)
        written = field.write(stubs, ns, ctx, {field.name: older(field, value)})
        for message in [written, *field.read(stubs, ns, ctx, written)]:
            assert getattr(message, field.name + "_json") == text
    round_trip(stubs, field, EXAMPLE, legacy=True)


@by_field
def test_not_given_is_unset_or_required(stubs: Stubs, field: Field) -> None:
    ns = fresh_namespace()
    ctx = field.setup(stubs, ns)
    if field.required:
        before = field.stored(stubs, ns, ctx)
        expect_invalid(lambda: field.write(stubs, ns, ctx, {}), field.path, "required")
        assert field.stored(stubs, ns, ctx) == before
        return
    # (An update whose mask names the field clears it.)
    written = field.write(stubs, ns, ctx, {})
    for message in [written, *field.read(stubs, ns, ctx, written)]:
        assert getattr(message, field.name + "_json") == ""
        assert not message.HasField(field.name)


def test_a_null_value_is_a_value_not_an_absence(stubs: Stubs) -> None:
    for field in FIELDS:
        if not field.struct:
            round_trip(stubs, field, None)
            round_trip(stubs, field, None, legacy=True)


def test_session_start_event_carries_the_metadata(stubs: Stubs) -> None:
    ns = fresh_namespace()
    stubs.session.StartSession(session_pb2.StartSessionRequest(
        namespace=ns, session_id="s", metadata_json=json.dumps(EXAMPLE)))
    stubs.session.EndSession(session_pb2.EndSessionRequest(
        namespace=ns, session_id="s", trigger=session_pb2.SESSION_END_TRIGGER_EXPLICIT,
        summary="done ✓"))
    start, end = sorted(_session_events(stubs, ns, None), key=lambda e: e.id)
    assert (start.event_type, end.event_type) == ("session_start", "session_end")
    assert_carries(start, "data", EXAMPLE)
    # The daemon's own JSON is compact like any other.
    assert end.data_json.startswith('{"trigger":"explicit","duration_ms":')
    assert json.loads(end.data_json)["summary"] == "done ✓"


# -- any JSON value (hypothesis) -------------------------------------------------------------




@by_field
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_json_value_round_trips(
    stubs: Stubs, field: Field, data: st.DataObject
) -> None:
    round_trip(stubs, field, data.draw(JSON_OBJECTS if field.struct else JSON_VALUES))


# -- refused values --------------------------------------------------------------------------


def expect_invalid(call: Callable[[], Any], field: str, *words: str) -> None:
    """``call`` fails with INVALID_ARGUMENT naming ``field``, its message holding ``words``."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.metadata["field"] == field, (info.metadata["field"], error.details())
    message = error.details()
    assert message.startswith(field + ":")
    for word in words:
        assert word in message, message


def refused(stubs: Stubs, field: Field, kw: dict[str, Any], where: str,
            *words: str) -> None:
    """A write of ``kw`` is INVALID_ARGUMENT naming ``where`` and stores nothing."""
    ns = fresh_namespace()
    ctx = field.setup(stubs, ns)
    before = field.stored(stubs, ns, ctx)
    expect_invalid(lambda: field.write(stubs, ns, ctx, kw), where, *words)
    assert field.stored(stubs, ns, ctx) == before


def nested(levels: int) -> dict[str, Any]:
    """Objects nested ``levels`` deep: {"a": {"a": ... {} }}."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@by_field
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_with_their_path(
    stubs: Stubs, field: Field, number: str
) -> None:
    path = f"{field.path}.scores[2]"
    text = f'{{"scores":[1,2,{number}]}}'
    refused(stubs, field, {field.name + "_json": text}, path, "NaN and Infinity")
    legacy = older(field, {"scores": [1, 2, float(number.lower().replace("infinity", "inf"))]})
    refused(stubs, field, {field.name: legacy}, path, "NaN and Infinity")


@by_field
def test_integers_beyond_int64_are_refused(stubs: Stubs, field: Field) -> None:
    for number in (2**63, -(2**63) - 1, 10**30):
        refused(stubs, field, {field.name + "_json": f'{{"x":{{"n":{number}}}}}'},
                f"{field.path}.x.n", "int64")
    # Just inside the range is accepted.
    round_trip(stubs, field, {"x": {"n": 2**63 - 1, "m": -(2**63)}})


@by_field
def test_nesting_deeper_than_30_is_refused(stubs: Stubs, field: Field) -> None:
    round_trip(stubs, field, nested(30))
    if not field.struct:
        round_trip(stubs, field, json.loads("[" * 30 + "]" * 30))
    too_deep = nested(31)
    path = field.path + ".a" * 30
    refused(stubs, field, {field.name + "_json": json.dumps(too_deep)}, path, "30 levels")
    refused(stubs, field, {field.name: older(field, too_deep)}, path, "30 levels")


@by_field
def test_malformed_requests_are_refused(stubs: Stubs, field: Field) -> None:
    text_field = field.input_path + "_json"
    for text in ("{", '{"a":1,}', "{'a': 1}", "[1] 2", "nul"):
        refused(stubs, field, {field.name + "_json": text}, text_field, "not valid JSON")
    refused(stubs, field, {field.name + "_json": '{"s":"\\ud800"}'}, f"{field.path}.s",
            "surrogate")
    both = {field.name + "_json": '{"a":1}', field.name: older(field, {"a": 1})}
    refused(stubs, field, both, field.input_path, "not both")
    if field.struct:
        for text in ("[1]", '"x"', "4", "true"):
            refused(stubs, field, {field.name + "_json": text}, text_field, "JSON object")


def test_a_refused_update_keeps_the_attributes(stubs: Stubs) -> None:
    ns = fresh_namespace()
    memory_id = _old_memory(stubs, ns)
    (before,) = _memories(stubs, ns, None)
    for mask in ("attributes", "attributes_json"):
        request = memory_pb2.UpdateMemoryRequest(
            namespace=ns, memory=memory_pb2.Memory(id=memory_id, attributes_json='{"x":NaN}'),
            update_mask=field_mask_pb2.FieldMask(paths=[mask]))
        expect_invalid(partial(stubs.memory.UpdateMemory, request), "attributes.x", "NaN")
    assert _memories(stubs, ns, None) == [before]
    assert before.attributes_json == '{"old":1}'
