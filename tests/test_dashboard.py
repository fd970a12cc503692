"""EventService, SnapshotService and PreferenceService (the home-lab dashboard's backend)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import combinations
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from conftest import Daemon
from jarvis.memory.v1 import (
    event_pb2,
    event_pb2_grpc,
    preference_pb2,
    preference_pb2_grpc,
    snapshot_pb2,
    snapshot_pb2_grpc,
)
from jarvis_memory import Client, FailedPrecondition, InvalidArgument, NotFound
from jarvis_memory_server.service.auth import sign_jwt
from jarvis_memory_server.store.events import EventStore
from jarvis_memory_server.store.preferences import PreferenceStore
from jarvis_memory_server.store.snapshots import SnapshotStore
from jarvis_memory_server.store.sqlite import Database


def test_the_issue_example_with_a_token(tmp_path: Path) -> None:
    secret = "dashboard-secret"
    token = sign_jwt({"sub": "dash", "role": "writer", "namespaces": ["default"],
                      "exp": int(datetime.now(UTC).timestamp()) + 600}, secret.encode())
    d = Daemon(tmp_path / "jarvis.db", env={"JARVIS_MEMORY_JWT_SECRET": secret}).start()
    try:
        with Client(d.addr, token=token) as jm:
            e = jm.record_event(type="alert", severity="warning", source="monitor", node="pve1",
                                summary="disk 91% full", details={"disk": "/dev/sda", "pct": 91})
            assert [x.summary for x in jm.list_events(unresolved=True, node="pve1")] == [
                "disk 91% full"]
            jm.resolve_event(e.id, resolved_by="user")
            assert jm.list_events(unresolved=True, node="pve1") == []
            jm.set_preference("briefing_time", "07:30")
            assert jm.get_preference("briefing_time").value == "07:30"
            jm.save_snapshot({"nodes": 4, "up": 4})
            assert jm.get_latest_snapshot().data == {"nodes": 4, "up": 4}
    finally:
        assert d.stop() == 0


# -- events -------------------------------------------------------------------------------------


def test_record_get_and_resolve(jm: Client, namespace: str) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    e = jm.record_event(type="action", severity="info", source="agent", summary="restarted nginx",
                        node="web1", details={"unit": "nginx"}, occurred_at=when,
                        namespace=namespace)
    assert (e.type, e.severity, e.source, e.node, e.occurred_at) == (
        "action", "info", "agent", "web1", when)
    assert not e.resolved and e.resolved_at is None and e.resolved_by == ""
    assert jm.get_event(e.id, namespace=namespace) == e
    resolved = jm.resolve_event(e.id, resolved_by="agent:ops", namespace=namespace)
    assert resolved.resolved and resolved.resolved_by == "agent:ops"
    assert resolved.resolved_at is not None and resolved.revision > e.revision
    with pytest.raises(FailedPrecondition) as info:
        jm.resolve_event(e.id, resolved_by="someone else", namespace=namespace)
    assert info.value.reason == "EVENT_RESOLVED"
    assert jm.get_event(e.id, namespace=namespace) == resolved
    with pytest.raises(NotFound):
        jm.get_event(e.id, namespace=namespace + "-other")


def test_list_events_filters_combine(jm: Client, namespace: str) -> None:
    base = datetime(2026, 5, 1, tzinfo=UTC)
    specs = [  # type, severity, source, node
        ("alert", "critical", "monitor", "pve1"),
        ("alert", "warning", "monitor", "pve2"),
        ("metric", "info", "system", "pve1"),
        ("action", "error", "agent", "pve1"),
        ("status", "info", "user", ""),
    ]
    events = [jm.record_event(type=t, severity=s, source=src, node=n, summary=f"event {i}",
                              occurred_at=base + timedelta(minutes=i), namespace=namespace)
              for i, (t, s, src, n) in enumerate(specs)]
    jm.resolve_event(events[0].id, resolved_by="user", namespace=namespace)

    def ids(**filters: object) -> list[int]:
        return [e.id for e in jm.list_events(namespace=namespace, **filters)]  # type: ignore[arg-type]

    e = [x.id for x in events]
    assert ids() == e[::-1]
    assert ids(unresolved=True) == [e[4], e[3], e[2], e[1]]
    assert ids(resolved=True) == [e[0]]
    assert ids(node="pve1") == [e[3], e[2], e[0]]
    assert ids(node="") == [e[4]]
    assert ids(types=["alert"]) == [e[1], e[0]]
    assert ids(types=["alert", "metric"]) == [e[2], e[1], e[0]]
    assert ids(min_severity="warning") == [e[3], e[1], e[0]]
    assert ids(min_severity="critical") == [e[0]]
    assert ids(source="monitor") == [e[1], e[0]]
    assert ids(since=base + timedelta(minutes=1), until=base + timedelta(minutes=3)) == [e[2], e[1]]
    assert ids(unresolved=True, node="pve1", min_severity="error") == [e[3]]
    assert ids(types=["alert"], source="monitor", unresolved=True) == [e[1]]
    page = jm.list_events(namespace=namespace, page_size=2)
    rest = jm.list_events(namespace=namespace, page_size=10, page_token=page.next_page_token)
    assert [x.id for x in page + rest] == e[::-1] and rest.next_page_token == ""


BAD_EVENTS = [
    (dict(severity=1, source=1, summary="x"), "type: is required"),
    (dict(type=9, severity=1, source=1, summary="x"), "type"),
    (dict(type=1, source=1, summary="x"), "severity: is required"),
    (dict(type=1, severity=1, summary="x"), "source: is required"),
    (dict(type=1, severity=1, source=1), "summary: is required"),
    (dict(type=1, severity=1, source=1, summary="two\nlines"), "one line"),
    (dict(type=1, severity=1, source=1, summary="x" * 1025), "summary"),
    (dict(type=1, severity=1, source=1, summary="x", node="n" * 129), "node"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_EVENTS, ids=[m for _, m in BAD_EVENTS])
def test_bad_events_are_rejected(daemon: Daemon, fields: dict[str, object], message: str) -> None:
    with grpc.insecure_channel(daemon.addr) as channel, pytest.raises(grpc.RpcError) as info:
        event_pb2_grpc.EventServiceStub(channel).RecordEvent(event_pb2.RecordEventRequest(**fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_bad_event_queries_are_rejected(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        stub = event_pb2_grpc.EventServiceStub(channel)
        for call, request, message in [
            (stub.GetEvent, event_pb2.GetEventRequest(id=0), "id"),
            (stub.GetEvent, event_pb2.GetEventRequest(id=987654), "987654"),
            (stub.ResolveEvent, event_pb2.ResolveEventRequest(id=1), "resolved_by: is required"),
            (stub.ResolveEvent, event_pb2.ResolveEventRequest(id=987654, resolved_by="u"), "987654"),
            (stub.ListEvents, event_pb2.ListEventsRequest(types=[9]), "types"),
            (stub.ListEvents, event_pb2.ListEventsRequest(min_severity=9), "min_severity"),
            (stub.ListEvents, event_pb2.ListEventsRequest(page_size=-1), "page_size"),
            (stub.ListEvents, event_pb2.ListEventsRequest(page_token="nope"), "page_token"),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            expected = (grpc.StatusCode.NOT_FOUND if "987654" in message
                        else grpc.StatusCode.INVALID_ARGUMENT)
            assert info.value.code() == expected, message
            assert message in info.value.details()


FILTER_NAMES = ["min_severity", "node", "source", "since", "until", "resolved", "types"]


@pytest.fixture
def plans_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = Database(tmp_path / "plans.db")
    db.open()
    yield db
    db.close()


def test_every_event_filter_is_served_by_an_index(plans_db: Database) -> None:
    store = EventStore(plans_db)
    sample = {"min_severity": 2, "node": "pve1", "source": "monitor", "since": 0,
              "until": 10**15, "resolved": False}
    shapes = [()] + [c for n in (1, 2) for c in combinations(FILTER_NAMES, n)]
    for shape in shapes:
        for resolved in ((False, True) if "resolved" in shape else (None,)):
            filters = {k: sample[k] for k in shape if k != "types"}
            if resolved is not None:
                filters["resolved"] = resolved
            types = ("alert", "metric") if "types" in shape else ()
            for cursor in (False, True):
                if cursor:
                    filters = {**filters, "cursor_at": 5, "cursor_id": 9}
                plan = store.explain("n", filters, types)
                assert any(step.startswith("SEARCH") for step in plan), (shape, plan)
                assert not any(step.startswith("SCAN") for step in plan), (shape, plan)
    unresolved = store.explain("n", {"resolved": False}, ())
    assert "events_unresolved_namespace_occurred_at" in unresolved[0]


# -- snapshots ----------------------------------------------------------------------------------


def test_snapshots_by_kind(jm: Client, namespace: str) -> None:
    with pytest.raises(NotFound):
        jm.get_latest_snapshot(namespace=namespace)
    first = jm.save_snapshot({"nodes": 3}, namespace=namespace)
    assert first.kind == "cluster"
    jm.save_snapshot({"containers": 12}, kind="docker", namespace=namespace)
    second = jm.save_snapshot({"nodes": 4, "up": 4}, namespace=namespace)
    assert jm.get_latest_snapshot(namespace=namespace) == second
    assert jm.get_latest_snapshot("docker", namespace=namespace).data == {"containers": 12}
    listed = jm.list_snapshots(namespace=namespace)
    assert [s.id for s in listed] == [second.id, first.id]
    assert [s.id for s in jm.list_snapshots(since=second.taken_at, namespace=namespace)] == [second.id]
    page = jm.list_snapshots(page_size=1, namespace=namespace)
    assert [s.id for s in jm.list_snapshots(page_size=1, page_token=page.next_page_token,
                                            namespace=namespace)] == [first.id]


def test_bad_snapshots_are_rejected(daemon: Daemon) -> None:
    big = struct_pb2.Struct()
    big.update({"blob": "x" * (4 * 1024 * 1024 + 10)})
    with grpc.insecure_channel(daemon.addr, options=[("grpc.max_send_message_length", -1)]) as ch:
        stub = snapshot_pb2_grpc.SnapshotServiceStub(ch)
        for request, message in [
            (snapshot_pb2.SaveSnapshotRequest(), "data: is required"),
            (snapshot_pb2.SaveSnapshotRequest(kind="bad kind", data=struct_pb2.Struct()), "kind"),
            (snapshot_pb2.SaveSnapshotRequest(data=big), "data"),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                stub.SaveSnapshot(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.ListSnapshots(snapshot_pb2.ListSnapshotsRequest(page_size=-2))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_snapshot_retention_keeps_the_newest_n_per_kind(db_target: Path | str) -> None:
    d = Daemon(db_target, "--snapshot-keep", "3").start()
    try:
        with d.client() as jm:
            saved = [jm.save_snapshot({"n": i}).id for i in range(5)]
            other = jm.save_snapshot({"n": 99}, kind="docker").id
            assert [s.id for s in jm.list_snapshots()] == saved[:1:-1]
            assert [s.id for s in jm.list_snapshots("docker")] == [other]
    finally:
        assert d.stop() == 0


def test_snapshot_retention_drops_old_ones(db_target: Path | str) -> None:
    d = Daemon(db_target, "--snapshot-max-age", "0.2").start()
    try:
        with d.client() as jm:
            jm.save_snapshot({"old": True})
            d.wait_for_log(r"dropped 1 snapshots older than 0.2 s")
            with pytest.raises(NotFound):
                jm.get_latest_snapshot()
    finally:
        assert d.stop() == 0


def test_snapshot_queries_use_indexes(plans_db: Database) -> None:
    for name, plan in SnapshotStore(plans_db).explain().items():
        assert not any(step.startswith("SCAN") for step in plan), (name, plan)


# -- preferences --------------------------------------------------------------------------------


def test_set_twice_keeps_one_row(jm: Client, namespace: str) -> None:
    first = jm.set_preference("briefing_time", "07:30", namespace=namespace)
    second = jm.set_preference("briefing_time", {"weekday": "07:30", "weekend": "09:00"},
                               namespace=namespace)
    assert second.created_at == first.created_at and second.updated_at > first.updated_at
    assert second.revision > first.revision
    assert jm.get_preference("briefing_time", namespace=namespace).value == {
        "weekday": "07:30", "weekend": "09:00"}
    assert [p.key for p in jm.list_preferences(namespace=namespace)] == ["briefing_time"]


def test_values_are_any_json(jm: Client, namespace: str) -> None:
    for key, value in [("n", 3), ("flag", True), ("none", None), ("list", [1, "a"]), ("s", "x")]:
        jm.set_preference(key, value, namespace=namespace)
        assert jm.get_preference(key, namespace=namespace).value == value


def test_list_by_prefix_in_key_order_with_pages(jm: Client, namespace: str) -> None:
    for key in ["ui/theme", "ui/font", "voice/speed", "ui/zoom", "u"]:
        jm.set_preference(key, 1, namespace=namespace)
    assert [p.key for p in jm.list_preferences(prefix="ui/", namespace=namespace)] == [
        "ui/font", "ui/theme", "ui/zoom"]
    page = jm.list_preferences(page_size=2, namespace=namespace)
    rest = jm.list_preferences(page_size=10, page_token=page.next_page_token, namespace=namespace)
    assert [p.key for p in page + rest] == ["u", "ui/font", "ui/theme", "ui/zoom", "voice/speed"]
    with pytest.raises(InvalidArgument):
        jm.list_preferences(prefix="voice/", page_token=page.next_page_token, namespace=namespace)


def test_get_and_delete_unknown_keys_are_not_found(jm: Client, namespace: str) -> None:
    with pytest.raises(NotFound) as info:
        jm.get_preference("missing", namespace=namespace)
    assert info.value.reason == "PREFERENCE_NOT_FOUND"
    jm.set_preference("temp", 1, namespace=namespace)
    jm.delete_preference("temp", namespace=namespace)
    with pytest.raises(NotFound):
        jm.delete_preference("temp", namespace=namespace)


@pytest.mark.parametrize("key", ["", "has space", "/leading", "k" * 129, "semi;colon"])
def test_bad_keys_are_rejected(daemon: Daemon, key: str) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        stub = preference_pb2_grpc.PreferenceServiceStub(channel)
        value = struct_pb2.Value(string_value="v")
        for call, request in [
            (stub.SetPreference, preference_pb2.SetPreferenceRequest(key=key, value=value)),
            (stub.GetPreference, preference_pb2.GetPreferenceRequest(key=key)),
            (stub.DeletePreference, preference_pb2.DeletePreferenceRequest(key=key)),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "key" in info.value.details()


def test_a_value_is_required(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel, pytest.raises(grpc.RpcError) as info:
        preference_pb2_grpc.PreferenceServiceStub(channel).SetPreference(
            preference_pb2.SetPreferenceRequest(key="k"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "value: is required" in info.value.details()


def test_preference_listing_uses_the_key_index(plans_db: Database) -> None:
    plan = PreferenceStore(plans_db).explain()
    assert plan and all(step.startswith("SEARCH") for step in plan), plan


def test_everything_survives_a_restart(db_target: Path | str) -> None:
    d = Daemon(db_target).start()
    with d.client() as jm:
        e = jm.record_event(type="alert", severity="error", source="monitor", summary="down")
        jm.set_preference("k", [1, 2])
        s = jm.save_snapshot({"a": 1})
    assert d.stop() == 0
    d.start()
    try:
        with d.client() as jm:
            assert jm.get_event(e.id) == e
            assert jm.get_preference("k").value == [1, 2]
            assert jm.get_latest_snapshot() == s
    finally:
        assert d.stop() == 0
