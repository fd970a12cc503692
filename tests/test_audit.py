"""AuditService: the two-row pattern, append-only enforced by the database, listings."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw
import grpc
import psycopg
import pytest

from conftest import Daemon
from jarvis.memory.v1 import audit_pb2, audit_pb2_grpc
from jarvis_memory import Client, FailedPrecondition, NotFound
from jarvis_memory_server.store.audit import AuditStore
from jarvis_memory_server.store.sqlite import Database

SUCCEEDED = audit_pb2.RUN_STATUS_SUCCEEDED


def test_the_issue_example(jm: Client, namespace: str) -> None:
    call = jm.start_tool_call("web_search", input={"q": "weather"}, namespace=namespace)
    assert call.status == "running" and call.finished_at is None
    done = jm.finish_tool_call(call.id, status="succeeded", output={"temp": 11}, duration_ms=420,
                               namespace=namespace)
    assert (done.status, done.output, done.duration_ms) == ("succeeded", {"temp": 11}, 420)
    assert jm.get_tool_call(call.id, namespace=namespace) == done


def test_a_call_is_two_rows_and_finishing_twice_writes_nothing(daemon: Daemon, jm: Client,
                                                              namespace: str) -> None:
    call = jm.start_tool_call("shell", input=["ls"], namespace=namespace)
    jm.finish_tool_call(call.id, status="failed", error="exit 2", namespace=namespace)
    with pytest.raises(FailedPrecondition) as info:
        jm.finish_tool_call(call.id, status="succeeded", namespace=namespace)
    assert info.value.reason == "ALREADY_FINISHED"
    with pytest.raises(NotFound):
        jm.finish_tool_call(call.id + 10_000, status="succeeded", namespace=namespace)
    rows = daemon.query("SELECT parent_id, status, error, duration_ms FROM tool_calls "
                        "WHERE namespace = ? ORDER BY id", (namespace,))
    assert rows[0] == (None, "started", "", None)
    assert rows[1][:3] == (call.id, "failed", "exit 2") and rows[1][3] >= 0
    assert len(rows) == 2
    fetched = jm.get_tool_call(call.id, namespace=namespace)
    assert fetched.status == "failed" and fetched.error == "exit 2"
    assert fetched.duration_ms == rows[1][3]  # measured by the daemon when not given


def test_concurrent_finishes_of_one_call_write_one_completion(daemon: Daemon,
                                                              namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        call = jm.start_tool_call("race")
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def finish() -> None:
        with daemon.client(namespace=namespace) as jm:
            barrier.wait()
            try:
                jm.finish_tool_call(call.id, status="succeeded")
                outcomes.append("finished")
            except FailedPrecondition:
                outcomes.append("refused")

    threads = [threading.Thread(target=finish) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["finished"] + ["refused"] * 9


@pytest.mark.parametrize("statement", [
    "UPDATE tool_calls SET status = 'succeeded'",
    "DELETE FROM tool_calls",
    "UPDATE planning_cycles SET payload = NULL",
    "DELETE FROM planning_cycles",
    "UPDATE decisions SET decision = 'rewritten history'",
    "DELETE FROM decisions",
])
def test_raw_sql_cannot_change_the_audit_trail(fresh_daemon: Daemon, statement: str) -> None:
    d = fresh_daemon
    with d.client() as jm:
        cycle = jm.start_planning_cycle({"goal": "ship"})
        jm.finish_planning_cycle(cycle.id, status="succeeded", outcomes={"shipped": True})
        jm.start_tool_call("t", cycle_id=cycle.id)
        jm.record_decision("ship it", reasoning={"confidence": 0.9}, cycle_id=cycle.id)
    assert d.stop() == 0
    counts = ("SELECT (SELECT count(*) FROM tool_calls), (SELECT count(*) FROM planning_cycles), "
              "(SELECT count(*) FROM decisions)")
    before = d.query(counts)
    # The database itself refuses: SQLite's triggers, PostgreSQL's (restrict_violation).
    with pytest.raises((apsw.ConstraintError, psycopg.errors.RestrictViolation),
                       match="append-only"):
        d.query(statement, write=True)
    after = d.query(counts)
    assert before == after == [(1, 2, 1)]
    assert d.query("SELECT decision FROM decisions") == [("ship it",)]


def test_list_tool_calls_filters(jm: Client, namespace: str) -> None:
    cycle = jm.start_planning_cycle(namespace=namespace)
    a = jm.start_tool_call("search", session_id="s1", cycle_id=cycle.id, namespace=namespace)
    b = jm.start_tool_call("shell", session_id="s1", namespace=namespace)
    c = jm.start_tool_call("search", session_id="s2", namespace=namespace)
    jm.finish_tool_call(a.id, status="succeeded", namespace=namespace)
    jm.finish_tool_call(b.id, status="failed", error="boom", namespace=namespace)

    def ids(**filters: object) -> list[int]:
        return [x.id for x in jm.list_tool_calls(namespace=namespace, **filters)]  # type: ignore[arg-type]

    assert ids() == [c.id, b.id, a.id]
    assert ids(tool="search") == [c.id, a.id]
    assert ids(status="running") == [c.id]
    assert ids(status="failed") == [b.id]
    assert ids(status="succeeded", tool="search") == [a.id]
    assert ids(cycle_id=cycle.id) == [a.id]
    assert ids(session_id="s1") == [b.id, a.id]
    assert ids(since=b.started_at) == [c.id, b.id]
    assert ids(until=b.started_at) == [a.id]
    page = jm.list_tool_calls(namespace=namespace, page_size=2)
    rest = jm.list_tool_calls(namespace=namespace, page_token=page.next_page_token)
    assert [x.id for x in page + rest] == [c.id, b.id, a.id]


def test_planning_cycles_and_decisions(jm: Client, namespace: str) -> None:
    first = jm.start_planning_cycle({"goals": ["triage alerts"]}, namespace=namespace)
    second = jm.start_planning_cycle(namespace=namespace)
    ended = jm.finish_planning_cycle(first.id, status="succeeded", outcomes={"triaged": 3},
                                     namespace=namespace)
    assert ended.goals == {"goals": ["triage alerts"]} and ended.outcomes == {"triaged": 3}
    with pytest.raises(FailedPrecondition):
        jm.finish_planning_cycle(first.id, status="failed", namespace=namespace)
    assert [c.id for c in jm.list_planning_cycles(namespace=namespace)] == [second.id, first.id]
    assert [c.id for c in jm.list_planning_cycles(status="running", namespace=namespace)] == [
        second.id]
    d1 = jm.record_decision("restart nginx", reasoning={"steps": ["502s", "restart"]},
                            cycle_id=first.id, namespace=namespace)
    d2 = jm.record_decision("page a human", namespace=namespace)
    assert [d.id for d in jm.list_decisions(namespace=namespace)] == [d1.id, d2.id]
    assert [d.decision for d in jm.list_decisions(cycle_id=first.id, namespace=namespace)] == [
        "restart nginx"]
    with pytest.raises(NotFound):
        jm.record_decision("orphan", cycle_id=first.id + 999, namespace=namespace)
    with pytest.raises(NotFound):
        jm.start_tool_call("t", cycle_id=first.id + 999, namespace=namespace)


def test_bad_input_is_invalid_argument(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        cases = [
            (stub.StartToolCall, audit_pb2.StartToolCallRequest(), "tool: is required"),
            (stub.StartToolCall, audit_pb2.StartToolCallRequest(tool="t" * 129), "tool"),
            (stub.StartToolCall, audit_pb2.StartToolCallRequest(tool="t", cycle_id=-1), "cycle_id"),
            (stub.FinishToolCall, audit_pb2.FinishToolCallRequest(id=1), "status: is required"),
            (stub.FinishToolCall, audit_pb2.FinishToolCallRequest(
                id=1, status=audit_pb2.RUN_STATUS_RUNNING), "SUCCEEDED, FAILED or CANCELLED"),
            (stub.FinishToolCall, audit_pb2.FinishToolCallRequest(id=0, status=SUCCEEDED), "id"),
            (stub.FinishToolCall, audit_pb2.FinishToolCallRequest(
                id=1, status=SUCCEEDED, duration_ms=-5), "duration_ms"),
            (stub.GetToolCall, audit_pb2.GetToolCallRequest(id=-1), "id"),
            (stub.ListToolCalls, audit_pb2.ListToolCallsRequest(status=9), "status"),
            (stub.ListToolCalls, audit_pb2.ListToolCallsRequest(page_size=-1), "page_size"),
            (stub.FinishPlanningCycle, audit_pb2.FinishPlanningCycleRequest(id=1), "status"),
            (stub.ListPlanningCycles, audit_pb2.ListPlanningCyclesRequest(page_token="x"),
             "page_token"),
            (stub.RecordDecision, audit_pb2.RecordDecisionRequest(), "decision: is required"),
            (stub.ListDecisions, audit_pb2.ListDecisionsRequest(page_size=-4), "page_size"),
        ]
        for call, request, message in cases:
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
            assert message in info.value.details()


def test_every_tool_call_listing_is_served_by_an_index(tmp_path: Path) -> None:
    db = Database(tmp_path / "plans.db")
    db.open()
    try:
        store = AuditStore(db)
        for filters in [{}, {"tool": "t"}, {"running": None}, {"status": "failed"},
                        {"cycle_id": 1}, {"session_id": "s"}, {"since": 0, "until": 9},
                        {"tool": "t", "status": "failed", "cursor_at": 1, "cursor_id": 1}]:
            plan = store.explain_calls(filters)
            assert not any(step.startswith("SCAN") for step in plan), (filters, plan)
            assert not any("TEMP B-TREE" in step for step in plan), (filters, plan)
    finally:
        db.close()
