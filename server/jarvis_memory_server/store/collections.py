"""Runtime collections: the catalog, and the DDL and SQL of each collection's own table.

Collection N's rows live in the table ``collection_N``: no user-chosen name ever reaches
SQL as a table name. Field names do reach SQL as column names, so the service layer checks
them against ``FIELD_NAME`` first and this module always quotes them; values are always bound
parameters. This is the one module that writes SQL by hand, because the tables it queries
are defined at run time rather than by a Peewee model.

The same SQL runs on both backends but for a few words of DDL and ordering (``Dialect``). On
PostgreSQL the tables hold the values SQLite holds (booleans 0 and 1, timestamps as integer
microseconds, JSON as text) and compare text by code point as SQLite does, so filters, orders
and unique fields behave the same; and since a statement that fails there aborts the whole
write batch, a statement that may fail on a unique field runs inside a savepoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

import apsw
import peewee as pw

from jarvis_memory_server.errors import AlreadyExists, InvalidArgument
from jarvis_memory_server.store.backend import Database, compile_sql
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.models import CollectionDef
from jarvis_memory_server.store.writes import WriteTxn

P = pw.SQL
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
SQL_TYPES = {"string": "TEXT", "integer": "INTEGER", "real": "REAL", "boolean": "INTEGER",
             "json": "TEXT", "timestamp": "INTEGER"}  # SQLite's column types
FIELD_TYPES = tuple(SQL_TYPES)
_ROWS_PER_INSERT = 200  # a multi-row INSERT binds at most 200 x 200 fields = 40000 values
OPERATORS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


class Dialect(NamedTuple):
    """What differs between the backends in this module's SQL."""

    id_column: str  # the definition of the "id" column
    types: dict[str, str]  # field type -> column type
    true: str  # a condition that always holds, and one that never does
    false: str
    ascending: str  # ORDER BY directions: NULLs before every value, as on SQLite
    descending: str
    savepoints: bool  # whether a statement that may fail needs one (see module docstring)


# "C": text compares by code point, as SQLite's BINARY does (prefix ranges, order, unique).
_PG_TEXT = 'TEXT COLLATE "C"'
DIALECTS = {
    "sqlite": Dialect('"id" INTEGER PRIMARY KEY AUTOINCREMENT', SQL_TYPES, "1", "0",
                      "ASC", "DESC", savepoints=False),
    "postgresql": Dialect(
        '"id" BIGSERIAL PRIMARY KEY',
        {"string": _PG_TEXT, "integer": "BIGINT", "real": "DOUBLE PRECISION",
         "boolean": "SMALLINT", "json": _PG_TEXT, "timestamp": "BIGINT"},
        # TRUE is a keyword there; SQLite would read it as a column named "true", if any.
        "TRUE", "FALSE", "ASC NULLS FIRST", "DESC NULLS LAST", savepoints=True),
}


class DefRow(NamedTuple):
    """A catalog entry (fields as JSON text)."""

    id: int
    namespace: str
    name: str
    fields: str
    created_at: int
    revision: int


class RowChange(NamedTuple):
    """A row as the change feed records it.

    ``cells`` holds a (field name, field type, stored value) for every field of the collection.
    """

    collection: str
    id: int
    cells: list[tuple[str, str, Any]]


def _schema(definition: DefRow) -> list[tuple[str, str]]:
    """(name, type) of each field of a catalog entry, in definition order."""
    return [(f["name"], f["type"]) for f in json.loads(definition.fields)]


class Column(NamedTuple):
    """A field as the store needs it."""

    name: str
    type: str
    required: bool
    indexed: bool
    unique: bool


_DEF_COLUMNS = tuple(getattr(CollectionDef, name) for name in DefRow._fields)
_NAME = (CollectionDef.namespace == P(":namespace")) & (CollectionDef.name == P(":name"))
_INSERT_DEF = compile_sql(
    CollectionDef.insert({
        CollectionDef.namespace: P(":namespace"), CollectionDef.name: P(":name"),
        CollectionDef.fields: P(":fields"), CollectionDef.created_at: P(":now"),
        CollectionDef.revision: P(":revision"),
    }).returning(*_DEF_COLUMNS)
)
_GET_DEF = compile_sql(CollectionDef.select(*_DEF_COLUMNS).where(_NAME))
_SET_FIELDS = compile_sql(
    CollectionDef.update({CollectionDef.fields: P(":fields"),
                          CollectionDef.revision: P(":revision")})
    .where(CollectionDef.id == P(":id")).returning(*_DEF_COLUMNS)
)
_DELETE_DEF = compile_sql(CollectionDef.delete().where(CollectionDef.id == P(":id")))
_DEF_EXISTS = compile_sql(
    CollectionDef.select(CollectionDef.id).where(CollectionDef.id == P(":id")))
_PAGE_DEFS = compile_sql(
    CollectionDef.select(*_DEF_COLUMNS)
    .where((CollectionDef.namespace == P(":namespace")) & (CollectionDef.name > P(":after")))
    .order_by(CollectionDef.name).limit(P(":limit"))
)


def quote(name: str) -> str:
    """Quote a column name that was checked against FIELD_NAME (or is "id")."""
    if name != "id" and FIELD_NAME.fullmatch(name) is None:  # defence in depth
        raise InvalidArgument("field", f"{name[:64]!r} is not a valid field name")
    return f'"{name}"'


def table(def_id: int) -> str:
    """The quoted table name of a collection."""
    return f'"collection_{int(def_id)}"'


def _column_sql(dialect: Dialect, column: Column) -> str:
    return f"{quote(column.name)} {dialect.types[column.type]}" + (
        " NOT NULL" if column.required else ""
    )


def table_statements(kind: str, def_id: int, columns: Sequence[Column]) -> list[str]:
    """The DDL of a collection's table and its indexes on a backend ("sqlite", "postgresql")."""
    dialect = DIALECTS[kind]
    definitions = ", ".join([dialect.id_column, *(_column_sql(dialect, c) for c in columns)])
    return [f"CREATE TABLE {table(def_id)} ({definitions})",
            *filter(None, (_index_sql(kind, def_id, c) for c in columns))]


def ids_continue_sql(kind: str, def_id: int) -> str | None:
    """The statement that makes new ids follow rows inserted with ids given (an import).

    SQLite's AUTOINCREMENT follows them by itself; PostgreSQL's sequence does not.
    """
    if kind != "postgresql":
        return None
    return (f"SELECT setval(pg_get_serial_sequence('{table(def_id)}', 'id'), "
            f'(SELECT coalesce(max("id"), 0) + 1 FROM {table(def_id)}), false)')


def _index_sql(kind: str, def_id: int, column: Column) -> str | None:
    if not (column.unique or column.indexed):
        return None
    index = "UNIQUE INDEX" if column.unique else "INDEX"
    # PostgreSQL's index names share the schema's namespace and 63 bytes: it picks them.
    name = "" if kind == "postgresql" else f'"collection_{int(def_id)}_{column.name}" '
    return f"CREATE {index} {name}ON {table(def_id)} ({quote(column.name)})"


class Where(NamedTuple):
    """Compiled filters: an SQL condition over quoted columns and its bound parameters."""

    sql: str
    params: dict[str, Any]


def compile_filters(filters: Sequence[tuple[str, str, Any]], kind: str = "sqlite") -> Where:
    """Filters (column, operator, stored value) -> Where, in the SQL of a backend.

    Operators: eq ne lt le gt ge (one value), in (a list), prefix (a string), is_null (a bool).
    """
    dialect = DIALECTS[kind]
    parts, params = [dialect.true], {}
    for i, (column, op, value) in enumerate(filters):
        col = quote(column)
        if op in OPERATORS:
            parts.append(f"{col} {OPERATORS[op]} :v{i}")
            params[f"v{i}"] = value
        elif op == "in":
            names = [f"v{i}_{j}" for j in range(len(value))]
            parts.append(f"{col} IN ({', '.join(':' + n for n in names)})" if names
                         else dialect.false)
            params.update(zip(names, value, strict=True))
        elif op == "prefix":  # a range, so that an index on the column serves it
            parts.append(f"{col} >= :v{i} AND {col} < :v{i}_end")
            params[f"v{i}"], params[f"v{i}_end"] = value, value + "\U0010ffff"
        else:  # is_null
            parts.append(f"{col} IS {'' if value else 'NOT '}NULL")
    return Where(" AND ".join(parts), params)


class CollectionStore:
    """The catalog and the tables of runtime collections."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._dialect = DIALECTS[db.kind]

    def where(self, filters: Sequence[tuple[str, str, Any]]) -> Where:
        """Compile filters (see compile_filters) for this database."""
        return compile_filters(filters, self._db.kind)

    # -- catalog and DDL --------------------------------------------------------------------

    def get_def(self, namespace: str, name: str, txn: WriteTxn | None = None) -> DefRow | None:
        """Return a catalog entry (through the write batch when ``txn`` is given)."""
        with storage_errors():
            source = txn.cursor if txn is not None else self._db.reader
            row = source.execute(_GET_DEF, {"namespace": namespace, "name": name}).fetchone()
        return None if row is None else DefRow._make(row)

    def page_defs(self, namespace: str, after: str, limit: int) -> list[DefRow]:
        """Return catalog entries by name after ``after``."""
        params = {"namespace": namespace, "after": after, "limit": limit}
        with storage_errors():
            return [DefRow._make(r) for r in self._db.reader.execute(_PAGE_DEFS, params)]

    def create(
        self, txn: WriteTxn, namespace: str, name: str, fields_json: str,
        columns: Sequence[Column], now: int,
    ) -> DefRow:
        """Add a catalog entry and create its table and indexes. Raises AlreadyExists."""
        params = {"namespace": namespace, "name": name, "fields": fields_json, "now": now,
                  "revision": txn.next_revision}
        exists = AlreadyExists(f"collection {name!r} already exists in namespace {namespace!r}",
                               reason="COLLECTION_EXISTS")
        # Checked first: on PostgreSQL the failed INSERT would abort the whole batch.
        if self.get_def(namespace, name, txn) is not None:
            raise exists
        try:
            row = DefRow._make(txn.cursor.execute(_INSERT_DEF, params).fetchone() or ())
        except apsw.ConstraintError as exc:
            raise exists from exc
        for statement in table_statements(self._db.kind, row.id, columns):
            txn.cursor.execute(statement)
        txn.record(namespace, "collection", name, "create", now, row)
        return row

    def add_column(
        self, txn: WriteTxn, definition: DefRow, fields_json: str, column: Column, now: int
    ) -> DefRow:
        """Add a column (and its index) to a collection's table and catalog entry."""
        txn.cursor.execute(f"ALTER TABLE {table(definition.id)} "
                           f"ADD COLUMN {_column_sql(self._dialect, column)}")
        index = _index_sql(self._db.kind, definition.id, column)
        if index is not None:
            txn.cursor.execute(index)
        updated = DefRow._make(txn.cursor.execute(
            _SET_FIELDS, {"id": definition.id, "fields": fields_json,
                          "revision": txn.next_revision}).fetchone() or ())
        txn.record(definition.namespace, "collection", definition.name, "update", now, updated)
        return updated

    def drop(self, txn: WriteTxn, definition: DefRow, now: int) -> None:
        """Drop a collection's table and catalog entry."""
        txn.cursor.execute(f"DROP TABLE {table(definition.id)}")
        txn.cursor.execute(_DELETE_DEF, {"id": definition.id})
        txn.record(definition.namespace, "collection", definition.name, "delete", now)

    @contextmanager
    def _may_fail(self, txn: WriteTxn, definition: DefRow) -> Iterator[None]:
        """Run statements that a unique field may refuse so that a refusal undoes just them.

        SQLite undoes the failed statement itself; PostgreSQL aborts the whole transaction,
        the other writes of the batch with it, unless the statement ran in a savepoint.
        """
        if not (self._dialect.savepoints
                and any(f.get("unique") for f in json.loads(definition.fields))):
            yield
            return
        txn.cursor.execute("SAVEPOINT collection_write")
        try:
            yield
        except (apsw.ConstraintError, InvalidArgument):
            txn.cursor.execute("ROLLBACK TO SAVEPOINT collection_write")
            raise
        txn.cursor.execute("RELEASE SAVEPOINT collection_write")

    # -- rows -------------------------------------------------------------------------------

    def insert(
        self, txn: WriteTxn, definition: DefRow, rows: Sequence[dict[str, Any]], now: int
    ) -> list[int]:
        """Insert rows (column -> stored value); return their ids, in order.

        Consecutive rows with the same columns go in one multi-row INSERT. Raises
        AlreadyExists (UNIQUE_VIOLATION) when a row repeats the value of a unique field.
        """
        ids: list[int] = []
        start = 0
        try:
            with self._may_fail(txn, definition):
                while start < len(rows):
                    names = list(rows[start])
                    end = start + 1
                    while (end < len(rows) and end - start < _ROWS_PER_INSERT
                           and list(rows[end]) == names):
                        end += 1
                    ids += self._insert_group(txn, definition, names, rows[start:end])
                    start = end
        except apsw.ConstraintError as exc:
            raise AlreadyExists(f"a row would repeat the value of a unique field ({exc})",
                                reason="UNIQUE_VIOLATION") from exc
        schema = _schema(definition)
        txn.record_many(
            definition.namespace, "row", [f"{definition.name}/{i}" for i in ids], "create", now,
            [RowChange(definition.name, i, [(name, kind, row.get(name)) for name, kind in schema])
             for i, row in zip(ids, rows, strict=True)])
        return ids

    def _insert_group(
        self, txn: WriteTxn, definition: DefRow, names: list[str],
        rows: Sequence[dict[str, Any]],
    ) -> list[int]:
        if not names:
            return [int((txn.cursor.execute(
                f"INSERT INTO {table(definition.id)} DEFAULT VALUES RETURNING id"
            ).fetchone() or (0,))[0]) for _ in rows]
        columns = ", ".join(map(quote, names))
        placeholders = "(" + ", ".join("?" * len(names)) + ")"
        values = ", ".join([placeholders] * len(rows))
        params = [row[name] for row in rows for name in names]
        # RETURNING yields the rows in insertion order; sort to be sure of it.
        ids = sorted(int(r[0]) for r in txn.cursor.execute(
            f"INSERT INTO {table(definition.id)} ({columns}) VALUES {values} RETURNING id",
            params))
        return ids

    def query(
        self, definition: DefRow, columns: Sequence[str], where: Where,
        order: Sequence[tuple[str, bool]], limit: int, offset: int,
    ) -> list[tuple[Any, ...]] | None:
        """Return (id, *columns) of matching rows in order (then by id).

        None: the collection was dropped since its definition was read (on PostgreSQL a read
        waits while a batch that alters or drops the table commits: reads run in the read
        executor's threads there, never on the event loop that commits the batch).
        """
        dialect = self._dialect
        order_sql = ", ".join(
            [f"{quote(c)} {dialect.descending if desc else dialect.ascending}"
             for c, desc in order] + ['"id" ASC']
        )
        sql = (f"SELECT {', '.join(map(quote, ['id', *columns]))} FROM {table(definition.id)} "
               f"WHERE {where.sql} ORDER BY {order_sql} LIMIT :limit OFFSET :offset")
        reader = self._db.reader
        try:
            with storage_errors():
                return list(reader.execute(
                    sql, {**where.params, "limit": limit, "offset": offset}))
        except Exception:
            with storage_errors():
                if reader.execute(_DEF_EXISTS, {"id": definition.id}).fetchone() is None:
                    return None  # its table went with it
            raise

    def update(
        self, txn: WriteTxn, definition: DefRow, values: dict[str, Any], where: Where, now: int
    ) -> int:
        """Set columns of matching rows; return how many.

        Raises AlreadyExists (CONSTRAINT_VIOLATION) when the change would repeat the value of
        a unique field or empty a required one.
        """
        assignments = ", ".join(f"{quote(name)} = :s{i}" for i, name in enumerate(values))
        params = {**where.params, **{f"s{i}": v for i, v in enumerate(values.values())}}
        schema = _schema(definition)
        returning = ", ".join(map(quote, ["id", *(name for name, _ in schema)]))
        try:
            with self._may_fail(txn, definition):
                rows = txn.cursor.execute(
                    f"UPDATE {table(definition.id)} SET {assignments} WHERE {where.sql} "
                    f"RETURNING {returning}", params).fetchall()
        except apsw.ConstraintError as exc:
            raise AlreadyExists(f"the update would repeat the value of a unique field "
                                f"or empty a required one ({exc})",
                                reason="CONSTRAINT_VIOLATION") from exc
        for row in rows:  # the whole row after the change, for the feed
            txn.record(definition.namespace, "row", f"{definition.name}/{row[0]}", "update", now,
                       RowChange(definition.name, cast(int, row[0]), [
                           (name, kind, value)
                           for (name, kind), value in zip(schema, row[1:], strict=True)]))
        return len(rows)

    def delete(self, txn: WriteTxn, definition: DefRow, where: Where, now: int) -> int:
        """Delete matching rows; return how many."""
        ids = [r[0] for r in txn.cursor.execute(
            f"DELETE FROM {table(definition.id)} WHERE {where.sql} RETURNING id",
            where.params).fetchall()]
        for row_id in ids:
            txn.record(definition.namespace, "row", f"{definition.name}/{row_id}", "delete", now)
        return len(ids)

    def explain(self, definition: DefRow, where: Where) -> list[str]:
        """Return the database's plan of a query (the tests check index use)."""
        sql = f"SELECT id FROM {table(definition.id)} WHERE {where.sql}"
        return self._db.query_plan(sql, where.params)
