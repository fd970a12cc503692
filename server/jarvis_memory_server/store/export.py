"""Export and import of user data as JSON Lines: the backend-neutral way data moves.

A file is a header line, then one line per row, parents before children::

    {"format": "jarvis-memory-export", "version": 1, "schema": 11, "revision": 812,
     "namespaces": ["default"]}
    {"kind": "memory", "id": 1, "namespace": "default", ..., "embedding": [0.1, 0.5]}

Columns keep their stored names and values: times are integer microseconds (UTC), booleans
JSON booleans, content hashes hex, stored JSON documents embedded as JSON (ints stay ints,
``4.0`` stays a float, keys keep their order) and embeddings lists of floats (float32 values,
exact). The change log, the search indexes (rebuilt from the rows) and API tokens
(credentials) are not exported; state entries already expired are left out.

Import replays a file into a database in one transaction, keeping ids, timestamps,
revisions and counts. A row already present and equal is skipped (memories: any memory with
the same (namespace, content hash)), so importing a file twice changes nothing; a row that
conflicts with a present one (same id or natural key, other content) aborts the whole import.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import apsw
import psycopg

from jarvis_memory_server.errors import JarvisError
from jarvis_memory_server.store import fulltext, models
from jarvis_memory_server.store.backend import Connection, SearchStore
from jarvis_memory_server.store.collections import (
    Column,
    ids_continue_sql,
    quote,
    table,
    table_statements,
)
from jarvis_memory_server.store.postgres import SCHEMA_TABLE, PgConnection
from jarvis_memory_server.store.search import MEMORIES, MESSAGES, dimension_of
from jarvis_memory_server.store.search import SearchStore as SqliteSearchStore
from jarvis_memory_server.store.writes import WriteTxn

FORMAT = "jarvis-memory-export"
VERSION = 1

# kind -> (table, JSON columns, boolean columns, bytes columns), in replay order.
TABLES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "embedding_space": ("embedding_spaces", (), (), ()),
    "memory": ("memories", ("attributes",), ("stale",), ("content_hash",)),
    "session": ("sessions", ("metadata",), (), ()),
    "message": ("messages", ("tool_calls",), (), ()),
    "session_event": ("session_events", ("data",), (), ()),
    "event": ("events", ("details",), ("resolved",), ()),
    "snapshot": ("snapshots", ("data",), (), ()),
    "preference": ("preferences", ("value",), (), ()),
    "state": ("state", ("value",), (), ()),
    "tool_call": ("tool_calls", ("payload",), (), ()),
    "planning_cycle": ("planning_cycles", ("payload",), (), ()),
    "decision": ("decisions", ("reasoning",), (), ()),
    "collection": ("collections", ("fields",), (), ()),
}
# Columns whose name would collide with a line's own "kind": their name in the file.
RENAMED = {("snapshot", "kind"): "snapshot_kind"}
ROW_KIND = "row"  # a row of a collection: {"kind", "namespace", "collection", "id", "values"}
EMBEDDINGS = {"memory": ("memory_embeddings", "memory_id"),
              "message": ("message_embeddings", "message_id")}
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class ImportDataError(Exception):
    """The file cannot be imported: one line saying why (nothing was written)."""


_UNRENAMED = {(kind, new): old for (kind, old), new in RENAMED.items()}


def _columns(conn: Connection, name: str) -> list[str]:
    if isinstance(conn, PgConnection):
        return [str(r[0]) for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position", (name,))]
    return [str(r[1]) for r in conn.execute(f'PRAGMA table_info("{name}")')]


def _schema_version(conn: Connection) -> int:
    if isinstance(conn, PgConnection):
        return int(conn.execute(f'SELECT max("version") FROM "{SCHEMA_TABLE}"').fetchone()[0])
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _vector(blob: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))


def _pack(values: list[Any]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def _to_json(kind: str, names: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    _, json_columns, bool_columns, bytes_columns = TABLES[kind]
    out: dict[str, Any] = {"kind": kind}
    for name, value in zip(names, row, strict=True):
        if value is not None:
            if name in json_columns:
                value = json.loads(value)
            elif name in bool_columns:
                value = bool(value)
            elif name in bytes_columns:
                value = bytes(value).hex()
        out[RENAMED.get((kind, name), name)] = value
    return out


def _field_types(fields_json: str) -> dict[str, str]:
    return {f["name"]: f["type"] for f in json.loads(fields_json)}


def _cell_to_json(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "json":
        return json.loads(value)
    if kind == "boolean":
        return bool(value)
    if kind == "real":
        return float(value)
    return value


def _cell_from_json(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "json":
        return _ENCODER.encode(value)
    if kind == "boolean":
        return int(bool(value))
    return value


def export_lines(conn: Connection, namespace: str | None) -> Iterator[str]:
    """Yield the lines of an export (call inside one read transaction: a consistent snapshot)."""
    where = " WHERE namespace = :ns" if namespace is not None else ""
    params = {"ns": namespace}
    namespaces: set[str] = set()
    for name, *_ in TABLES.values():
        namespaces |= {str(r[0]) for r in conn.execute(
            f'SELECT DISTINCT namespace FROM "{name}"{where}', params)}
    schema = _schema_version(conn)
    revision = int(conn.execute(
        "SELECT coalesce(max(revision), 0) FROM changes").fetchone()[0])
    yield _ENCODER.encode({"format": FORMAT, "version": VERSION, "schema": schema,
                           "revision": revision, "namespaces": sorted(namespaces)})
    now = time.time_ns() // 1000
    for kind, (name, *_) in TABLES.items():
        names = _columns(conn, name)
        select = ", ".join(f"t.{quote_any(n)}" for n in names)
        sql = f'SELECT {select} FROM "{name}" t{where.replace("namespace", "t.namespace")}'
        if kind == "state":
            sql += (" AND" if where else " WHERE") + (
                " (t.expires_at IS NULL OR t.expires_at > :now)")
        if kind in EMBEDDINGS:
            emb_table, key = EMBEDDINGS[kind]
            sql = sql.replace(f' FROM "{name}" t', f' , e.vector FROM "{name}" t '
                              f"LEFT JOIN {emb_table} e ON e.{key} = t.id")
        order = "t.namespace" if kind == "embedding_space" else "t.id"
        for row in conn.execute(sql + f" ORDER BY {order}", {**params, "now": now}):
            out = _to_json(kind, names, tuple(row[:len(names)]))
            if kind in EMBEDDINGS:
                out["embedding"] = None if row[-1] is None else _vector(row[-1])
            yield _ENCODER.encode(out)
        if kind == "collection":
            yield from _collection_rows(conn, where, params)


def quote_any(name: str) -> str:
    """Quote a column name read from the schema."""
    return '"' + name.replace('"', '""') + '"'


def _collection_rows(conn: Connection, where: str, params: dict[str, Any]) -> Iterator[str]:
    defs: list[Any] = conn.execute(
        f"SELECT id, namespace, name, fields FROM collections{where} ORDER BY id", params
    ).fetchall()
    for def_id, namespace, name, fields_json in defs:
        types = _field_types(fields_json)
        names = [n for n in _columns(conn, f"collection_{int(def_id)}") if n != "id"]
        select = ", ".join(["id", *map(quote, names)])
        for row in conn.execute(f"SELECT {select} FROM {table(def_id)} ORDER BY id"):
            values = {n: _cell_to_json(types.get(n, ""), v)
                      for n, v in zip(names, row[1:], strict=True)}
            yield _ENCODER.encode({"kind": ROW_KIND, "namespace": namespace, "collection": name,
                                   "id": row[0], "values": values})


def write_export(conn: Connection, out: TextIO, namespace: str | None) -> int:
    """Write an export of ``conn``'s database to ``out`` in one read transaction; return rows."""
    count = -1
    # One snapshot for every table (PostgreSQL's default would take one per statement).
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
                 if isinstance(conn, PgConnection) else "BEGIN")
    try:
        for line in export_lines(conn, namespace):
            out.write(line + "\n")
            count += 1
    finally:
        conn.execute("COMMIT")
    return count


# -- import ---------------------------------------------------------------------------------


Lines = list[tuple[int, dict[str, Any]]]


def parse_lines(lines: Iterable[str], schema: int) -> tuple[dict[str, Any], Lines]:
    """Read and check every line first; raise ImportDataError naming the first bad line."""
    header: dict[str, Any] | None = None
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ImportDataError(f"line {number}: not valid JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise ImportDataError(f"line {number}: not a JSON object")
        if header is None:
            if value.get("format") != FORMAT or value.get("version") != VERSION:
                raise ImportDataError(f"line {number}: not a {FORMAT} version {VERSION} header")
            if not isinstance(value.get("schema"), int) or value["schema"] > schema:
                raise ImportDataError(f"line {number}: schema {value.get('schema')} is newer than "
                                   f"this database's ({schema})")
            header = value
            continue
        kind = value.get("kind")
        if kind != ROW_KIND and kind not in TABLES:
            raise ImportDataError(f"line {number}: unknown kind {str(kind)[:64]!r}")
        if kind == ROW_KIND and not (isinstance(value.get("values"), dict)
                                     and isinstance(value.get("collection"), str)):
            raise ImportDataError(f"line {number}: a row needs 'collection' and 'values'")
        if kind != "embedding_space" and not isinstance(value.get("id"), int):
            raise ImportDataError(f"line {number}: {kind} has no integer 'id'")
        rows.append((number, value))
    if header is None:
        raise ImportDataError("the input is empty: no header line")
    return header, rows


class Importer:
    """Replays parsed lines on the writer connection, inside the caller's transaction."""

    def __init__(self, conn: Connection, search: SearchStore) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        self.search = search
        self.columns = {kind: _columns(conn, name) for kind, (name, *_) in TABLES.items()}
        self.inserted: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.highest = 0

    def run(self, header: dict[str, Any], rows: list[tuple[int, dict[str, Any]]]) -> None:
        """Import every row, then index the new ones and move the revision counter."""
        txn = WriteTxn(self.cursor, 0)
        for number, line in rows:
            try:
                self._one(txn, line)
            except ImportDataError as exc:
                raise ImportDataError(f"line {number}: {exc}") from None
            except (apsw.ConstraintError, apsw.SQLError, psycopg.Error, JarvisError, ValueError,
                    TypeError, KeyError, struct.error, OverflowError) as exc:
                raise ImportDataError(f"line {number}: {line.get('kind')} {line.get('id', '')} "
                                   f"cannot be imported: {exc}") from None
        if isinstance(self.conn, PgConnection):
            # Rows came with their ids: new ones must follow them, not restart at 1.
            for model in models.ALL_MODELS:
                if isinstance(model._meta.primary_key, models.AutoIncrementField):
                    name = model._meta.table_name
                    self.cursor.execute(
                        f"SELECT setval(pg_get_serial_sequence('\"{name}\"', 'id'), "
                        f'(SELECT coalesce(max("id"), 0) + 1 FROM "{name}"), false)')
            for (def_id,) in self.cursor.execute("SELECT id FROM collections").fetchall():
                self.cursor.execute(ids_continue_sql("postgresql", int(def_id)) or "")
        else:
            fulltext.index_pending(self.cursor)  # type: ignore[arg-type] # SQLite's cursor
            SqliteSearchStore.check(self.conn)  # type: ignore[arg-type]
        target = max(self.highest, int(header.get("revision") or 0))
        current = int(self.conn.execute(
            "SELECT coalesce(max(revision), 0) FROM changes").fetchone()[0])
        if target > current:  # a marker no watcher sees (no namespace is empty)
            self.cursor.execute(
                "INSERT INTO changes (revision, namespace, kind, key, operation, created_at, "
                "resource) VALUES (?, '', 'import', 'import', 'create', ?, NULL)",
                (target, time.time_ns() // 1000))

    def _count(self, kind: str, inserted: bool) -> None:
        counts = self.inserted if inserted else self.skipped
        counts[kind] = counts.get(kind, 0) + 1

    def _one(self, txn: WriteTxn, line: dict[str, Any]) -> None:
        kind = line["kind"]
        if isinstance(line.get("revision"), int):
            self.highest = max(self.highest, line["revision"])
        if kind == ROW_KIND:
            self._row(line)
            return
        name, json_columns, bool_columns, bytes_columns = TABLES[kind]
        columns = self.columns[kind]
        values: dict[str, Any] = {}
        for key, value in line.items():
            if key in ("kind", "embedding"):
                continue
            column = _UNRENAMED.get((kind, key), key)
            if column not in columns:
                raise ImportDataError(f"{kind} has no column {column[:64]!r}")
            if value is not None:
                if column in json_columns:
                    value = _ENCODER.encode(value)
                elif column in bool_columns:
                    value = int(bool(value))
                elif column in bytes_columns:
                    value = bytes.fromhex(value)
            values[column] = value
        if kind == "embedding_space":
            present = self.search.dimension(self.cursor, values["namespace"])
            if present is None:
                self.search.fix_dimension(txn, values["namespace"], int(values["dimension"]))
            elif present != values["dimension"]:
                raise ImportDataError(f"namespace {values['namespace']!r} has embeddings of "
                                   f"dimension {present}, not {values['dimension']}")
            self._count(kind, present is None)
            return
        if kind == "memory":
            found = self.cursor.execute(
                "SELECT id FROM memories WHERE namespace = ? AND content_hash = ?",
                (values["namespace"], values["content_hash"])).fetchone()
            if found is not None:  # deduplicated by content, as AddMemory does
                self._count(kind, False)
                return
        existing = self.cursor.execute(
            f'SELECT {", ".join(map(quote_any, columns))} FROM "{name}" WHERE id = ?',
            (line["id"],)).fetchone()
        if existing is not None:
            present_row = _to_json(kind, columns, tuple(existing))
            if kind in EMBEDDINGS:
                present_row["embedding"] = self._embedding(kind, line["id"])
            if any(_ENCODER.encode(present_row.get(c)) != _ENCODER.encode(line.get(c))
                   for c in line if c != "kind"):
                raise ImportDataError(f"{kind} {line['id']} differs from the one in the database")
            self._count(kind, False)
            return
        names = list(values)
        self.cursor.execute(
            f'INSERT INTO "{name}" ({", ".join(map(quote_any, names))}) '
            f'VALUES ({", ".join("?" * len(names))})', [values[n] for n in names])
        if kind == "collection":
            self._create_table(int(values["id"]), values["fields"])
        if kind in EMBEDDINGS and line.get("embedding") is not None:
            vector = _pack(line["embedding"])
            namespace = values["namespace"]
            present = self.search.dimension(self.cursor, namespace)
            if present is None:
                self.search.fix_dimension(txn, namespace, dimension_of(vector))
            elif present != dimension_of(vector):
                raise ImportDataError(f"{kind} {line['id']}: an embedding of dimension "
                                   f"{dimension_of(vector)} in a namespace of dimension {present}")
            index = MEMORIES if kind == "memory" else MESSAGES
            self.search.put_embedding(txn, index, namespace, int(line["id"]), vector)
        self._count(kind, True)

    def _embedding(self, kind: str, row_id: int) -> list[float] | None:
        emb_table, key = EMBEDDINGS[kind]
        found = self.cursor.execute(f"SELECT vector FROM {emb_table} WHERE {key} = ?",
                                    (row_id,)).fetchone()
        return None if found is None else _vector(found[0])

    def _create_table(self, def_id: int, fields_json: str) -> None:
        columns = [Column(f["name"], f["type"], bool(f.get("required")), bool(f.get("indexed")),
                          bool(f.get("unique"))) for f in json.loads(fields_json)]
        kind = "postgresql" if isinstance(self.conn, PgConnection) else "sqlite"
        for statement in table_statements(kind, def_id, columns):
            self.cursor.execute(statement)

    def _row(self, line: dict[str, Any]) -> None:
        found = self.cursor.execute(
            "SELECT id, fields FROM collections WHERE namespace = ? AND name = ?",
            (line.get("namespace"), line["collection"])).fetchone()
        if found is None:
            raise ImportDataError(f"row {line['id']}: no collection {line['collection']!r} "
                               f"in namespace {line.get('namespace')!r}")
        def_id, fields_json = int(found[0]), str(found[1])
        types = _field_types(fields_json)
        values: dict[str, Any] = line["values"]
        for name in values:
            if name not in types:
                raise ImportDataError(f"row {line['id']}: {line['collection']!r} has no field "
                                   f"{name[:64]!r}")
        names = list(types)
        select = ", ".join(["id", *map(quote, names)]) if names else "id"
        existing = self.cursor.execute(f"SELECT {select} FROM {table(def_id)} WHERE id = ?",
                                       (line["id"],)).fetchone()
        if existing is not None:
            present = {n: _cell_to_json(types[n], v) for n, v in zip(names, existing[1:],
                                                                     strict=True)}
            if any(_ENCODER.encode(present.get(n)) != _ENCODER.encode(values.get(n))
                   for n in names):
                raise ImportDataError(f"row {line['id']} of {line['collection']!r} differs from "
                                   "the one in the database")
            self._count(ROW_KIND, False)
            return
        columns = ["id", *values]
        self.cursor.execute(
            f"INSERT INTO {table(def_id)} ({', '.join(map(quote, columns))}) "
            f"VALUES ({', '.join('?' * len(columns))})",
            [line["id"], *(_cell_from_json(types[n], v) for n, v in values.items())])
        self._count(ROW_KIND, True)
