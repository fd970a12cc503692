"""Hostile input the daemon must answer precisely: undecodable requests, out-of-range times,
forged and edited page tokens. (tests/test_fuzz.py throws everything at every RPC; these pin
down each class with its exact status and message.)"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_fuzz import deep_value, length_delimited

from conftest import METHODS, Daemon, Stubs
from jarvis.memory.v1 import (
    audit_pb2,
    collection_pb2,
    event_pb2,
    memory_pb2,
    session_pb2,
    snapshot_pb2,
    state_pb2,
)
from jarvis_memory import NO_RETRY

FV = collection_pb2.FieldValue


def status_of(call: Callable[[Any], Any], request: Any) -> tuple[grpc.StatusCode, str, str]:
    """(code, details, ErrorInfo field) of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    error = info.value
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    field = ""
    if status is not None and status.details:
        detail = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(detail)
        field = detail.metadata.get("field", "")
    return error.code(), error.details() or "", field


# -- requests that do not decode --------------------------------------------------------------


@pytest.mark.parametrize(("path", "data", "message"), [
    ("/jarvis.memory.v1.MemoryService/AddMemory", length_delimited(2, b"caf\xc3"),
     "the request is not a valid AddMemoryRequest: "),
    ("/jarvis.memory.v1.MemoryService/AddMemory",
     length_delimited(6, length_delimited(1, length_delimited(1, b"\xff\xfe"))),
     "the request is not a valid AddMemoryRequest: "),  # a Struct key
    ("/jarvis.memory.v1.StateService/PutState", length_delimited(3, deep_value(150)),
     "the request is not a valid PutStateRequest: "),
    ("/jarvis.memory.v1.WatchService/Watch", b"\xff\xff\xff",
     "the request is not a valid WatchRequest: "),
], ids=["invalid UTF-8", "invalid UTF-8 Struct key", "Value 150 deep", "stream, junk"])
def test_undecodable_requests_are_invalid_argument(daemon: Daemon, path: str, data: bytes,
                                                   message: str) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        if path.endswith("/Watch"):
            stream = channel.unary_stream(path, request_serializer=None,
                                          response_deserializer=None)
            call: Callable[[bytes], Any] = lambda d: list(stream(d, timeout=10))  # noqa: E731
        else:
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        code, details, field = status_of(lambda d: call(d), data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(message) and field == "request", details
    assert "Traceback" not in daemon.output


# -- Timestamps and Durations out of range ----------------------------------------------------

NS = "hostile-times"


def time_fields(message: Descriptor, prefix: str = "", depth: int = 0) -> Iterator[str]:
    """Paths of every Timestamp and Duration a request can hold (maps and oneofs included)."""
    for field in message.fields:
        if field.type != field.TYPE_MESSAGE or depth > 4:
            continue
        name = field.message_type.full_name
        path = prefix + field.name
        if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            yield path
        elif not name.startswith("google.protobuf."):
            yield from time_fields(field.message_type, path + ".", depth + 1)


def ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def at(t: timestamp_pb2.Timestamp) -> collection_pb2.FieldValue:
    return FV(timestamp_value=t)


def eq_t(t: timestamp_pb2.Timestamp) -> collection_pb2.Filter:
    return collection_pb2.Filter(field="t", op=collection_pb2.FILTER_OPERATOR_LT, typed_value=at(t))


def in_t(t: timestamp_pb2.Timestamp) -> collection_pb2.Filter:
    return collection_pb2.Filter(field="t", op=collection_pb2.FILTER_OPERATOR_IN,
                                 typed_values=[at(t)])


# "Method:path" -> (the stub method's name on Stubs, a request with the bad time, the field the
# error names). Every request Timestamp/Duration must be here or in OUTPUT_ONLY.
TimeCase = tuple[str, Callable[[Any], Any], str]
MEMORY = {"namespace": NS, "content": "x", "category": 1, "source": 1}
LIFECYCLE_TIMES = ("valid_from", "valid_to", "expires_at", "ttl")


def _memory_cases() -> dict[str, TimeCase]:
    """The lifecycle times of AddMemory, AddMemories and UpdateMemory; as_of; forget filters."""
    cases: dict[str, TimeCase] = {}
    for name in LIFECYCLE_TIMES:
        cases[f"AddMemory:{name}"] = ("memory.AddMemory", lambda t, name=name: memory_pb2.
                                      AddMemoryRequest(**MEMORY, **{name: t}), name)
        cases[f"AddMemories:memories.{name}"] = (
            "memory.AddMemories", lambda t, name=name: memory_pb2.AddMemoriesRequest(
                namespace=NS, memories=[memory_pb2.NewMemory(
                    content="x", category=1, source=1, **{name: t})]), f"memories[0].{name}")
    for name in ("valid_from", "valid_to", "expires_at"):
        cases[f"UpdateMemory:memory.{name}"] = (
            "memory.UpdateMemory", lambda t, name=name: memory_pb2.UpdateMemoryRequest(
                namespace=NS, memory=memory_pb2.Memory(id=1, **{name: t}),
                update_mask={"paths": [name]}), f"memory.{name}")
    cases["UpdateMemory:ttl"] = ("memory.UpdateMemory", lambda t: memory_pb2.UpdateMemoryRequest(
        namespace=NS, memory=memory_pb2.Memory(id=1), update_mask={"paths": ["ttl"]}, ttl=t),
        "ttl")
    cases["ListMemories:as_of"] = ("memory.ListMemories", lambda t: memory_pb2.
                                   ListMemoriesRequest(namespace=NS, as_of=t), "as_of")
    cases["SearchMemories:as_of"] = ("memory.SearchMemories", lambda t: memory_pb2.
                                     SearchMemoriesRequest(namespace=NS, query="x", as_of=t),
                                     "as_of")
    for name in ("created_after", "created_before"):
        cases[f"ForgetMemories:{name}"] = (
            "memory.ForgetMemories", lambda t, name=name: memory_pb2.ForgetMemoriesRequest(
                namespace=NS, **{name: t}), name)
    return cases


TIME_CASES: dict[str, TimeCase] = {
    **_memory_cases(),
    "ListMemories:created_after": ("memory.ListMemories", lambda t: memory_pb2.ListMemoriesRequest(
        namespace=NS, created_after=t), "created_after"),
    "ListMemories:created_before": ("memory.ListMemories", lambda t: memory_pb2.ListMemoriesRequest(
        namespace=NS, created_before=t), "created_before"),
    "SearchMemories:created_after": ("memory.SearchMemories", lambda t: memory_pb2.
                                     SearchMemoriesRequest(namespace=NS, query="x",
                                                           created_after=t), "created_after"),
    "SearchMemories:created_before": ("memory.SearchMemories", lambda t: memory_pb2.
                                      SearchMemoriesRequest(namespace=NS, query="x",
                                                            created_before=t), "created_before"),
    "SearchMessages:created_after": ("session.SearchMessages", lambda t: session_pb2.
                                     SearchMessagesRequest(namespace=NS, query="x",
                                                           created_after=t), "created_after"),
    "SearchMessages:created_before": ("session.SearchMessages", lambda t: session_pb2.
                                      SearchMessagesRequest(namespace=NS, query="x",
                                                            created_before=t), "created_before"),
    "RecordEvent:occurred_at": ("event.RecordEvent", lambda t: event_pb2.RecordEventRequest(
        namespace=NS, type=1, severity=1, source=1, summary="s", occurred_at=t), "occurred_at"),
    "ListEvents:since": ("event.ListEvents", lambda t: event_pb2.ListEventsRequest(
        namespace=NS, since=t), "since"),
    "ListEvents:until": ("event.ListEvents", lambda t: event_pb2.ListEventsRequest(
        namespace=NS, until=t), "until"),
    "SearchEvents:since": ("event.SearchEvents", lambda t: event_pb2.SearchEventsRequest(
        namespace=NS, query="x", since=t), "since"),
    "SearchEvents:until": ("event.SearchEvents", lambda t: event_pb2.SearchEventsRequest(
        namespace=NS, query="x", until=t), "until"),
    "ListSnapshots:since": ("snapshot.ListSnapshots", lambda t: snapshot_pb2.ListSnapshotsRequest(
        namespace=NS, since=t), "since"),
    "ListToolCalls:since": ("audit.ListToolCalls", lambda t: audit_pb2.ListToolCallsRequest(
        namespace=NS, since=t), "since"),
    "ListToolCalls:until": ("audit.ListToolCalls", lambda t: audit_pb2.ListToolCallsRequest(
        namespace=NS, until=t), "until"),
    "PutState:ttl": ("state.PutState", lambda d: state_pb2.PutStateRequest(
        namespace=NS, key="k", value_json="1", ttl=d), "ttl"),
    "InsertRows:typed_rows.fields.value.timestamp_value": (
        "collection.InsertRows", lambda t: collection_pb2.InsertRowsRequest(
            namespace=NS, collection="times", typed_rows=[collection_pb2.Row(
                fields={"t": at(t)})]), "typed_rows[0].t"),
    "QueryRows:filters.typed_value.timestamp_value": (
        "collection.QueryRows", lambda t: collection_pb2.QueryRowsRequest(
            namespace=NS, collection="times", filters=[eq_t(t)]), "filters[0].typed_value"),
    "QueryRows:filters.typed_values.timestamp_value": (
        "collection.QueryRows", lambda t: collection_pb2.QueryRowsRequest(
            namespace=NS, collection="times", filters=[in_t(t)]), "filters[0].typed_values[0]"),
    "UpdateRows:filters.typed_value.timestamp_value": (
        "collection.UpdateRows", lambda t: collection_pb2.UpdateRowsRequest(
            namespace=NS, collection="times", filters=[eq_t(t)], typed_set={"s": FV(
                string_value="x")}), "filters[0].typed_value"),
    "UpdateRows:filters.typed_values.timestamp_value": (
        "collection.UpdateRows", lambda t: collection_pb2.UpdateRowsRequest(
            namespace=NS, collection="times", filters=[in_t(t)], typed_set={"s": FV(
                string_value="x")}), "filters[0].typed_values[0]"),
    "UpdateRows:typed_set.value.timestamp_value": (
        "collection.UpdateRows", lambda t: collection_pb2.UpdateRowsRequest(
            namespace=NS, collection="times", typed_set={"t": at(t)}), "typed_set.t"),
    "DeleteRows:filters.typed_value.timestamp_value": (
        "collection.DeleteRows", lambda t: collection_pb2.DeleteRowsRequest(
            namespace=NS, collection="times", filters=[eq_t(t)]), "filters[0].typed_value"),
    "DeleteRows:filters.typed_values.timestamp_value": (
        "collection.DeleteRows", lambda t: collection_pb2.DeleteRowsRequest(
            namespace=NS, collection="times", filters=[in_t(t)]), "filters[0].typed_values[0]"),
}
# Times inside resources a request carries whose values the daemon sets itself (ignored).
OUTPUT_ONLY = {"UpdateMemory:memory.created_at", "UpdateMemory:memory.updated_at",
               "UpdateMemory:memory.last_accessed_at", "UpdateMemory:memory.superseded_at"}
BAD_TIMES = [(2**62, 0), (-(2**62), 0), (0, -1), (0, 10**9), (253_402_300_800, 0),
             (-62_135_596_801, 0)]
BAD_DURATIONS = [(2**62, 0), (-(2**62), 0), (1, -1), (-1, 1), (0, 10**9),
                 (315_576_000_001, 0), (300_000_000_000, 0)]  # the last expires after 9999


def test_every_request_time_is_covered() -> None:
    found = {f"{m.name}:{path}" for m in METHODS for path in time_fields(m.input_type)}
    assert found - OUTPUT_ONLY == set(TIME_CASES), "a Timestamp/Duration needs a case here"


@pytest.fixture(scope="module")
def times_collection(stubs: Stubs) -> None:
    stubs.collection.CreateCollection(collection_pb2.CreateCollectionRequest(
        namespace=NS, name="times", fields=[
            collection_pb2.Field(name="t", type=collection_pb2.FIELD_TYPE_TIMESTAMP),
            collection_pb2.Field(name="s", type=collection_pb2.FIELD_TYPE_STRING)]))


@pytest.mark.parametrize("case", TIME_CASES)
def test_times_out_of_range_are_invalid_argument_naming_the_field(
        stubs: Stubs, times_collection: None, daemon: Daemon, case: str) -> None:
    stub_path, build, field = TIME_CASES[case]
    service, method = stub_path.split(".")
    call = getattr(getattr(stubs, service), method)
    is_duration = case.endswith("ttl")
    for seconds, nanos in BAD_DURATIONS if is_duration else BAD_TIMES:
        value = (duration_pb2.Duration if is_duration else timestamp_pb2.Timestamp)(
            seconds=seconds, nanos=nanos)
        code, details, named = status_of(call, build(value))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (case, seconds, nanos, details)
        assert named == field, (case, seconds, nanos, details)
    assert "Traceback" not in daemon.output


def test_the_edges_of_the_timestamp_range_are_accepted(stubs: Stubs) -> None:
    for t in (ts(253_402_300_799, 999_999_999), ts(-62_135_596_800)):
        stubs.memory.ListMemories(memory_pb2.ListMemoriesRequest(namespace=NS, created_after=t))
        stubs.event.RecordEvent(event_pb2.RecordEventRequest(
            namespace=NS, type=1, severity=1, source=1, summary="edge", occurred_at=t))


# -- page tokens ------------------------------------------------------------------------------

NOT_ISSUED = "page_token: is not a token this server issued"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _list_memories(stubs: Stubs, namespace: str, token: str, **filters: Any) -> Any:
    return stubs.memory.ListMemories(memory_pb2.ListMemoriesRequest(
        namespace=namespace, page_size=1, page_token=token, **filters))


def test_edited_and_forged_page_tokens_are_refused(stubs: Stubs, namespace: str) -> None:
    for i in range(3):
        stubs.memory.AddMemory(memory_pb2.AddMemoryRequest(
            namespace=namespace, content=f"paged {i}", category=1, source=1))
    token = _list_memories(stubs, namespace, "").next_page_token
    assert _list_memories(stubs, namespace, token).memories  # the real one works
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    edited = [_b64(bytes([raw[0] ^ 1]) + raw[1:]), _b64(raw[:-1] + bytes([raw[-1] ^ 1])),
              _b64(raw[:-1]), token + "AA", token[:-2]]
    forged = [_b64(json.dumps(p).encode()) for p in (
        {"c": {"at": 2**70, "id": 1}, "f": "0" * 16},
        {"c": {"at": 1, "id": -(2**64)}, "f": "0" * 16},
    )]
    forged += [_b64(b"[" * 100_000 + b"]" * 100_000),
               _b64(b'{"c":{"\\ud800":1},"f":"x"}'), "not a token!", "A" * 5000]
    for bad in edited + forged:
        code, details, field = status_of(lambda r: _list_memories(stubs, namespace, r), bad)
        assert (code, details, field) == (grpc.StatusCode.INVALID_ARGUMENT, NOT_ISSUED,
                                          "page_token"), bad[:80]


def test_page_tokens_are_bound_to_the_database(tmp_path: Path, stubs: Stubs,
                                               namespace: str) -> None:
    """A token of another database is refused; a token survives its daemon's restart."""
    other = Daemon(tmp_path / "other.db").start()
    try:
        with other.client(namespace=namespace) as jm:
            for i in range(3):
                jm.add_memory(f"elsewhere {i}", category="fact", source="user_explicit")
            foreign = jm.list_memories(page_size=1).next_page_token
            code, details, _ = status_of(lambda r: _list_memories(stubs, namespace, r), foreign)
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, NOT_ISSUED)
        assert other.stop() == 0
        other.start()
        with other.client(namespace=namespace) as jm:
            page = jm.list_memories(page_size=1, page_token=foreign)
            assert [m.content for m in page] == ["elsewhere 1"]
    finally:
        other.stop()


# -- one caller's bad writes never fail another caller's ----------------------------------------


def test_well_behaved_writers_beside_hostile_ones_see_no_failure(daemon: Daemon) -> None:
    """Four writers add memories while hostile calls hammer the same write path; every good
    write is acknowledged and stored, every hostile one gets its own precise status."""
    hostile: list[tuple[str, bytes]] = [
        ("/jarvis.memory.v1.MemoryService/AddMemory", length_delimited(2, b"caf\xc3")),
        ("/jarvis.memory.v1.MemoryService/AddMemory", memory_pb2.AddMemoryRequest(
            namespace="good", content="nan", category=memory_pb2.MEMORY_CATEGORY_FACT,
            source=memory_pb2.MEMORY_SOURCE_USER_EXPLICIT,
            attributes_json='{"x": NaN}').SerializeToString()),
        ("/jarvis.memory.v1.StateService/PutState", state_pb2.PutStateRequest(
            namespace="good", key="k", value_json="1",
            ttl=duration_pb2.Duration(seconds=2**62)).SerializeToString()),
        ("/jarvis.memory.v1.EventService/RecordEvent", event_pb2.RecordEventRequest(
            namespace="good", type=event_pb2.EVENT_TYPE_ALERT, severity=event_pb2.EVENT_SEVERITY_INFO,
            source=event_pb2.EVENT_SOURCE_AGENT, summary="s",
            occurred_at=timestamp_pb2.Timestamp(seconds=-(2**62))).SerializeToString()),
    ]
    codes: list[grpc.StatusCode] = []
    stop = threading.Event()

    def attacker() -> None:
        with grpc.insecure_channel(daemon.addr) as channel:
            calls = [(channel.unary_unary(path, request_serializer=None,
                                          response_deserializer=None), data)
                     for path, data in hostile]
            while not stop.is_set():
                for call, data in calls:
                    try:
                        call(data, timeout=10)
                    except grpc.RpcError as error:
                        codes.append(error.code())

    def writer(n: int) -> list[int]:
        with daemon.client(namespace="good", retry=NO_RETRY) as jm:
            return [jm.add_memory(f"writer {n} fact {i}", category="fact",
                                  source="user_explicit").id for i in range(150)]

    attackers = [threading.Thread(target=attacker) for _ in range(2)]
    for t in attackers:
        t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            written = [i for ids in pool.map(writer, range(4)) for i in ids]
    finally:
        stop.set()
        for t in attackers:
            t.join()
    assert len(set(written)) == 600  # every good write acknowledged (NO_RETRY: none retried)
    with daemon.client(namespace="good") as jm:
        assert len(list(jm.iter_memories(page_size=1000))) == 600
    assert codes and set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    assert "Traceback" not in daemon.output
