"""CollectionService: runtime tables with typed rows, made safe against SQL injection."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import Daemon, database_for
from jarvis.memory.v1 import collection_pb2, collection_pb2_grpc
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
    assert first["j"] == [1, {"x": None}]
    assert first["t"] == datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
    assert {k: v for k, v in second.items() if k != "id"} == {
        "s": "b", "i": None, "r": None, "b": None, "j": None, "t": None}


@pytest.mark.parametrize(("row", "where", "expected"), [
    ({"qty": "2"}, "typed_rows[1].qty", "whole number"),
    ({"qty": 2.5}, "typed_rows[1].qty", "whole number"),
    ({"qty": 4.0}, "typed_rows[1].qty", "got the real number 4.0"),
    ({"qty": True}, "typed_rows[1].qty", "whole number"),
    ({"qty": 2**63}, "rows[1].qty", "outside the range"),  # refused by the SDK before sending
    ({"symbol": 5}, "typed_rows[1].symbol", "a string"),
    ({"nope": 1}, "typed_rows[1].nope", "not a field"),
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
    """Row counts of every table of the database (the collection's own table as "safe")."""
    counts = {}
    if isinstance(daemon.db_path, str):  # a PostgreSQL database
        import psycopg

        with psycopg.connect(daemon.db_path) as pg:
            for (name,) in pg.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()").fetchall():
                counts[name] = pg.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    else:
        conn = apsw.Connection(str(daemon.db_path), flags=apsw.SQLITE_OPEN_READONLY)
        for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                    "AND name NOT LIKE 'sqlite_%'").fetchall():
            counts[name] = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    tables = [n for n in counts if n.startswith("collection_")]
    counts["safe"] = sum(counts.pop(n) for n in tables)
    counts.pop("changes")  # the change log grows with every accepted write
    return counts


def test_text_orders_and_matches_by_code_point(jm: Client, namespace: str) -> None:
    # As SQLite compares text (byte by byte in UTF-8), whatever the PostgreSQL locale.
    words = ["b", "B", "a", "ab", "a_b", "a b", "a-b", "_", "\u00e9", "z", "a\u00e9", "A", "",
             "a\U0001f600", "\uff41"]
    jm.create_collection("words", fields=[("w", "string", {"indexed": True}),
                                          ("n", "integer", {})], namespace=namespace)
    jm.insert_rows("words", [{"w": w} for w in words] + [{"n": 1}], namespace=namespace)

    def found(where: list[tuple[object, ...]], order: str = "w") -> list[str | None]:
        return [r["w"] for r in jm.query_rows("words", where=where,  # type: ignore[arg-type]
                                              order_by=[order], namespace=namespace)]

    assert found([]) == [None, *sorted(words)]  # null first, as the smallest value
    assert found([], "-w") == [*sorted(words, reverse=True), None]
    assert found([("w", "prefix", "a")]) == sorted(w for w in words if w.startswith("a"))
    assert found([("w", "gt", "a"), ("w", "lt", "b")]) == sorted(
        w for w in words if "a" < w < "b")
    assert found([("w", "in", ["A", "\u00e9"])]) == ["A", "\u00e9"]


def test_long_field_names_each_get_their_index(jm: Client, namespace: str) -> None:
    # 62 characters: the index names the table and the field, beyond PostgreSQL's 63 bytes.
    a, b, c = ("f" * 60 + end for end in ("ab", "ac", "ad"))
    jm.create_collection("long", fields=[(a, "string", {"unique": True}),
                                         (b, "string", {"indexed": True})], namespace=namespace)
    jm.add_field("long", (c, "integer", {"unique": True}), namespace=namespace)
    jm.insert_rows("long", [{a: "x", b: "y", c: 1}], namespace=namespace)
    for row in [{a: "z", c: 1}, {a: "x"}]:
        with pytest.raises(AlreadyExists):
            jm.insert_rows("long", [row], namespace=namespace)
    jm.insert_rows("long", [{a: "z", b: "y", c: 2}], namespace=namespace)
    assert [r[c] for r in jm.query_rows("long", where=[(b, "eq", "y")], order_by=[a],
                                        namespace=namespace)] == [1, 2]


def test_refused_writes_leave_the_batch_alone(daemon: Daemon, namespace: str) -> None:
    """A unique violation fails its own write only: the batch it ran in is not rolled back.

    (On PostgreSQL a failed statement aborts the whole transaction: the store checks first
    or runs the statement in a savepoint.)
    """
    with daemon.client(namespace=namespace) as jm:

        def log_so_far(mark: str) -> list[str]:
            """The daemon's log up to a line logged now (the log is read in a thread)."""
            with pytest.raises(NotFound):
                jm.query_rows(mark)
            daemon.wait_for_log(f"collection '{mark}' does not exist in namespace "
                                f"'{re.escape(namespace)}'")
            return list(daemon.log)

        jm.create_collection("once", fields=[("k", "string", {"unique": True})])
        jm.insert_rows("once", [{"k": "a"}, {"k": "b"}])
        # (A statement that changed rows before failing does roll back its batch on SQLite.)
        with pytest.raises(AlreadyExists):
            jm.insert_rows("once", [{"k": "c"}, {"k": "a"}])
        with pytest.raises(AlreadyExists):
            jm.update_rows("once", set={"k": "c"})
        before = len(log_so_far("before"))
        for attempt in [
            lambda: jm.insert_rows("once", [{"k": "a"}]),
            lambda: jm.update_rows("once", set={"k": "a"}, where=[("k", "eq", "b")]),
            lambda: jm.create_collection("once", fields=[("k", "string")]),
        ]:
            with pytest.raises(AlreadyExists):
                attempt()
        assert not [line for line in log_so_far("after")[before:] if "rolling back" in line]
        assert sorted(r["k"] for r in jm.query_rows("once")) == ["a", "b"]


def test_reads_go_on_while_collections_change(daemon: Daemon, namespace: str) -> None:
    """Queries racing changes of their collection's table get rows or NOT_FOUND, at once.

    (On PostgreSQL such a query waits for the change to commit, which the event loop may be
    about to do: it must not wait on the loop.)
    """
    stop = threading.Event()
    failures: list[Exception] = []

    def read() -> None:
        with daemon.client(namespace=namespace, timeout=10) as reader:
            while not stop.is_set():
                try:
                    reader.query_rows("busy", where=[("a", "eq", "x")])
                except NotFound:
                    pass
                except Exception as exc:  # reported below
                    failures.append(exc)
                    return

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        with daemon.client(namespace=namespace, timeout=10) as jm:
            for i in range(15):
                jm.create_collection("busy", fields=[("a", "string", {"unique": True})])
                jm.insert_rows("busy", [{"a": "x"}])
                jm.add_field("busy", (f"b{i}", "integer", {"indexed": True}))
                jm.update_rows("busy", set={f"b{i}": i})
                jm.drop_collection("busy")
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert failures == []


@pytest.mark.postgresql_only("reads PostgreSQL's catalog")
def test_postgresql_tables_have_the_field_types(daemon: Daemon, namespace: str) -> None:
    import psycopg

    with daemon.client(namespace=namespace) as jm:
        jm.create_collection("typed", fields=[
            ("s", "string", {"required": True, "unique": True}),
            ("i", "integer", {"indexed": True}), ("r", "real", {}), ("b", "boolean", {}), ("j", "json", {}), ("t", "timestamp", {})])
    with psycopg.connect(str(daemon.db_path)) as pg:
        found = pg.execute('SELECT id FROM "collections" WHERE namespace = %s AND name = %s',
                           (namespace, "typed")).fetchone()
        assert found is not None
        table = f"collection_{found[0]}"
        columns = {row[0]: row[1:] for row in pg.execute(
            "SELECT column_name, data_type, is_nullable, collation_name "
            "FROM information_schema.columns WHERE table_name = %s", (table,))}
        indexes = set(pg.execute(
            "SELECT a.attname, i.indisunique FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass", (table,)).fetchall())
    assert columns == {
        "id": ("bigint", "NO", None), "s": ("text", "NO", "C"), "i": ("bigint", "YES", None),
        "r": ("double precision", "YES", None), "b": ("smallint", "YES", None),
        "j": ("text", "YES", "C"), "t": ("bigint", "YES", None)}
    assert indexes == {("id", True), ("s", True), ("i", False)}


def test_an_indexed_field_is_served_by_its_index(
        tmp_path: Path, fresh_backend: str, request: pytest.FixtureRequest) -> None:
    from jarvis_memory_server.service.collections import CollectionService, FieldDef, Filter
    from jarvis_memory_server.store.backend import make_database

    db = make_database(str(database_for(fresh_backend, tmp_path, request)))
    db.open()
    try:
        service = CollectionService(db)
        service.create("n", "c", [FieldDef("k", "string", indexed=True), FieldDef("v", "real")])
        if db.kind == "postgresql":  # its planner scans a table it has no statistics of
            for start in range(0, 5000, 1000):
                service.insert("n", "c", [{"k": f"k{i}"} for i in range(start, start + 1000)])
            db.reader.execute("ANALYZE")
        for flt in [Filter("k", "eq", "x"), Filter("k", "prefix", "x"), Filter("k", "in", ["a"]),
                    Filter("id", "gt", 4990)]:
            plan = service.explain("n", "c", [flt])
            if db.kind == "sqlite":
                assert any(step.startswith("SEARCH") for step in plan), (flt, plan)
            else:
                assert any(" using collection_" in step for step in plan), (flt, plan)
    finally:
        db.close()


def test_dropping_needs_the_admin_role(
        tmp_path: Path, fresh_backend: str, request: pytest.FixtureRequest) -> None:
    secret = "collections-secret"

    def token(role: str) -> str:
        return sign_jwt({"sub": role, "role": role, "namespaces": ["*"], "exp": 4102444800},
                        secret.encode())

    d = Daemon(database_for(fresh_backend, tmp_path, request),
               env={"JARVIS_MEMORY_JWT_SECRET": secret}).start()
    try:
        with d.client(token=token("writer")) as jm:
            jm.create_collection("tmp", fields=[("v", "string")])
            with pytest.raises(PermissionDenied):
                jm.drop_collection("tmp")
        with d.client(token=token("admin")) as jm:
            jm.drop_collection("tmp")
    finally:
        assert d.stop() == 0


def test_collections_survive_a_restart(
        tmp_path: Path, fresh_backend: str, request: pytest.FixtureRequest) -> None:
    d = Daemon(database_for(fresh_backend, tmp_path, request)).start()
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


# -- typed values on the wire (FieldValue), through the generated stubs -----------------------

FV = collection_pb2.FieldValue
T = collection_pb2
NULL = FV(null_value=struct_pb2.NULL_VALUE)
EVERY_TYPE = [("s", T.FIELD_TYPE_STRING), ("i", T.FIELD_TYPE_INTEGER), ("r", T.FIELD_TYPE_REAL),
              ("b", T.FIELD_TYPE_BOOLEAN), ("j", T.FIELD_TYPE_JSON),
              ("t", T.FIELD_TYPE_TIMESTAMP)]


@pytest.fixture
def rows(daemon: Daemon) -> Iterator[collection_pb2_grpc.CollectionServiceStub]:
    with grpc.insecure_channel(daemon.addr) as channel:
        yield collection_pb2_grpc.CollectionServiceStub(channel)


def create(stub: collection_pb2_grpc.CollectionServiceStub, namespace: str, name: str,
           fields: Sequence[tuple[str, Any]], **options: bool) -> None:
    stub.CreateCollection(T.CreateCollectionRequest(namespace=namespace, name=name, fields=[
        T.Field(name=n, type=t, **options) for n, t in fields]))


def ts(seconds: int, nanos: int = 0) -> FV:
    return FV(timestamp_value=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))


def insert(stub: collection_pb2_grpc.CollectionServiceStub, namespace: str, name: str,
           *typed: dict[str, FV]) -> list[int]:
    return list(stub.InsertRows(T.InsertRowsRequest(
        namespace=namespace, collection=name, typed_rows=[T.Row(fields=r) for r in typed])).ids)


def query(stub: collection_pb2_grpc.CollectionServiceStub, namespace: str, name: str,
          *filters: T.Filter, order: tuple[T.OrderBy, ...] = ()) -> list[T.Row]:
    return list(stub.QueryRows(T.QueryRowsRequest(
        namespace=namespace, collection=name, filters=filters, order_by=order)).rows)


def flt(field: str, op: int, value: FV | None = None, values: tuple[FV, ...] = ()) -> T.Filter:
    return T.Filter(field=field, op=op, typed_value=value,  # type: ignore[arg-type]
                    typed_values=values)


def kinds(row: T.Row) -> dict[str, tuple[str | None, object]]:
    """field -> (kind, value) of a Row's typed fields."""
    result: dict[str, tuple[str | None, object]] = {}
    for name, value in row.fields.items():
        kind = value.WhichOneof("kind")
        result[name] = (kind, getattr(value, kind) if kind and kind != "null_value" else None)
    return result


def invalid(call: object, request: object) -> str:
    """The ErrorInfo "field" of the INVALID_ARGUMENT a call fails with (message checked by
    the callers through details())."""
    with pytest.raises(grpc.RpcError) as info:
        call(request)  # type: ignore[operator]
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    return str(detail.metadata["field"]) + " :: " + str(error.details())


def test_typed_round_trip_of_every_type(rows: collection_pb2_grpc.CollectionServiceStub,
                                        namespace: str) -> None:
    create(rows, namespace, "every", EVERY_TYPE)
    doc = '{"ids":[1152921504606846976,-7],"r":0.5,"n":null}'
    moment = 1795332600  # 2026-11-22T07:30:00Z
    ids = insert(rows, namespace, "every",
                 {"s": FV(string_value="a"), "i": FV(integer_value=2**62),
                  "r": FV(real_value=0.5), "b": FV(boolean_value=True),
                  "j": FV(json_value=doc), "t": ts(moment, 123456789)},
                 {"s": FV(string_value="b"), "i": FV(integer_value=-2**63),
                  "r": FV(real_value=4.0), "b": FV(boolean_value=False),
                  "j": FV(json_value=" 4.0 "), "t": NULL},
                 {"s": FV(string_value="c"), "i": FV(integer_value=2**63 - 1),
                  "r": FV(integer_value=3), "j": FV(json_value="4"), "t": ts(-1, 999_999_000)},
                 {"s": FV(string_value="d"), "j": FV(string_value="x"), "i": NULL},
                 {"s": FV(string_value="e"), "j": FV(real_value=2.0), "b": NULL})
    a, b, c, d, e = query(rows, namespace, "every", order=(T.OrderBy(field="s"),))
    assert [r.id for r in (a, b, c, d, e)] == ids
    assert {r.collection for r in (a, b, c, d, e)} == {"every"}
    assert kinds(a) == {"s": ("string_value", "a"), "i": ("integer_value", 2**62),
                        "r": ("real_value", 0.5), "b": ("boolean_value", True),
                        "j": ("json_value", doc), "t": ("timestamp_value", ts(moment, 123456000)
                                                         .timestamp_value)}
    assert json.loads(a.fields["j"].json_value) == {"ids": [2**60, -7], "r": 0.5, "n": None}
    assert kinds(b) == {"s": ("string_value", "b"), "i": ("integer_value", -2**63),
                        "r": ("real_value", 4.0), "b": ("boolean_value", False),
                        "j": ("json_value", "4.0"), "t": ("null_value", None)}
    assert kinds(c)["i"] == ("integer_value", 2**63 - 1)
    assert kinds(c)["r"] == ("real_value", 3.0) and kinds(c)["j"] == ("json_value", "4")
    assert type(json.loads(b.fields["j"].json_value)) is float
    assert type(json.loads(c.fields["j"].json_value)) is int
    assert (c.fields["t"].timestamp_value.seconds, c.fields["t"].timestamp_value.nanos) == (
        -1, 999_999_000)
    assert kinds(d) == {"s": ("string_value", "d"), "i": ("null_value", None),
                        "r": ("null_value", None), "b": ("null_value", None),
                        "j": ("json_value", '"x"'), "t": ("null_value", None)}
    assert kinds(e)["j"] == ("json_value", "2.0")
    # The older Struct form is still filled, as before.
    assert json_format.MessageToDict(a.values) == {
        "s": "a", "i": float(2**62), "r": 0.5, "b": True,
        "j": {"ids": [float(2**60), -7.0], "r": 0.5, "n": None},
        "t": "2026-11-22T07:30:00.123456Z"}
    assert json_format.MessageToDict(d.values)["i"] is None
    assert json_format.MessageToDict(c.values)["t"] == "1969-12-31T23:59:59.999999Z"


def test_typed_filters_and_ordering(rows: collection_pb2_grpc.CollectionServiceStub,
                                    namespace: str) -> None:
    create(rows, namespace, "big", [("name", T.FIELD_TYPE_STRING), ("n", T.FIELD_TYPE_INTEGER),
                                    ("at", T.FIELD_TYPE_TIMESTAMP)])
    create(rows, namespace, "idx", [("n", T.FIELD_TYPE_INTEGER)], indexed=True)
    numbers = [2**53, 2**53 + 1, 2**53 + 2, -2**63, 2**63 - 1, 7]
    data = [{"name": FV(string_value=f"k{i}"), "n": FV(integer_value=n), "at": ts(1000 + i, 500_000)}
            for i, n in enumerate(numbers)]
    ids = insert(rows, namespace, "big", *data, {"name": FV(string_value="other")})
    insert(rows, namespace, "idx", *({"n": FV(integer_value=n)} for n in numbers))

    def names(*filters: T.Filter, order: tuple[T.OrderBy, ...] = ()) -> list[str]:
        return [r.fields["name"].string_value for r in query(rows, namespace, "big", *filters,
                                                             order=order)]

    def values(*filters: T.Filter) -> list[int]:
        return [r.fields["n"].integer_value for r in query(rows, namespace, "idx", *filters)]

    big = 2**53 + 1  # a double cannot tell it from 2**53
    assert names(flt("n", T.FILTER_OPERATOR_EQ, FV(integer_value=big))) == ["k1"]
    assert values(flt("n", T.FILTER_OPERATOR_EQ, FV(integer_value=big))) == [big]
    assert names(flt("n", T.FILTER_OPERATOR_LT, FV(integer_value=big))) == ["k0", "k3", "k5"]
    assert values(flt("n", T.FILTER_OPERATOR_GT, FV(integer_value=big))) == [2**53 + 2, 2**63 - 1]
    assert names(flt("n", T.FILTER_OPERATOR_IN, values=(
        FV(integer_value=big), FV(integer_value=2**63 - 1), FV(integer_value=-2**63)))) == [
        "k1", "k3", "k4"]
    assert values(flt("n", T.FILTER_OPERATOR_IN, values=(FV(integer_value=2**53 + 2),))) == [
        2**53 + 2]
    assert names(flt("n", T.FILTER_OPERATOR_IN)) == []  # in an empty list
    assert names(order=(T.OrderBy(field="n", descending=True),)) == [
        "k4", "k2", "k1", "k0", "k5", "k3", "other"]
    assert names(flt("n", T.FILTER_OPERATOR_IS_NULL, FV(boolean_value=False)),
                 order=(T.OrderBy(field="n"),)) == ["k3", "k5", "k0", "k1", "k2", "k4"]
    # timestamps: a Timestamp, or an RFC 3339 string; microseconds count
    assert names(flt("at", T.FILTER_OPERATOR_GE, ts(1004, 500_000))) == ["k4", "k5"]
    assert names(flt("at", T.FILTER_OPERATOR_GT, ts(1004, 499_999))) == ["k4", "k5"]
    assert names(flt("at", T.FILTER_OPERATOR_GT, ts(1004, 500_999))) == ["k5"]  # µs precision
    assert names(flt("at", T.FILTER_OPERATOR_LT, FV(
        string_value="1970-01-01T01:16:41.500001+01:00"))) == ["k0", "k1"]
    assert names(flt("at", T.FILTER_OPERATOR_IN, values=(ts(1002, 500_000),
                                                         ts(1003, 500_000)))) == [
        "k2", "k3"]
    assert names(flt("name", T.FILTER_OPERATOR_PREFIX, FV(string_value="k")),
                 flt("id", T.FILTER_OPERATOR_GE, FV(integer_value=ids[4]))) == ["k4", "k5"]
    assert names(flt("at", T.FILTER_OPERATOR_IS_NULL, FV(boolean_value=True))) == ["other"]
    assert names(flt("n", T.FILTER_OPERATOR_IS_NULL)) == ["other"]  # unset: is null
    assert names(flt("n", T.FILTER_OPERATOR_NE, FV(integer_value=7)),
                 flt("n", T.FILTER_OPERATOR_LE, FV(integer_value=2**53))) == ["k0", "k3"]
    # pages keep the typed filters
    first = rows.QueryRows(T.QueryRowsRequest(
        namespace=namespace, collection="big", page_size=2,
        filters=[flt("n", T.FILTER_OPERATOR_GE, FV(integer_value=2**53))]))
    rest = rows.QueryRows(T.QueryRowsRequest(
        namespace=namespace, collection="big", page_size=2, page_token=first.next_page_token,
        filters=[flt("n", T.FILTER_OPERATOR_GE, FV(integer_value=2**53))]))
    assert [r.fields["name"].string_value for r in [*first.rows, *rest.rows]] == [
        "k0", "k1", "k2", "k4"]


def test_typed_set_updates(rows: collection_pb2_grpc.CollectionServiceStub,
                           namespace: str) -> None:
    create(rows, namespace, "every", EVERY_TYPE)
    insert(rows, namespace, "every", *({"s": FV(string_value=s), "t": ts(5)} for s in "abc"))

    def update(typed_set: dict[str, FV], *filters: T.Filter) -> int:
        return int(rows.UpdateRows(T.UpdateRowsRequest(
            namespace=namespace, collection="every", typed_set=typed_set,
            filters=filters)).updated)

    assert update({"i": FV(integer_value=2**62 + 1), "j": FV(json_value="[1, 2.0, {}]"),
                   "t": NULL, "r": FV(real_value=1.0)},
                  flt("s", T.FILTER_OPERATOR_IN, values=(FV(string_value="a"),
                                                         FV(string_value="c")))) == 2
    assert update({"b": FV(boolean_value=True)},
                  flt("i", T.FILTER_OPERATOR_EQ, FV(integer_value=2**62 + 1))) == 2
    a, b, c = query(rows, namespace, "every", order=(T.OrderBy(field="s"),))
    assert kinds(a) | {"s": None} == kinds(c) | {"s": None} == {
        "s": None, "i": ("integer_value", 2**62 + 1), "r": ("real_value", 1.0),
        "b": ("boolean_value", True), "j": ("json_value", "[1,2.0,{}]"), "t": ("null_value", None)}
    assert kinds(b)["i"] == ("null_value", None) and kinds(b)["t"][0] == "timestamp_value"


def test_legacy_struct_requests_still_work(rows: collection_pb2_grpc.CollectionServiceStub,
                                           namespace: str) -> None:
    create(rows, namespace, "old", EVERY_TYPE)
    legacy = struct_pb2.Struct()
    legacy.update({"s": "a", "i": 3, "r": 2, "b": True, "j": {"k": [1, 2.5]},
                   "t": "2026-11-22T07:30:00.000001+01:00"})
    ids = rows.InsertRows(T.InsertRowsRequest(namespace=namespace, collection="old",
                                              rows=[legacy, struct_pb2.Struct()])).ids
    in_list = struct_pb2.Value()
    in_list.list_value.values.add().number_value = 3
    (row,) = query(rows, namespace, "old", T.Filter(field="i", op=T.FILTER_OPERATOR_IN,
                                                    value=in_list))
    assert row.id == ids[0] and row.collection == "old"
    assert json_format.MessageToDict(row.values) == {
        "s": "a", "i": 3, "r": 2, "b": True, "j": {"k": [1, 2.5]},
        "t": "2026-11-22T06:30:00.000001Z"}
    assert kinds(row)["i"] == ("integer_value", 3) and kinds(row)["r"] == ("real_value", 2.0)
    assert kinds(row)["j"] == ("json_value", '{"k":[1,2.5]}')
    assert row.fields["t"].timestamp_value.nanos == 1000
    change = struct_pb2.Struct()
    change.update({"i": 4, "t": None})
    assert rows.UpdateRows(T.UpdateRowsRequest(
        namespace=namespace, collection="old", set=change,
        filters=[T.Filter(field="s", op=T.FILTER_OPERATOR_EQ,
                          value=struct_pb2.Value(string_value="a"))])).updated == 1
    (row,) = query(rows, namespace, "old", T.Filter(field="i", op=T.FILTER_OPERATOR_EQ,
                                                    value=struct_pb2.Value(number_value=4)))
    assert kinds(row)["t"] == ("null_value", None)
    # A Struct number cannot carry 2**60 exactly: still refused, pointing at the typed form.
    too_big = struct_pb2.Struct()
    too_big.update({"i": 2**60})
    assert invalid(rows.InsertRows, T.InsertRowsRequest(
        namespace=namespace, collection="old", rows=[too_big])).startswith(
        "rows[0].i :: rows[0].i: expected a whole number")


BAD_VALUES = [
    ("s", FV(integer_value=5), "expected a string for a string field, got the integer 5"),
    ("s", FV(json_value='"x"'), "got JSON text \"x\""),
    ("i", FV(real_value=4.0), "whole number within the int64 range"),
    ("i", FV(string_value="2"), "got the string '2'"),
    ("i", FV(boolean_value=True), "got the boolean true"),
    ("r", FV(string_value="0.5"), "expected a finite number for a real field"),
    ("r", FV(real_value=math.nan), "got the real number nan"),
    ("b", FV(integer_value=1), "expected true or false"),
    ("j", ts(0), "got the timestamp 1970-01-01T00:00:00+00:00"),
    ("t", FV(integer_value=0), "expected a timestamp, or an RFC 3339 time with a zone"),
    ("t", FV(string_value="2026-11-22T07:30:00"), "an RFC 3339 time with a zone"),
    ("t", FV(string_value="20261122T073000Z"), "an RFC 3339 time with a zone"),
    ("t", FV(string_value="0001-01-01T00:00:00+01:00"), "outside years 0001 to 9999"),
    ("t", FV(boolean_value=False), "got the boolean false"),
    ("j", FV(json_value='{"scores": [1, 2, NaN]}'), "typed_rows[1].j.scores[2]"),
    ("j", FV(json_value='{"a": 1e999}'), "typed_rows[1].j.a"),
    ("j", FV(json_value='[9223372036854775808]'), "typed_rows[1].j[0]: is an integer outside"),
    ("j", FV(json_value="{nope"), "typed_rows[1].j: is not valid JSON"),
    ("t", ts(0, -1), "typed_rows[1].t: nanos must be in [0, 1e9)"),
    ("t", ts(0, 1_000_000_000), "typed_rows[1].t: nanos must be in [0, 1e9)"),
    ("t", ts(253402300800), "typed_rows[1].t: is outside years 0001 to 9999"),
    ("t", ts(-62135596801), "typed_rows[1].t: is outside years 0001 to 9999"),
    ("nope", FV(integer_value=1), "typed_rows[1].nope: is not a field"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_VALUES,
                         ids=[f"{i}-{f}" for i, (f, _, _) in enumerate(BAD_VALUES)])
def test_typed_values_of_the_wrong_kind_name_the_row_and_field(
        rows: collection_pb2_grpc.CollectionServiceStub, namespace: str, field: str, value: FV,
        message: str) -> None:
    create(rows, namespace, "every", EVERY_TYPE)
    error = invalid(rows.InsertRows, T.InsertRowsRequest(
        namespace=namespace, collection="every",
        typed_rows=[T.Row(fields={"s": FV(string_value="ok")}), T.Row(fields={field: value})]))
    assert error.split(" :: ")[0].startswith(f"typed_rows[1].{field}") and message in error
    assert query(rows, namespace, "every") == []  # all or nothing
    set_error = invalid(rows.UpdateRows, T.UpdateRowsRequest(
        namespace=namespace, collection="every", typed_set={field: value}))
    assert set_error.startswith(f"typed_set.{field}")


def test_bad_typed_filters_and_legacy_with_typed(
        rows: collection_pb2_grpc.CollectionServiceStub, namespace: str) -> None:
    create(rows, namespace, "every", EVERY_TYPE, required=False)
    legacy = struct_pb2.Struct()
    legacy.update({"s": "x"})
    typed = T.Row(fields={"s": FV(string_value="x")})
    one = FV(integer_value=1)

    def query_error(*filters: T.Filter) -> str:
        return invalid(rows.QueryRows, T.QueryRowsRequest(
            namespace=namespace, collection="every", filters=filters))

    assert invalid(rows.InsertRows, T.InsertRowsRequest(
        namespace=namespace, collection="every", rows=[legacy], typed_rows=[typed])
    ).startswith("typed_rows :: typed_rows: give rows or typed_rows, not both")
    assert invalid(rows.UpdateRows, T.UpdateRowsRequest(
        namespace=namespace, collection="every", set=legacy, typed_set={"s": one})
    ).startswith("typed_set :: typed_set: give set or typed_set, not both")
    both = T.Filter(field="i", op=T.FILTER_OPERATOR_EQ, value=struct_pb2.Value(number_value=1),
                    typed_value=one)
    assert query_error(both).startswith("filters[0] :: filters[0]: give value or typed_value")
    both_in = T.Filter(field="i", op=T.FILTER_OPERATOR_IN, value=struct_pb2.Value(
        list_value=struct_pb2.ListValue()), typed_values=[one])
    assert query_error(both_in).startswith("filters[0] :: ")
    assert query_error(flt("i", T.FILTER_OPERATOR_IN, one, (one,))).startswith(
        "filters[0] :: filters[0]: give typed_value or typed_values, not both")
    assert query_error(flt("i", T.FILTER_OPERATOR_EQ, values=(one,))).startswith(
        "filters[0].typed_values :: ")
    assert query_error(flt("i", T.FILTER_OPERATOR_IN, one)).startswith(
        "filters[0].typed_value :: ")
    assert query_error(flt("i", T.FILTER_OPERATOR_EQ, FV(real_value=1.0))).startswith(
        "filters[0].typed_value :: filters[0].typed_value: expected a whole number")
    assert query_error(flt("i", T.FILTER_OPERATOR_IN, values=(one, FV(string_value="2")))
                       ).startswith("filters[0].typed_values[1] :: ")
    assert query_error(flt("t", T.FILTER_OPERATOR_LT, ts(0, -5))).startswith(
        "filters[0].typed_value :: filters[0].typed_value: nanos must be in [0, 1e9)")
    assert query_error(flt("i", T.FILTER_OPERATOR_EQ, NULL)).startswith(
        "filters[0].typed_value :: filters[0].typed_value: is null: use the is_null operator")
    assert query_error(flt("j", T.FILTER_OPERATOR_EQ, FV(json_value="1"))).startswith(
        "filters[0].typed_value :: ")
    assert query_error(flt("i", T.FILTER_OPERATOR_IS_NULL, one)).startswith(
        "filters[0].typed_value :: ")


@pytest.mark.parametrize("name", ["rowid", "oid", "_rowid_"])
def test_sqlite_rowid_aliases_are_not_field_names(
        rows: collection_pb2_grpc.CollectionServiceStub, namespace: str, name: str) -> None:
    field = T.Field(name=name, type=T.FIELD_TYPE_STRING)
    assert invalid(rows.CreateCollection, T.CreateCollectionRequest(
        namespace=namespace, name="aliases", fields=[field])).startswith("fields[0].name :: ")
    create(rows, namespace, "aliases", [("s", T.FIELD_TYPE_STRING)])
    assert invalid(rows.AddField, T.AddFieldRequest(
        namespace=namespace, collection="aliases", field=field)).startswith("field.name :: ")


def test_filters_are_capped_so_the_sql_always_compiles(
        rows: collection_pb2_grpc.CollectionServiceStub, namespace: str) -> None:
    create(rows, namespace, "capped", [("i", T.FIELD_TYPE_INTEGER)])
    insert(rows, namespace, "capped", {"i": FV(integer_value=1)})
    one = flt("i", T.FILTER_OPERATOR_GE, FV(integer_value=0))
    assert len(query(rows, namespace, "capped", *[one] * 64)) == 1  # the most allowed
    many = [one] * 1000
    for call, request in [
        (rows.QueryRows, T.QueryRowsRequest(namespace=namespace, collection="capped",
                                            filters=many)),
        (rows.UpdateRows, T.UpdateRowsRequest(namespace=namespace, collection="capped",
                                              filters=many, typed_set={"i": FV(integer_value=2)})),
        (rows.DeleteRows, T.DeleteRowsRequest(namespace=namespace, collection="capped",
                                              filters=many)),
    ]:
        assert invalid(call, request).startswith("filters :: filters: holds 1000 filters")
    in_list = flt("i", T.FILTER_OPERATOR_IN, values=tuple(FV(integer_value=v)
                                                          for v in range(1000)))
    assert len(query(rows, namespace, "capped", *[in_list] * 10)) == 1  # 10,000 values
    assert invalid(rows.QueryRows, T.QueryRowsRequest(
        namespace=namespace, collection="capped", filters=[in_list] * 11)
    ).startswith("filters :: filters: the in lists hold 11000 values")
    order = T.OrderBy(field="i")
    assert invalid(rows.QueryRows, T.QueryRowsRequest(
        namespace=namespace, collection="capped", order_by=[order] * 1000)
    ).startswith("order_by :: ")
