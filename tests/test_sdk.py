"""The Python SDK: exact values, typed changes, argument checks, both clients, retries."""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import HealthCheck, given, settings
from jsonvalues import JSON_OBJECTS, JSON_VALUES, assert_identical, same

from conftest import METHODS, ROOT, Daemon
from jarvis.memory.v1 import (
    audit_pb2,
    collection_pb2,
    event_pb2,
    memory_pb2,
    search_pb2,
    session_pb2,
)
from jarvis_memory import (
    NO_RETRY,
    AsyncClient,
    BackupResult,
    Change,
    Client,
    FailedPrecondition,
    InvalidArgument,
    JarvisMemoryError,
    Memory,
    NotFound,
    Page,
    RetryPolicy,
    Stats,
    Unavailable,
    types,
)
from jarvis_memory import _api as api

# A value JSON can carry that a float-only encoding would break: ints beyond 2^53, 4 vs 4.0.
EXACT: dict[str, Any] = {
    "big": 2**60, "min": -(2**63), "max": 2**63 - 1, "half": 0.5, "four": 4.0, "int4": 4,
    "list": [1, 2.0, "x", None, True, False], "nested": {"deep": [{"a": 1.5, "b": [2**55]}]},
    "text": "ümlaut ☕ \"quoted\"", "empty": {}, "none": None, "tiny": 1e-300,
}
SCALARS: list[Any] = [2**60, 4.0, 4, -0.5, "text", True, None, [2**60, 4.0], EXACT]


class CountingRetry(RetryPolicy):
    """Records each backoff it is asked for, without waiting long."""

    def __init__(self, max_attempts: int) -> None:
        super().__init__(max_attempts=max_attempts, initial_backoff=0.001, max_backoff=0.002)
        object.__setattr__(self, "asked", [])

    def backoff(self, attempt: int) -> float:
        self.asked.append(attempt)  # type: ignore[attr-defined]
        return super().backoff(attempt)


def unused_address() -> str:
    """An address where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# -- the issue's script ------------------------------------------------------------------------


def test_the_issue_script_runs_as_written(fresh_daemon: Daemon) -> None:
    with Client(fresh_daemon.addr) as jm:
        value = {"step": 4, "ids": [2**60, -7], "ratio": 0.5, "done": False, "note": None}
        jm.put_state("planner/cursor", value)
        assert jm.get_state("planner/cursor").value == value
        assert type(jm.get_state("planner/cursor").value["ids"][0]) is int
        with pytest.raises(InvalidArgument) as info:
            jm.put_state("bad", float("nan"))
        assert info.value.metadata == {"field": "value"} and "NaN" in info.value.message
        m = jm.add_memory("Prefers tea", category="preference", source="user_explicit",
                          attributes={"strength": 3})
        change = next(jm.watch(kinds=["memory"], start_revision=1))
        assert change.resource == jm.get_memory(m.id)
        with pytest.raises(InvalidArgument) as info:
            next(jm.watch(kinds=["memorys"]))  # type: ignore[list-item]
        assert info.value.metadata == {"field": "kinds"}
        assert "'memorys'" in info.value.message and ", ".join(api.KINDS) in info.value.message
        with pytest.raises(InvalidArgument) as info:
            jm.add_memory(123)  # type: ignore[arg-type]
        assert str(info.value) == "INVALID_ARGUMENT: content: must be text (str), got int"
        assert info.value.metadata == {"field": "content"}


# -- JSON values come back exactly -------------------------------------------------------------


def test_json_values_round_trip_exactly(jm: Client, namespace: str) -> None:
    ns = {"namespace": namespace}
    for i, value in enumerate(SCALARS):
        assert same(jm.put_state(f"k{i}", value, **ns).value, value), value
        assert same(jm.get_state(f"k{i}", **ns).value, value), value
        assert same(jm.set_preference(f"p{i}", value, **ns).value, value), value
        assert same(jm.get_preference(f"p{i}", **ns).value, value), value
    assert [e.key for e in jm.list_state(**ns)] == sorted(f"k{i}" for i in range(len(SCALARS)))
    assert all(same(e.value, SCALARS[int(e.key[1:])]) for e in jm.iter_state(**ns))

    m = jm.add_memory("exact attributes", category="fact", source="user_explicit",
                      attributes=EXACT, **ns)
    assert same(m.attributes, EXACT) and same(jm.get_memory(m.id, **ns).attributes, EXACT)
    batch = jm.add_memories([{"content": "exact batch", "category": "fact",
                              "source": "agent_inferred", "attributes": EXACT}], **ns)
    assert same(batch[0].attributes, EXACT)
    updated = jm.update_memory(m.id, attributes={"now": 4.0, "big": -(2**62)}, **ns)
    assert same(updated.attributes, {"now": 4.0, "big": -(2**62)})
    assert jm.update_memory(m.id, attributes=None, **ns).attributes is None

    e = jm.record_event(type="metric", severity="info", source="agent", summary="exact",
                        details=EXACT, **ns)
    assert same(e.details, EXACT) and same(jm.get_event(e.id, **ns).details, EXACT)

    s = jm.start_session(metadata=EXACT, **ns)
    assert same(s.metadata, EXACT) and same(jm.get_session(s.id, **ns).metadata, EXACT)
    for value in SCALARS[:-1]:
        msg = jm.append_message(s.id, role="tool", content="x", tool_calls=[value, EXACT], **ns)
        assert same(msg.tool_calls, [value, EXACT])
    assert all(same(x.tool_calls[1], EXACT) for x in jm.list_messages(s.id, **ns))
    logged = jm.log_session_event(s.id, "exact", EXACT, **ns)
    assert same(logged.data, EXACT)

    snap = jm.save_snapshot(EXACT, kind="exact", **ns)
    assert same(snap.data, EXACT) and same(jm.get_latest_snapshot("exact", **ns).data, EXACT)

    call = jm.start_tool_call("probe", input=EXACT, **ns)
    done = jm.finish_tool_call(call.id, status="succeeded", output=[2**60, 0.5, 4.0], **ns)
    assert same(done.input, EXACT) and same(done.output, [2**60, 0.5, 4.0])
    assert same(jm.get_tool_call(call.id, **ns).output, [2**60, 0.5, 4.0])
    cycle = jm.start_planning_cycle({"goals": [4.0, 2**60]}, **ns)
    assert same(cycle.goals, {"goals": [4.0, 2**60]})
    decision = jm.record_decision("go", reasoning=EXACT, cycle_id=cycle.id, **ns)
    assert same(decision.reasoning, EXACT)
    finished = jm.finish_planning_cycle(cycle.id, status="succeeded", outcomes=4.0, **ns)
    assert same(finished.outcomes, 4.0)
    assert same(jm.list_decisions(cycle_id=cycle.id, **ns)[0].reasoning, EXACT)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON_VALUES, attributes=JSON_OBJECTS)
def test_any_json_value_round_trips_through_the_sdk(
    jm: Client, namespace: str, value: Any, attributes: dict[str, Any]
) -> None:
    ns = {"namespace": namespace}
    assert_identical(jm.put_state("any", value, **ns).value, value)
    assert_identical(jm.get_state("any", **ns).value, value)
    assert_identical(jm.set_preference("any", value, **ns).value, value)
    assert_identical(jm.get_preference("any", **ns).value, value)
    m = jm.add_memory(f"any {jm.get_state('any', **ns).revision}", category="fact",
                      source="agent_inferred", attributes=attributes, **ns)
    assert_identical(jm.get_memory(m.id, **ns).attributes, attributes)
    assert_identical(jm.record_event(type="metric", severity="info", source="agent",
                                     summary="any", details=attributes, **ns).details, attributes)


def test_collection_values_are_typed_both_ways(jm: Client, namespace: str) -> None:
    ns = {"namespace": namespace}
    jm.create_collection("typed", fields=[
        ("s", "string", {"required": True}), ("i", "integer", {"indexed": True}),
        ("r", "real", {}), ("b", "boolean", {}), ("j", "json", {}), ("t", "timestamp", {})],
        **ns)
    local = datetime(2026, 11, 22, 7, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    naive = datetime(2026, 1, 2, 3, 4, 5, 6)
    rows = [
        {"s": "a", "i": 2**53, "r": 0.5, "b": True, "j": EXACT, "t": local},
        {"s": "b", "i": -7, "r": 4.0, "b": False, "j": [2**60, 4.0], "t": naive},
        {"s": "c"},
    ]
    ids = jm.insert_rows("typed", rows, **ns)
    got = jm.query_rows("typed", order_by=["s"], **ns)
    assert [r["id"] for r in got] == ids
    first, second, third = got
    assert same(first["i"], 2**53) and same(first["r"], 0.5) and same(first["b"], True)
    assert same(first["j"], EXACT) and first["t"] == local and first["t"].tzinfo == UTC
    assert same(second["r"], 4.0) and same(second["j"], [2**60, 4.0])
    assert second["t"] == naive.replace(tzinfo=UTC)
    assert third == {"id": ids[2], "s": "c", "i": None, "r": None, "b": None, "j": None,
                     "t": None}
    # Typed filter values: reals, timestamps, IN lists, IS NULL.
    assert [r["s"] for r in jm.query_rows("typed", where=[("r", "eq", 4.0)], **ns)] == ["b"]
    assert [r["s"] for r in jm.query_rows("typed", where=[("t", "ge", local)], **ns)] == ["a"]
    assert [r["s"] for r in jm.query_rows("typed", where=[("i", "in", [2**53, -7])],
                                          order_by=["-i"], **ns)] == ["a", "b"]
    assert [r["s"] for r in jm.query_rows("typed", where=[("r", "is_null")], **ns)] == ["c"]
    assert jm.update_rows("typed", set={"r": 4.0, "j": {"x": 2**60}}, where=[("s", "eq", "c")],
                          **ns) == 1
    changed = jm.query_rows("typed", where=[("s", "eq", "c")], **ns)[0]
    assert same(changed["r"], 4.0) and same(changed["j"], {"x": 2**60})
    assert list(jm.iter_rows("typed", order_by=["s"], page_size=1, **ns)) == [
        first, second, changed]


# -- the change feed carries the typed resources Get returns ------------------------------------


def test_changes_carry_what_get_returns(jm: Client, namespace: str) -> None:
    ns = {"namespace": namespace}
    start = jm.put_state("anchor", 0, **ns).revision + 1
    m = jm.add_memory("typed change", category="fact", source="user_explicit",
                      attributes={"n": 4.0}, **ns)
    jm.update_memory(m.id, stale=True, **ns)
    gone = jm.add_memory("deleted soon", category="fact", source="user_explicit", **ns)
    jm.delete_memory(gone.id, **ns)
    s = jm.start_session(metadata={"a": 2**60}, **ns)
    jm.append_message(s.id, role="user", content="hi", tool_calls={"x": 4.0}, **ns)
    jm.log_session_event(s.id, "note", {"k": 0.5}, **ns)
    jm.end_session(s.id, summary="typed", **ns)  # the session's last change: its final state
    e = jm.record_event(type="alert", severity="error", source="monitor", summary="disk", **ns)
    jm.resolve_event(e.id, resolved_by="me", **ns)
    jm.save_snapshot({"nodes": 4}, kind="typed", **ns)
    jm.set_preference("theme", {"dark": True}, **ns)
    jm.put_state("cursor", [2**60], **ns)
    call = jm.start_tool_call("t", input={"q": 1}, **ns)
    jm.finish_tool_call(call.id, status="failed", error="boom", **ns)
    cycle = jm.start_planning_cycle(["g"], **ns)
    jm.record_decision("d", reasoning={"why": 4.0}, cycle_id=cycle.id, **ns)
    jm.finish_planning_cycle(cycle.id, status="succeeded", **ns)
    jm.create_collection("c", fields=[("v", "real", {})], **ns)
    jm.insert_rows("c", [{"v": 4.0}], **ns)
    end = jm.put_state("last", 1, **ns).revision

    last: dict[tuple[str, str], Change] = {}
    for change in jm.watch(start_revision=start, **ns):
        last[(change.kind, change.key)] = change
        if change.revision >= end:
            break
    assert {kind for kind, _ in last} == set(api.KINDS)
    assert last[("memory", str(gone.id))].resource is None
    assert last[("memory", str(gone.id))].operation == "delete"
    expected: dict[str, Callable[[str], Any]] = {
        "memory": lambda key: jm.get_memory(int(key), **ns),
        "session": lambda key: jm.get_session(key, **ns),
        "message": lambda key: next(x for x in jm.iter_messages(s.id, **ns)
                                    if str(x.id) == key),
        "session_event": lambda key: next(x for x in jm.iter_session_events(s.id, **ns)
                                          if str(x.id) == key),
        "event": lambda key: jm.get_event(int(key), **ns),
        "snapshot": lambda key: jm.get_latest_snapshot("typed", **ns),
        "preference": lambda key: jm.get_preference(key, **ns),
        "state": lambda key: jm.get_state(key, **ns),
        "tool_call": lambda key: jm.get_tool_call(int(key), **ns),
        "planning_cycle": lambda key: next(x for x in jm.iter_planning_cycles(**ns)
                                           if str(x.id) == key),
        "decision": lambda key: next(x for x in jm.iter_decisions(**ns) if str(x.id) == key),
        "collection": lambda key: jm.get_collection(key, **ns),
        "row": lambda key: next(r for r in jm.iter_rows(key.split("/")[0], **ns)
                                if r["id"] == int(key.split("/")[1])),
    }
    for (kind, key), change in last.items():
        if change.operation != "delete":
            assert change.resource == expected[kind](key), (kind, key)
            assert isinstance(change.resource, dict) == (kind == "row"), (kind, key)
    assert isinstance(last[("memory", str(m.id))].resource, Memory)


# -- arguments are checked before anything is sent --------------------------------------------

BAD_CALLS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("content", lambda jm: jm.add_memory(123), "must be text (str), got int"),
    ("category", lambda jm: jm.add_memory("x", category="opinion", source="user_explicit"),
     "not one of preference, fact, pattern"),
    ("source", lambda jm: jm.add_memory("x", category="fact"), "is required"),
    ("attributes.scores[2]", lambda jm: jm.add_memory(
        "x", category="fact", source="user_explicit", attributes={"scores": [1, 2, float("nan")]}),
     "NaN"),
    ("attributes.tags", lambda jm: jm.add_memory(
        "x", category="fact", source="user_explicit", attributes={"tags": {"a", "b"}}),
     "set is not a JSON value"),
    ("attributes.who", lambda jm: jm.add_memory(
        "x", category="fact", source="user_explicit", attributes={"who": object()}),
     "object is not a JSON value"),
    ("attributes.big", lambda jm: jm.add_memory(
        "x", category="fact", source="user_explicit", attributes={"big": 2**64}), "int64"),
    ("attributes", lambda jm: jm.add_memory(
        "x", category="fact", source="user_explicit", attributes={1: "one"}), "keys are text"),
    ("attributes", lambda jm: jm.add_memory(
        "x", category="fact", source="user_explicit", attributes=[1]), "JSON object"),
    ("embedding[1]", lambda jm: jm.add_memory(
        "x", category="fact", source="user_explicit", embedding=[0.1, "a"]), "number"),
    ("embedding", lambda jm: jm.add_memory(
        "x", category="fact", source="user_explicit", embedding="0.1"), "list of numbers"),
    ("memories[1].category", lambda jm: jm.add_memories(
        [{"content": "a", "category": "fact", "source": "user_explicit"}, {"content": "b"}]),
     "required"),
    ("memories[0].content", lambda jm: jm.add_memories(
        [{"content": 5, "category": "fact", "source": "user_explicit"}]), "text"),
    ("metadata", lambda jm: jm.start_session(metadata=["a"]), "JSON object"),
    ("page_size", lambda jm: jm.list_memories(page_size="x"), "integer"),
    ("page_size", lambda jm: list(jm.iter_events(page_size=2**40)), "outside the range"),
    ("memory_id", lambda jm: jm.get_memory("1"), "integer"),
    ("memory_id", lambda jm: jm.delete_memory(True), "integer"),
    ("created_after", lambda jm: jm.list_memories(created_after="2026-01-01"), "datetime"),
    ("colour", lambda jm: jm.list_memories(colour="red"), "unknown"),
    ("colour", lambda jm: jm.update_memory(1, colour="red"), "unknown"),
    ("stale", lambda jm: jm.update_memory(1, stale="yes"), "bool"),
    ("value", lambda jm: jm.put_state("k", float("inf")), "Infinity"),
    ("value.a", lambda jm: jm.set_preference("k", {"a": float("nan")}), "NaN"),
    ("ttl", lambda jm: jm.put_state("k", 1, ttl="soon"), "seconds"),
    ("key", lambda jm: jm.get_state("k\ud800"), "surrogate"),
    ("namespace", lambda jm: jm.get_state("k", namespace=5), "text"),
    ("type", lambda jm: jm.record_event(type="alarm", severity="info", source="agent",
                                        summary="x"), "alert, action, status, metric"),
    ("since", lambda jm: jm.list_events(since=12), "datetime"),
    ("types", lambda jm: jm.list_events(types="alert"), "list"),
    ("role", lambda jm: jm.append_message("s", role="robot", content="x"), "user, assistant"),
    ("tool_calls", lambda jm: jm.append_message("s", role="tool", content="x",
                                                tool_calls=b"raw"), "bytes"),
    ("day", lambda jm: jm.list_session_events(day=5), "date"),
    ("status", lambda jm: jm.finish_tool_call(1, status="done"), "succeeded"),
    ("input", lambda jm: jm.start_tool_call("t", input=float("nan")), "NaN"),
    ("data", lambda jm: jm.save_snapshot([1, 2]), "JSON object"),
    ("mode", lambda jm: jm.search_memories("x", mode="fuzzy"), "keyword, vector, hybrid"),
    ("rows[0].when", lambda jm: jm.insert_rows("t", [{"when": object()}]),
     "not a collection value"),
    ("rows[1].r", lambda jm: jm.insert_rows("t", [{"r": 1.0}, {"r": float("nan")}]), "finite"),
    ("where[0].op", lambda jm: jm.query_rows("t", where=[("x", "between", 1)]), "eq, ne"),
    ("where[0].value", lambda jm: jm.query_rows("t", where=[("x", "in", 5)]), "list"),
    ("set.x", lambda jm: jm.update_rows("t", set={"x": {1, 2}}), "set"),
    ("fields[0].type", lambda jm: jm.create_collection("t", fields=[("x", "decimal")]),
     "string, integer"),
    ("order_by", lambda jm: jm.query_rows("t", order_by="x"), "list of strings"),
    ("kinds", lambda jm: next(iter(jm.watch(kinds="memory"))), "list"),
    ("start_revision", lambda jm: jm.watch(start_revision="1"), "integer"),
    ("path", lambda jm: jm.backup(123), "file path"),
]


@pytest.mark.parametrize(("field", "call", "says"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_argument_mistakes_are_invalid_argument_before_any_rpc(
        field: str, call: Callable[[Any], Any], says: str) -> None:
    # Nothing listens there: had anything been sent, the error would be Unavailable.
    with Client("127.0.0.1:1", timeout=0.5, retry=NO_RETRY) as jm, \
            pytest.raises(InvalidArgument) as info:
        call(jm)
    error = info.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.metadata == {"field": field}, error
    assert error.message.startswith(f"{field}: ") and says in error.message, error.message


def test_the_async_client_checks_arguments_before_any_rpc() -> None:
    async def scenario() -> list[str]:
        fields = []
        async with AsyncClient("127.0.0.1:1", timeout=0.5, retry=NO_RETRY) as jm:
            for field, call, _ in BAD_CALLS:
                with pytest.raises(InvalidArgument) as info:
                    result = call(jm)
                    if inspect.isawaitable(result):
                        await result
                    elif hasattr(result, "__anext__"):
                        await result.__anext__()
                assert info.value.metadata == {"field": field}
                fields.append(field)
        return fields

    assert asyncio.run(scenario()) == [b[0] for b in BAD_CALLS]


class Vector:
    """An array-like embedding that is no Sequence (as a numpy array is not)."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)


def test_embeddings_take_any_iterable_of_real_numbers(jm: Client, namespace: str) -> None:
    m = jm.add_memory("vector shaped", category="fact", source="user_explicit",
                      embedding=Vector([Fraction(1, 2), 0.25, 1]), namespace=namespace)
    hits = jm.search_memories(mode="vector", embedding=(0.5, 0.25, 1.0), namespace=namespace)
    assert [h.memory.id for h in hits] == [m.id]


def test_unknown_enum_names_list_the_allowed_ones(jm: Client) -> None:
    with pytest.raises(InvalidArgument, match="category: 'opinion' is not one of preference, "
                                              "fact, pattern"):
        jm.add_memory("x", category="opinion", source="user_explicit")  # type: ignore[arg-type]


def test_enum_literals_match_the_protos() -> None:
    pairs = [
        (types.Category, memory_pb2.MemoryCategory, "MEMORY_CATEGORY_"),
        (types.MemorySourceName, memory_pb2.MemorySource, "MEMORY_SOURCE_"),
        (types.Role, session_pb2.MessageRole, "MESSAGE_ROLE_"),
        (types.EndTrigger, session_pb2.SessionEndTrigger, "SESSION_END_TRIGGER_"),
        (types.SessionStateName, session_pb2.SessionState, "SESSION_STATE_"),
        (types.SessionOrder, session_pb2.SessionOrder, "SESSION_ORDER_"),
        (types.EventType, event_pb2.EventType, "EVENT_TYPE_"),
        (types.Severity, event_pb2.EventSeverity, "EVENT_SEVERITY_"),
        (types.EventSourceName, event_pb2.EventSource, "EVENT_SOURCE_"),
        (types.RunStatus, audit_pb2.RunStatus, "RUN_STATUS_"),
        (types.SearchMode, search_pb2.SearchMode, "SEARCH_MODE_"),
        (types.FieldType, collection_pb2.FieldType, "FIELD_TYPE_"),
        (types.FilterOp, collection_pb2.FilterOperator, "FILTER_OPERATOR_"),
    ]
    for literal, enum, prefix in pairs:
        names = [n.removeprefix(prefix).lower() for n in enum.keys()  # noqa: SIM118
                 if not n.endswith("UNSPECIFIED")]
        assert list(typing.get_args(literal)) == names, prefix
    assert list(typing.get_args(types.ChangeKind)) == list(api.KINDS)


def test_server_side_validation_surfaces_as_invalid_argument(jm: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        jm.add_memory("   ", category="fact", source="user_explicit")
    assert info.value.metadata["field"] == "content"


def test_errors_keep_code_message_and_reason(jm: Client) -> None:
    with pytest.raises(NotFound) as info:
        jm.get_memory(123456789)
    error = info.value
    assert isinstance(error, JarvisMemoryError)
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "MEMORY_NOT_FOUND"
    assert error.metadata == {"namespace": "default", "id": "123456789"}
    assert "123456789" in str(error)


# -- the two clients ---------------------------------------------------------------------------


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls)
            if callable(member) and not name.startswith("_")}


def test_both_clients_have_the_same_methods_and_parameters() -> None:
    sync, asynchronous = public_methods(Client), public_methods(AsyncClient)
    assert set(sync) == set(asynchronous)
    for name, signature in sync.items():
        assert list(signature.parameters.values()) == list(
            asynchronous[name].parameters.values()), name
        iterates = name.startswith("iter_") or name == "watch"
        member = getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(member) is not iterates, name
        if iterates:
            assert str(asynchronous[name].return_annotation).startswith("AsyncIterator[")
            assert signature.return_annotation == asynchronous[name].return_annotation[5:]
        else:
            assert signature.return_annotation == asynchronous[name].return_annotation, name
    lists = {n.removeprefix("list_") for n in sync if n.startswith("list_")}
    iters = {n.removeprefix("iter_") for n in sync if n.startswith("iter_")}
    assert lists <= iters and iters - lists == {"rows"}  # iter_rows walks query_rows
    assert {"get_stats", "backup", "watch", "close"} <= set(sync)


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    sys.path.insert(0, str(ROOT / "client"))
    try:
        import generate_sync
    finally:
        sys.path.remove(str(ROOT / "client"))
    assert generate_sync.generate(generate_sync.SOURCE.read_text()) == \
        generate_sync.TARGET.read_text(), "run: python client/generate_sync.py"


def test_client_namespace_default_and_override(daemon: Daemon, namespace: str) -> None:
    with Client(daemon.addr, namespace=namespace) as jm:
        m = jm.add_memory("Namespaced", category="fact", source="user_explicit")
        assert m.namespace == namespace
        with pytest.raises(NotFound):
            jm.get_memory(m.id, namespace="default")


def test_values_are_python_native(jm: Client, namespace: str) -> None:
    m = jm.add_memory("Native values", category="FACT",  # type: ignore[arg-type]
                      source="MEMORY_SOURCE_USER_EXPLICIT",  # type: ignore[arg-type]
                      namespace=namespace, attributes={"tags": ["a", "b"], "nested": {"ok": True}})
    assert isinstance(m.created_at, datetime) and m.created_at.tzinfo is not None
    assert m.attributes == {"tags": ["a", "b"], "nested": {"ok": True}}
    assert (m.category, m.source) == ("fact", "user_explicit")


def test_every_list_has_an_iter_that_walks_every_page(jm: Client, namespace: str) -> None:
    ns = {"namespace": namespace}
    s = jm.start_session(**ns)
    cycle = jm.start_planning_cycle(**ns)
    for i in range(5):
        jm.add_memory(f"walk {i}", category="fact", source="user_explicit", **ns)
        jm.start_session(**ns)
        jm.append_message(s.id, role="user", content=f"m{i}", **ns)
        jm.log_session_event(s.id, "step", {"i": i}, **ns)
        jm.record_event(type="status", severity="info", source="agent", summary=f"e{i}", **ns)
        jm.save_snapshot({"i": i}, **ns)
        jm.set_preference(f"p{i}", i, **ns)
        jm.put_state(f"s{i}", i, **ns)
        jm.start_tool_call("walk", **ns)
        jm.start_planning_cycle(**ns)
        jm.record_decision(f"d{i}", cycle_id=cycle.id, **ns)
        jm.create_collection(f"c{i}", fields=[("v", "integer")], **ns)
    jm.insert_rows("c0", [{"v": i} for i in range(5)], **ns)

    def pages(list_call: Callable[..., Page[Any]]) -> list[Any]:
        items, token = [], ""
        while True:
            page = list_call(page_size=2, page_token=token)
            items += page
            token = page.next_page_token
            if not token:
                return items

    walks: list[tuple[Callable[..., Page[Any]], Callable[..., Any]]] = [
        (lambda **k: jm.list_memories(**ns, **k), lambda: jm.iter_memories(page_size=2, **ns)),
        (lambda **k: jm.list_sessions(**ns, **k), lambda: jm.iter_sessions(page_size=2, **ns)),
        (lambda **k: jm.list_messages(s.id, **ns, **k),
         lambda: jm.iter_messages(s.id, page_size=2, **ns)),
        (lambda **k: jm.list_session_events(s.id, **ns, **k),
         lambda: jm.iter_session_events(s.id, page_size=2, **ns)),
        (lambda **k: jm.list_events(**ns, **k), lambda: jm.iter_events(page_size=2, **ns)),
        (lambda **k: jm.list_snapshots(**ns, **k), lambda: jm.iter_snapshots(page_size=2, **ns)),
        (lambda **k: jm.list_preferences(**ns, **k),
         lambda: jm.iter_preferences(page_size=2, **ns)),
        (lambda **k: jm.list_state(**ns, **k), lambda: jm.iter_state(page_size=2, **ns)),
        (lambda **k: jm.list_tool_calls(**ns, **k), lambda: jm.iter_tool_calls(page_size=2, **ns)),
        (lambda **k: jm.list_planning_cycles(**ns, **k),
         lambda: jm.iter_planning_cycles(page_size=2, **ns)),
        (lambda **k: jm.list_decisions(cycle_id=cycle.id, **ns, **k),
         lambda: jm.iter_decisions(cycle_id=cycle.id, page_size=2, **ns)),
        (lambda **k: jm.list_collections(**ns, **k),
         lambda: jm.iter_collections(page_size=2, **ns)),
        (lambda **k: jm.query_rows("c0", **ns, **k), lambda: jm.iter_rows("c0", page_size=2, **ns)),
    ]
    for list_call, iter_call in walks:
        expected = pages(list_call)
        assert len(expected) >= 5
        assert list(iter_call()) == expected


# -- administration ----------------------------------------------------------------------------


def assert_is_a_backup(result: BackupResult, path: Path) -> None:
    assert result.path == str(path) and result.size == path.stat().st_size > 0
    assert len(result.sha256) == 64 and result.revision > 0
    assert not Path(f"{path}.partial").exists()
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM memories").fetchone()[0] >= 1
    finally:
        conn.close()


def test_stats_and_backup(daemon: Daemon, tmp_path: Path, namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        m = jm.add_memory("backed up", category="fact", source="user_explicit")
        stats = jm.get_stats()
        assert isinstance(stats, Stats) and stats.revision >= m.revision
        assert stats.rows("memories", namespace) == 1 and stats.rows("memories") >= 1
        assert stats.database_bytes > 0 and stats.uptime > timedelta(0)
        if daemon.on_postgres:  # PostgreSQL is backed up with its own tools
            with pytest.raises(FailedPrecondition, match="pg_dump"):
                jm.backup(tmp_path / "sync.db")
            assert not (tmp_path / "sync.db").exists()
            return
        result = jm.backup(tmp_path / "sync.db", chunk_size=4096)
        assert_is_a_backup(result, tmp_path / "sync.db")
        assert result.revision >= m.revision

    async def scenario() -> tuple[Stats, BackupResult]:
        async with AsyncClient(daemon.addr) as jm:
            return await jm.get_stats(), await jm.backup(str(tmp_path / "async.db"))

    stats, result = asyncio.run(scenario())
    assert stats.rows("memories", namespace) == 1
    assert_is_a_backup(result, tmp_path / "async.db")


def test_a_failed_backup_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "never.db"
    with Client(unused_address(), retry=NO_RETRY) as jm, pytest.raises(Unavailable):
        jm.backup(target, timeout=5)
    assert not target.exists() and not Path(f"{target}.partial").exists()


# -- retries come from the protos' idempotency levels -------------------------------------------


def test_the_retry_table_follows_the_protos() -> None:
    methods = {f"/{m.containing_service.full_name}/{m.name}": m for m in METHODS}
    assert set(api.RPCS) == set(methods)  # one table, every RPC of the API
    for path, rpc in api.RPCS.items():
        level = methods[path].GetOptions().idempotency_level
        assert rpc.idempotent == (level in (descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
                                            descriptor_pb2.MethodOptions.IDEMPOTENT)), path
    assert api.GET_MEMORY.idempotent and api.LIST_MEMORIES.idempotent
    assert api.SEARCH_MEMORIES.idempotent and api.QUERY_ROWS.idempotent
    assert not api.ADD_MEMORY.idempotent and not api.ADD_MEMORIES.idempotent
    assert not api.PUT_STATE.idempotent and not api.DELETE_MEMORY.idempotent


def test_reads_retry_unavailable() -> None:
    policy = CountingRetry(max_attempts=4)
    with Client(unused_address(), retry=policy, timeout=10) as jm, pytest.raises(Unavailable):
        jm.get_memory(1)
    assert policy.asked == [1, 2, 3]  # type: ignore[attr-defined]


@pytest.mark.parametrize("call", [
    lambda jm: jm.add_memory("x", category="fact", source="user_explicit"),
    lambda jm: jm.add_memories([{"content": "x", "category": "fact", "source": "user_explicit"}]),
    lambda jm: jm.delete_memory(1),
    lambda jm: jm.set_preference("k", 1),
])
def test_writes_are_not_retried(call: Callable[[Client], Any]) -> None:
    policy = CountingRetry(max_attempts=4)
    with Client(unused_address(), retry=policy, timeout=10) as jm, pytest.raises(Unavailable):
        call(jm)
    assert policy.asked == []  # type: ignore[attr-defined]


def test_retry_can_be_switched_off() -> None:
    with Client(unused_address(), retry=NO_RETRY) as jm, pytest.raises(Unavailable):
        jm.list_memories()


# -- the async client --------------------------------------------------------------------------


def test_async_client_round_trip(daemon: Daemon, namespace: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(daemon.addr, namespace=namespace) as jm:
            m = await jm.add_memory("Async fact", category="fact", source="agent_inferred",
                                    attributes={"n": 2**60, "r": 4.0})
            again = await jm.add_memory("async FACT", category="fact", source="agent_inferred")
            assert again.id == m.id and again.deduplicated
            assert same((await jm.get_memory(m.id)).attributes, {"n": 2**60, "r": 4.0})
            batch = await jm.add_memories(
                [{"content": f"async batch {i}", "category": "pattern", "source": "user_explicit"}
                 for i in range(3)])
            assert [b.deduplicated for b in batch] == [False] * 3
            page = await jm.list_memories(page_size=2)
            assert isinstance(page, Page) and len(page) == 2 and page.next_page_token
            assert len([x async for x in jm.iter_memories(page_size=2)]) == 4
            updated = await jm.update_memory(m.id, subject="sdk")
            assert updated.subject == "sdk"
            st = await jm.put_state("exact", EXACT)
            assert same((await jm.get_state("exact")).value, EXACT)
            async for change in jm.watch(kinds=["state"], start_revision=st.revision):
                assert change.resource == await jm.get_state("exact")
                break
            await jm.delete_memory(m.id)
            with pytest.raises(NotFound):
                await jm.get_memory(m.id)

    asyncio.run(scenario())
