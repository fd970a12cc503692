"""CollectionService: runtime tables with typed rows, made safe against SQL injection."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from conftest import Daemon
from jarvis_memory import AlreadyExists, Client, InvalidArgument, NotFound, PermissionDenied
from jarvis_memory_server.service.auth import sign_jwt

TRADES = [("symbol", "string", {"indexed": True}), ("qty", "integer", {}), ("meta", "json", {})]


def test_the_issue_example(jm: Client, namespace: str) -> None:
    jm.create_collection("trades", fields=TRADES, namespace=namespace)
    ids = jm.insert_rows("trades", [{"symbol": "ETH", "qty": 2, "meta": {"venue": "x"}}],
                         namespace=namespace)
    rows = jm.query_rows("trades", where=[("symbol", "eq", "ETH")], order_by=["-qty"],
                         namespace=namespace)
    assert rows == [{"id": ids[0], "symbol": "ETH", "qty": 2, "meta": {"venue": "x"}}]


def test_types_round_trip_and_nulls(jm: Client, namespace: str) -> None:
    jm.create_collection("everything", fields=[
        ("s", "string", {"required": True}), ("i", "integer", {}), ("r", "real", {}),
        ("b", "boolean", {}), ("j", "json", {}), ("t", "timestamp", {})], namespace=namespace)
    jm.insert_rows("everything", [
        {"s": "a", "i": -7, "r": 2.5, "b": True, "j": [1, {"x": None}],
         "t": "2026-11-22T07:30:00+01:00"},
        {"s": "b"}], namespace=namespace)
    first, second = jm.query_rows("everything", order_by=["s"], namespace=namespace)
    assert first["i"] == -7 and first["r"] == 2.5 and first["b"] is True
    assert first["j"] == [1, {"x": None}] and first["t"] == "2026-11-22T06:30:00Z"
    assert {k: v for k, v in second.items() if k != "id"} == {
        "s": "b", "i": None, "r": None, "b": None, "j": None, "t": None}


@pytest.mark.parametrize(("row", "where", "expected"), [
    ({"qty": "2"}, "rows[1].qty", "whole number"),
    ({"qty": 2.5}, "rows[1].qty", "whole number"),
    ({"qty": True}, "rows[1].qty", "whole number"),
    ({"qty": 2**60}, "rows[1].qty", "whole number"),
    ({"symbol": 5}, "rows[1].symbol", "a string"),
    ({"nope": 1}, "rows[1].nope", "not a field"),
])
def test_bad_values_name_the_row_and_field(jm: Client, namespace: str, row: dict[str, object],
                                           where: str, expected: str) -> None:
    jm.create_collection("typed", fields=TRADES, namespace=namespace)
    with pytest.raises(InvalidArgument) as info:
        jm.insert_rows("typed", [{"symbol": "ok", "qty": 1}, row], namespace=namespace)
    assert info.value.metadata["field"] == where and expected in info.value.message
    assert jm.query_rows("typed", namespace=namespace) == []  # all or nothing


def test_filters_order_and_pages(jm: Client, namespace: str) -> None:
    jm.create_collection("t", fields=[("name", "string", {"indexed": True}),
                                      ("n", "integer", {}), ("flag", "boolean", {})],
                         namespace=namespace)
    data = [{"name": f"item-{i}", "n": i % 3, "flag": i % 2 == 0} for i in range(6)]
    data.append({"name": "zeta"})
    ids = jm.insert_rows("t", data, namespace=namespace)

    def names(where: list[tuple[object, ...]], order: tuple[str, ...] = ()) -> list[str]:
        return [r["name"] for r in jm.query_rows("t", where=where, order_by=order,  # type: ignore[arg-type]
                                                 namespace=namespace)]

    assert names([("n", "eq", 1)]) == ["item-1", "item-4"]
    assert names([("n", "ne", 1)]) == ["item-0", "item-2", "item-3", "item-5"]
    assert names([("n", "ge", 2)]) == ["item-2", "item-5"]
    assert names([("n", "lt", 1), ("flag", "eq", True)]) == ["item-0"]
    assert names([("n", "in", [0, 2])]) == ["item-0", "item-2", "item-3", "item-5"]
    assert names([("name", "prefix", "item-")], ("-n", "name")) == [
        "item-2", "item-5", "item-1", "item-4", "item-0", "item-3"]
    assert names([("n", "is_null")]) == ["zeta"]
    assert names([("n", "is_null", False), ("id", "gt", ids[3])]) == ["item-4", "item-5"]
    page = jm.query_rows("t", page_size=4, namespace=namespace)
    rest = jm.query_rows("t", page_size=4, page_token=page.next_page_token, namespace=namespace)
    assert [r["id"] for r in page + rest] == ids and rest.next_page_token == ""


def test_update_and_delete_by_filter(jm: Client, namespace: str) -> None:
    jm.create_collection("tasks", fields=[("title", "string", {"required": True}),
                                          ("done", "boolean", {})], namespace=namespace)
    jm.insert_rows("tasks", [{"title": t, "done": False} for t in ("a", "b", "c")],
                   namespace=namespace)
    assert jm.update_rows("tasks", set={"done": True}, where=[("title", "in", ["a", "c"])],
                          namespace=namespace) == 2
    assert [r["title"] for r in jm.query_rows("tasks", where=[("done", "eq", True)],
                                              namespace=namespace)] == ["a", "c"]
    with pytest.raises(InvalidArgument):
        jm.update_rows("tasks", set={"title": None}, namespace=namespace)  # required
    assert jm.delete_rows("tasks", where=[("done", "eq", True)], namespace=namespace) == 2
    assert [r["title"] for r in jm.query_rows("tasks", namespace=namespace)] == ["b"]


def test_unique_fields_and_definition_changes(jm: Client, namespace: str) -> None:
    jm.create_collection("users", fields=[("email", "string", {"unique": True})],
                         namespace=namespace)
    jm.insert_rows("users", [{"email": "a@x"}], namespace=namespace)
    with pytest.raises(AlreadyExists):
        jm.insert_rows("users", [{"email": "b@x"}, {"email": "a@x"}], namespace=namespace)
    assert len(jm.query_rows("users", namespace=namespace)) == 1
    with pytest.raises(AlreadyExists):
        jm.create_collection("users", fields=[("x", "string")], namespace=namespace)
    with pytest.raises(InvalidArgument, match="not 'id'"):
        jm.create_collection("ids", fields=[("id", "integer")], namespace=namespace)
    grown = jm.add_field("users", ("age", "integer", {"indexed": True}), namespace=namespace)
    assert [f.name for f in grown.fields] == ["email", "age"]
    with pytest.raises(InvalidArgument):
        jm.add_field("users", ("nick", "string", {"required": True}), namespace=namespace)
    with pytest.raises(AlreadyExists):
        jm.add_field("users", ("age", "integer"), namespace=namespace)
    jm.insert_rows("users", [{"email": "c@x", "age": 40}], namespace=namespace)
    assert [r["age"] for r in jm.query_rows("users", order_by=["email"], namespace=namespace)] == [
        None, 40]
    assert [c.name for c in jm.list_collections(namespace=namespace)] == ["users"]
    assert jm.get_collection("users", namespace=namespace) == grown
    jm.drop_collection("users", namespace=namespace)
    with pytest.raises(NotFound):
        jm.query_rows("users", namespace=namespace)


HOSTILE = [
    'x"; DROP TABLE memories; --',
    "x; DELETE FROM collections",
    "Robert'); DROP TABLE sessions;--",
    "a b",
    "ÅNGSTRÖM",
    "x" * 64,
    "",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_sql_injection_changes_nothing_but_the_intended_table(daemon: Daemon, namespace: str,
                                                              hostile: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        jm.add_memory("canary memory", category="fact", source="user_explicit")
        jm.create_collection("safe", fields=[("v", "string", {"indexed": True})])
        jm.insert_rows("safe", [{"v": hostile}, {"v": "other"}])
        before = snapshot(daemon)
        attempts = [
            lambda: jm.create_collection(hostile, fields=[("v", "string")]),
            lambda: jm.create_collection("evil", fields=[(hostile, "string")]),
            lambda: jm.insert_rows(hostile, [{"v": "x"}]),
            lambda: jm.insert_rows("safe", [{hostile: "x"}]),
            lambda: jm.query_rows("safe", where=[(hostile, "eq", "x")]),
            lambda: jm.query_rows("safe", order_by=[hostile]),
            lambda: jm.update_rows("safe", set={hostile: "x"}),
            lambda: jm.add_field("safe", (hostile, "string")),
            lambda: jm.delete_rows(hostile),
        ]
        for attempt in attempts:
            with pytest.raises((InvalidArgument, NotFound)):
                attempt()
        # Values are data, never SQL: they are stored and matched literally.
        assert [r["v"] for r in jm.query_rows("safe", where=[("v", "eq", hostile)])] == [hostile]
        jm.insert_rows("safe", [{"v": hostile + "'--"}])
        assert jm.delete_rows("safe", where=[("v", "in", [hostile, hostile + "'--"])]) == 2
        after = snapshot(daemon)
    assert {k: v for k, v in after.items() if k != "safe"} == {
        k: v for k, v in before.items() if k != "safe"}
    assert after["safe"] == before["safe"] - 1


def snapshot(daemon: Daemon) -> dict[str, int]:
    """Row counts of every table in the file (the collection's own table as "safe")."""
    conn = apsw.Connection(str(daemon.db_path), flags=apsw.SQLITE_OPEN_READONLY)
    counts = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                "AND name NOT LIKE 'sqlite_%'").fetchall():
        counts[name] = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    tables = [n for n in counts if n.startswith("collection_")]
    counts["safe"] = sum(counts.pop(n) for n in tables)
    counts.pop("changes")  # the change log grows with every accepted write
    return counts


def test_an_indexed_field_is_served_by_its_index(tmp_path: Path) -> None:
    from jarvis_memory_server.service.collections import CollectionService, FieldDef, Filter
    from jarvis_memory_server.store.sqlite import Database

    db = Database(tmp_path / "plans.db")
    db.open()
    try:
        service = CollectionService(db)
        service.create("n", "c", [FieldDef("k", "string", indexed=True), FieldDef("v", "real")])
        for flt in [Filter("k", "eq", "x"), Filter("k", "prefix", "x"), Filter("k", "in", ["a"]),
                    Filter("id", "gt", 3)]:
            plan = service.explain("n", "c", [flt])
            assert any(step.startswith("SEARCH") for step in plan), (flt, plan)
    finally:
        db.close()


def test_dropping_needs_the_admin_role(tmp_path: Path) -> None:
    secret = "collections-secret"

    def token(role: str) -> str:
        return sign_jwt({"sub": role, "role": role, "namespaces": ["*"], "exp": 4102444800},
                        secret.encode())

    d = Daemon(tmp_path / "jarvis.db", env={"JARVIS_MEMORY_JWT_SECRET": secret}).start()
    try:
        with d.client(token=token("writer")) as jm:
            jm.create_collection("tmp", fields=[("v", "string")])
            with pytest.raises(PermissionDenied):
                jm.drop_collection("tmp")
        with d.client(token=token("admin")) as jm:
            jm.drop_collection("tmp")
    finally:
        assert d.stop() == 0


def test_collections_survive_a_restart(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()
    with d.client() as jm:
        jm.create_collection("kept", fields=TRADES)
        jm.insert_rows("kept", [{"symbol": "ETH", "qty": 3}])
    assert d.stop() == 0
    d.start()
    try:
        with d.client() as jm:
            assert [r["qty"] for r in jm.query_rows("kept", where=[("symbol", "eq", "ETH")])] == [3]
            assert [f.name for f in jm.get_collection("kept").fields] == ["symbol", "qty", "meta"]
    finally:
        assert d.stop() == 0
