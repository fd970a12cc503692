"""StateService: versions, compare-and-swap under contention, TTL, listing."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from conftest import Daemon
from jarvis.memory.v1 import state_pb2, state_pb2_grpc
from jarvis_memory import Aborted, Client, InvalidArgument, NotFound
from jarvis_memory_server.store.sqlite import Database
from jarvis_memory_server.store.state import StateStore


def test_the_issue_example(jm: Client, namespace: str) -> None:
    st = jm.put_state("planner/cursor", {"step": 3}, namespace=namespace)
    assert st.version == 1
    jm.put_state("planner/cursor", {"step": 4}, expected_version=st.version, namespace=namespace)
    assert jm.get_state("planner/cursor", namespace=namespace).value == {"step": 4}


def test_versions_and_conditions(jm: Client, namespace: str) -> None:
    first = jm.put_state("k", 1, expected_version=0, namespace=namespace)
    assert first.version == 1 and first.expires_at is None
    with pytest.raises(Aborted) as info:
        jm.put_state("k", 2, expected_version=0, namespace=namespace)
    assert info.value.reason == "VERSION_MISMATCH" and info.value.metadata["version"] == "1"
    with pytest.raises(Aborted):
        jm.put_state("k", 2, expected_version=7, namespace=namespace)
    assert jm.get_state("k", namespace=namespace) == first  # nothing changed
    second = jm.put_state("k", [1, 2], namespace=namespace)  # unconditional
    assert second.version == 2 and second.revision > first.revision
    with pytest.raises(Aborted):
        jm.delete_state("k", expected_version=1, namespace=namespace)
    jm.delete_state("k", expected_version=2, namespace=namespace)
    with pytest.raises(NotFound):
        jm.get_state("k", namespace=namespace)
    with pytest.raises(NotFound):
        jm.delete_state("k", namespace=namespace)
    with pytest.raises(Aborted):
        jm.delete_state("k", expected_version=2, namespace=namespace)
    assert jm.put_state("k", None, expected_version=0, namespace=namespace).version == 1


def test_twenty_clients_incrementing_a_counter_end_at_one_thousand(daemon: Daemon,
                                                                   namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        jm.put_state("counter", 0, expected_version=0)
    conflicts = []

    def increment(n: int) -> None:
        with daemon.client(namespace=namespace) as jm:
            for _ in range(50):
                while True:
                    current = jm.get_state("counter")
                    try:
                        jm.put_state("counter", current.value + 1,
                                     expected_version=current.version)
                        break
                    except Aborted:
                        conflicts.append(n)

    threads = [threading.Thread(target=increment, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with daemon.client(namespace=namespace) as jm:
        final = jm.get_state("counter")
    assert final.value == 1000
    assert final.version == 1001
    assert conflicts, "20 concurrent clients never conflicted: the test did not test CAS"


def test_ttl_expiry_reads_as_absent_and_is_purged(db_target: Path | str) -> None:
    d = Daemon(db_target, "--state-purge-interval", "0.05").start()
    try:
        with d.client() as jm:
            lasting = jm.put_state("lasting", "x", ttl=3600)
            assert lasting.expires_at is not None and lasting.expires_at > lasting.updated_at
            jm.put_state("fleeting", "x", ttl=0.000001)  # expired before anyone reads it
            with pytest.raises(NotFound):
                jm.get_state("fleeting")
            assert [e.key for e in jm.list_state()] == ["lasting"]
            again = jm.put_state("fleeting", "y", expected_version=0)  # absent, so version 1
            assert again.version == 1 and again.expires_at is None
            jm.put_state("gone", 1, ttl=0.000001)
            d.wait_for_log(r"purged 1 expired state entries")
            assert jm.get_state("fleeting").value == "y"
    finally:
        assert d.stop() == 0


def test_list_in_key_order_by_prefix_with_pages(jm: Client, namespace: str) -> None:
    for key in ["planner/b", "planner/a", "memory/x", "planner/c"]:
        jm.put_state(key, key, namespace=namespace)
    assert [e.key for e in jm.list_state(prefix="planner/", namespace=namespace)] == [
        "planner/a", "planner/b", "planner/c"]
    page = jm.list_state(page_size=3, namespace=namespace)
    rest = jm.list_state(page_token=page.next_page_token, page_size=3, namespace=namespace)
    assert [e.key for e in page + rest] == ["memory/x", "planner/a", "planner/b", "planner/c"]
    assert rest.next_page_token == ""
    with pytest.raises(InvalidArgument):
        jm.list_state(prefix="memory/", page_token=page.next_page_token, namespace=namespace)


@pytest.mark.parametrize(("request_message", "message"), [
    (state_pb2.PutStateRequest(key="k"), "value: is required"),
    (state_pb2.PutStateRequest(key="", value={"string_value": "v"}), "key: is required"),
    (state_pb2.PutStateRequest(key="bad key", value={"string_value": "v"}), "key"),
    (state_pb2.PutStateRequest(key="k", value={"string_value": "v"}, expected_version=-1),
     "expected_version"),
    (state_pb2.PutStateRequest(key="k", value={"string_value": "v"}, ttl={"seconds": -5}), "ttl"),
    (state_pb2.PutStateRequest(key="k", value={"string_value": "x" * (1024 * 1024 + 10)}),
     "value"),
])
def test_bad_puts_are_rejected(daemon: Daemon, request_message: state_pb2.PutStateRequest,
                               message: str) -> None:
    with grpc.insecure_channel(daemon.addr) as channel, pytest.raises(grpc.RpcError) as info:
        state_pb2_grpc.StateServiceStub(channel).PutState(request_message)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_bad_reads_are_rejected(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        for call, request in [(stub.GetState, state_pb2.GetStateRequest(key="x y")),
                              (stub.DeleteState, state_pb2.DeleteStateRequest(key="")),
                              (stub.ListState, state_pb2.ListStateRequest(page_size=-1)),
                              (stub.ListState, state_pb2.ListStateRequest(page_token="?"))]:
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_state_survives_a_restart(db_target: Path | str) -> None:
    d = Daemon(db_target).start()
    with d.client() as jm:
        jm.put_state("a", {"n": 1})
        entry = jm.put_state("a", {"n": 2})
    assert d.stop() == 0
    d.start()
    try:
        with d.client() as jm:
            assert jm.get_state("a") == entry
    finally:
        assert d.stop() == 0


def test_state_queries_use_indexes(tmp_path: Path) -> None:
    db = Database(tmp_path / "plans.db")
    db.open()
    try:
        for name, plan in StateStore(db).explain().items():
            assert plan and not any(step.startswith("SCAN") for step in plan), (name, plan)
    finally:
        db.close()
