"""SessionService: lifecycle, messages, the event log, idle timeouts, order under concurrency."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from conftest import Daemon
from jarvis.memory.v1 import session_pb2, session_pb2_grpc
from jarvis_memory import (
    AlreadyExists,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from jarvis_memory_server.store.sessions import SessionStore
from jarvis_memory_server.store.sqlite import Database

USER = session_pb2.MESSAGE_ROLE_USER
EXPLICIT = session_pb2.SESSION_END_TRIGGER_EXPLICIT


@pytest.fixture
def sessions_stub(daemon: Daemon):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(daemon.addr) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


def rpc_error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def test_the_issue_example(daemon: Daemon) -> None:
    with Client(daemon.addr) as jm:
        s = jm.start_session()
        jm.append_message(s.id, role="user", content="good morning")
        jm.append_message(s.id, role="assistant", content="Morning!", model="claude", tokens_used=12)
        jm.log_session_event(s.id, "topic_change", {"topic": "coffee"})
        jm.end_session(s.id, trigger="explicit", summary="talked about coffee")
        assert [m.content for m in jm.list_messages(s.id)] == ["good morning", "Morning!"]
        tab = jm.start_session(id="tab-42")
        assert tab.id == "tab-42"


def test_lifecycle_logs_start_and_end_events(jm: Client, namespace: str) -> None:
    s = jm.start_session(metadata={"source": "morning_briefing"}, namespace=namespace)
    assert s.active and s.state == "active" and s.ended_at is None and s.end_trigger is None
    assert s.metadata == {"source": "morning_briefing"} and s.message_count == 0
    assert len(s.id) >= 16  # server-made
    m = jm.append_message(s.id, role="assistant", content="Hi", model="claude", tokens_used=3,
                          namespace=namespace)
    assert (m.sequence, m.role, m.model, m.tokens_used, m.session_id) == (1, "assistant", "claude", 3, s.id)
    ended = jm.end_session(s.id, trigger="client_closed", summary="said hi", namespace=namespace)
    assert ended.state == "ended" and ended.end_trigger == "client_closed"
    assert ended.summary == "said hi" and ended.message_count == 1
    assert ended.ended_at is not None and ended.duration == ended.ended_at - ended.started_at
    assert ended.revision > s.revision
    events = jm.list_session_events(s.id, namespace=namespace)
    assert [e.event_type for e in events] == ["session_start", "session_end"]
    assert events[0].data == {"source": "morning_briefing"}
    end_data = events[1].data
    assert end_data is not None
    assert end_data["trigger"] == "client_closed" and end_data["summary"] == "said hi"
    assert end_data["duration_ms"] == ended.duration // timedelta(milliseconds=1)
    assert jm.get_session(s.id, namespace=namespace) == ended


def test_ending_an_ended_session_fails_and_changes_nothing(jm: Client, namespace: str) -> None:
    s = jm.start_session(namespace=namespace)
    ended = jm.end_session(s.id, summary="first", namespace=namespace)
    with pytest.raises(FailedPrecondition) as info:
        jm.end_session(s.id, summary="second", trigger="timeout", namespace=namespace)
    assert info.value.reason == "SESSION_ENDED"
    assert jm.get_session(s.id, namespace=namespace) == ended
    with pytest.raises(FailedPrecondition):
        jm.append_message(s.id, role="user", content="too late", namespace=namespace)
    with pytest.raises(FailedPrecondition):
        jm.log_session_event(s.id, "user_state", {"mood": "late"}, namespace=namespace)
    assert [e.event_type for e in jm.list_session_events(s.id, namespace=namespace)] == [
        "session_start", "session_end"]
    assert jm.list_messages(s.id, namespace=namespace) == []


def test_client_ids_are_unique_per_namespace(jm: Client, namespace: str) -> None:
    jm.start_session(id="tab-1", namespace=namespace)
    with pytest.raises(AlreadyExists) as info:
        jm.start_session(id="tab-1", namespace=namespace)
    assert info.value.reason == "SESSION_EXISTS"
    other = jm.start_session(id="tab-1", namespace=namespace + "-other")
    assert other.namespace == namespace + "-other"
    with pytest.raises(NotFound):
        jm.get_session("tab-1", namespace=namespace + "-third")


def test_messages_are_numbered_and_listed_oldest_first_in_pages(jm: Client, namespace: str) -> None:
    s = jm.start_session(namespace=namespace)
    for i in range(7):
        jm.append_message(s.id, role="user" if i % 2 == 0 else "assistant", content=f"m{i}",
                          namespace=namespace)
    page1 = jm.list_messages(s.id, page_size=3, namespace=namespace)
    page2 = jm.list_messages(s.id, page_size=3, page_token=page1.next_page_token, namespace=namespace)
    jm.append_message(s.id, role="user", content="m7", namespace=namespace)  # while paging
    page3 = jm.list_messages(s.id, page_size=3, page_token=page2.next_page_token, namespace=namespace)
    assert [m.content for m in page1 + page2 + page3] == [f"m{i}" for i in range(8)]
    assert [m.sequence for m in page1 + page2 + page3] == list(range(1, 9))
    assert page3.next_page_token == ""
    assert jm.get_session(s.id, namespace=namespace).message_count == 8


def test_tool_calls_round_trip_as_json(jm: Client, namespace: str) -> None:
    s = jm.start_session(namespace=namespace)
    calls = [{"name": "web_search", "arguments": {"q": "weather", "limit": 3}}]
    m = jm.append_message(s.id, role="assistant", content="", tool_calls=calls, namespace=namespace)
    assert m.tool_calls == [{"name": "web_search", "arguments": {"q": "weather", "limit": 3.0}}]
    assert jm.list_messages(s.id, namespace=namespace)[0].tool_calls == m.tool_calls
    tool = jm.append_message(s.id, role="tool", content='{"temp": 11}', namespace=namespace)
    assert tool.role == "tool" and tool.tool_calls is None


def test_list_sessions_filters_and_orders(jm: Client, namespace: str) -> None:
    a = jm.start_session(id="a", namespace=namespace)
    b = jm.start_session(id="b", namespace=namespace)
    c = jm.start_session(id="c", namespace=namespace)
    jm.end_session("b", namespace=namespace)
    jm.append_message("a", role="user", content="a is the most recently active", namespace=namespace)

    def ids(**kwargs: object) -> list[str]:
        return [x.id for x in jm.list_sessions(namespace=namespace, **kwargs)]  # type: ignore[arg-type]

    assert ids() == ["c", "b", "a"]
    assert ids(order_by="start_time") == ["c", "b", "a"]
    assert ids(order_by="last_activity") == ["a", "b", "c"]
    assert ids(state="active") == ["c", "a"]
    assert ids(state="ended") == ["b"]
    assert ids(state="active", order_by="last_activity") == ["a", "c"]
    first = jm.list_sessions(namespace=namespace, page_size=2)
    rest = jm.list_sessions(namespace=namespace, page_size=2, page_token=first.next_page_token)
    assert [x.id for x in first + rest] == ["c", "b", "a"] and rest.next_page_token == ""
    with pytest.raises(InvalidArgument):
        jm.list_sessions(namespace=namespace, state="ended", page_token=first.next_page_token)
    assert {a.id, b.id, c.id} == {"a", "b", "c"}


def test_events_per_session_and_per_utc_day(jm: Client, namespace: str) -> None:
    one = jm.start_session(namespace=namespace)
    two = jm.start_session(namespace=namespace)
    jm.log_session_event(one.id, "tool_invocation", {"tool": "calendar", "ok": True}, namespace=namespace)
    jm.log_session_event(two.id, "user_state", {"mood": "tired"}, namespace=namespace)
    jm.log_session_event(one.id, "topic_change", namespace=namespace)
    assert [e.event_type for e in jm.list_session_events(one.id, namespace=namespace)] == [
        "session_start", "tool_invocation", "topic_change"]
    today = datetime.now(UTC).date()
    day = jm.list_session_events(day=today, namespace=namespace)
    if datetime.now(UTC).date() == today:  # the test did not straddle midnight UTC
        assert [(e.session_id, e.event_type) for e in day] == [
            (one.id, "session_start"), (two.id, "session_start"), (one.id, "tool_invocation"),
            (two.id, "user_state"), (one.id, "topic_change")]
        paged = jm.list_session_events(day=today.isoformat(), page_size=2, namespace=namespace)
        rest = jm.list_session_events(day=today.isoformat(), page_size=10,
                                      page_token=paged.next_page_token, namespace=namespace)
        assert [e.id for e in paged + rest] == [e.id for e in day]
    assert jm.list_session_events(day=today - timedelta(days=1), namespace=namespace) == []
    assert jm.list_session_events(one.id, namespace=namespace)[1].data == {"tool": "calendar", "ok": True}


def test_unknown_sessions_are_not_found(sessions_stub) -> None:  # type: ignore[no-untyped-def]
    missing = "no-such-session"
    for call, request in [
        (sessions_stub.GetSession, session_pb2.GetSessionRequest(session_id=missing)),
        (sessions_stub.EndSession, session_pb2.EndSessionRequest(session_id=missing, trigger=EXPLICIT)),
        (sessions_stub.AppendMessage, session_pb2.AppendMessageRequest(session_id=missing, role=USER,
                                                                       content="x")),
        (sessions_stub.LogSessionEvent, session_pb2.LogSessionEventRequest(session_id=missing,
                                                                           event_type="x")),
        (sessions_stub.ListMessages, session_pb2.ListMessagesRequest(session_id=missing)),
        (sessions_stub.ListSessionEvents, session_pb2.ListSessionEventsRequest(session_id=missing)),
    ]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, call
        assert missing in error.details()


def _big_struct() -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"blob": "x" * 70_000})
    return s


BAD_REQUESTS = [
    ("StartSession", session_pb2.StartSessionRequest(session_id="has space"), "session_id"),
    ("StartSession", session_pb2.StartSessionRequest(session_id="x" * 129), "session_id"),
    ("StartSession", session_pb2.StartSessionRequest(metadata=_big_struct()), "metadata"),
    ("StartSession", session_pb2.StartSessionRequest(namespace="bad ns"), "namespace"),
    ("EndSession", session_pb2.EndSessionRequest(session_id="s"), "trigger: is required"),
    ("EndSession", session_pb2.EndSessionRequest(session_id="s", trigger=9), "trigger"),
    ("EndSession", session_pb2.EndSessionRequest(session_id="s", trigger=EXPLICIT, summary="x" * 70_000),
     "summary"),
    ("EndSession", session_pb2.EndSessionRequest(trigger=EXPLICIT), "session_id: is required"),
    ("GetSession", session_pb2.GetSessionRequest(), "session_id: is required"),
    ("ListSessions", session_pb2.ListSessionsRequest(page_size=-1), "page_size"),
    ("ListSessions", session_pb2.ListSessionsRequest(state=7), "state"),
    ("ListSessions", session_pb2.ListSessionsRequest(order_by=7), "order_by"),
    ("ListSessions", session_pb2.ListSessionsRequest(page_token="garbage"), "page_token"),
    ("LogSessionEvent", session_pb2.LogSessionEventRequest(session_id="s"), "event_type: is required"),
    ("LogSessionEvent", session_pb2.LogSessionEventRequest(session_id="s", event_type="e" * 65), "event_type"),
    ("LogSessionEvent", session_pb2.LogSessionEventRequest(session_id="s", event_type="e", data=_big_struct()),
     "data"),
    ("ListSessionEvents", session_pb2.ListSessionEventsRequest(), "exactly one of session_id and day"),
    ("ListSessionEvents", session_pb2.ListSessionEventsRequest(day="22/11/2026"), "day"),
    ("ListSessionEvents", session_pb2.ListSessionEventsRequest(day="2026-02-30"), "day"),
    ("ListSessionEvents", session_pb2.ListSessionEventsRequest(day="2026-11-22", page_size=-3), "page_size"),
    ("AppendMessage", session_pb2.AppendMessageRequest(session_id="s", content="x"), "role: is required"),
    ("AppendMessage", session_pb2.AppendMessageRequest(session_id="s", role=9, content="x"), "role"),
    ("AppendMessage", session_pb2.AppendMessageRequest(session_id="s", role=USER), "content: is required"),
    ("AppendMessage", session_pb2.AppendMessageRequest(session_id="s", role=USER, content="x",
                                                       tokens_used=-1), "tokens_used"),
    ("AppendMessage", session_pb2.AppendMessageRequest(session_id="s", role=USER, content="x",
                                                       model="m" * 257), "model"),
    ("AppendMessage", session_pb2.AppendMessageRequest(session_id="s", role=USER,
                                                       content="x" * (1024 * 1024 + 1)), "content"),
    ("ListMessages", session_pb2.ListMessagesRequest(session_id="s", page_size=-1), "page_size"),
    ("ListMessages", session_pb2.ListMessagesRequest(session_id="bad id!"), "session_id"),
]


@pytest.mark.parametrize(("method", "request_message", "message"), BAD_REQUESTS,
                         ids=[f"{i}-{case[0]}" for i, case in enumerate(BAD_REQUESTS)])
def test_bad_input_is_invalid_argument(daemon: Daemon, sessions_stub, method, request_message,  # type: ignore[no-untyped-def]
                                       message) -> None:
    # An active session "s", so that only the bad field is wrong.
    with daemon.client() as jm, contextlib.suppress(AlreadyExists):
        jm.start_session(id="s")
    error = rpc_error(getattr(sessions_stub, method), request_message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in error.details()


def test_twenty_clients_appending_to_one_session_lose_nothing(daemon: Daemon, namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        session = jm.start_session()
    per_client = 25
    barrier = threading.Barrier(20)
    sent: dict[int, list[int]] = {}

    def append(n: int) -> None:
        with daemon.client(namespace=namespace) as jm:
            barrier.wait()
            sent[n] = [jm.append_message(session.id, role="user", content=f"{n}:{i}").sequence
                       for i in range(per_client)]

    threads = [threading.Thread(target=append, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with daemon.client(namespace=namespace) as jm:
        stored = list(jm.list_messages(session.id, page_size=1000))
        assert jm.get_session(session.id).message_count == 20 * per_client
    assert [m.sequence for m in stored] == list(range(1, 20 * per_client + 1))
    by_content = {m.content: m.sequence for m in stored}
    for n, sequences in sent.items():
        # Every acknowledged message is stored where its response said, in the client's order.
        assert [by_content[f"{n}:{i}"] for i in range(per_client)] == sequences
        assert sequences == sorted(sequences)


def test_sessions_survive_a_restart(db_target: Path | str) -> None:
    d = Daemon(db_target).start()
    with d.client() as jm:
        s = jm.start_session(id="kept")
        jm.append_message("kept", role="user", content="remember me")
        jm.log_session_event("kept", "topic_change", {"topic": "memory"})
        ended = jm.start_session(id="gone")
        ended = jm.end_session("gone", summary="bye")
    assert d.stop() == 0
    d.start()
    try:
        with d.client() as jm:
            assert jm.get_session("kept").message_count == 1 and jm.get_session("kept").active
            assert jm.get_session("gone") == ended
            assert [m.content for m in jm.list_messages("kept")] == ["remember me"]
            assert [e.event_type for e in jm.list_session_events("kept")] == [
                "session_start", "topic_change"]
            assert jm.append_message("kept", role="assistant", content="I do").sequence == 2
            assert s.id == "kept"
    finally:
        assert d.stop() == 0


def test_the_daemon_ends_idle_sessions(db_target: Path | str) -> None:
    d = Daemon(db_target, "--session-idle-timeout", "0.3").start()
    try:
        with d.client() as jm:
            s = jm.start_session(id="idle")
            d.wait_for_log(r"ended 1 sessions idle for over 0.3 s")
            ended = jm.get_session("idle")
            assert ended.end_trigger == "timeout"
            assert ended.ended_at is not None
            assert ended.ended_at - s.last_activity_at >= timedelta(seconds=0.3)
            events = jm.list_session_events("idle")
            assert events[-1].event_type == "session_end"
            assert events[-1].data is not None and events[-1].data["trigger"] == "timeout"
            with pytest.raises(FailedPrecondition):
                jm.append_message("idle", role="user", content="hello?")
    finally:
        assert d.stop() == 0


def test_every_session_listing_is_served_by_an_index(tmp_path: Path) -> None:
    db = Database(tmp_path / "plans.db")
    db.open()
    try:
        plans = SessionStore(db).explain()
    finally:
        db.close()
    assert len(plans) == 8
    for name, plan in plans.items():
        for step in plan:
            assert not step.startswith("SCAN"), (name, plan)
            assert "TEMP B-TREE" not in step, (name, plan)
