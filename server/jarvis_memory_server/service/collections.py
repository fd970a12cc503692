"""Runtime collection rules: names, field types, typed values, filters, ordering."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from jarvis_memory_server.errors import AlreadyExists, InvalidArgument, NotFound
from jarvis_memory_server.service.common import (
    MAX_INT64,
    MAX_TIME_US,
    MIN_INT64,
    MIN_TIME_US,
    ServiceBase,
    choice,
    filter_fingerprint,
    json_text,
    page_size,
)
from jarvis_memory_server.store.backend import Database, now_us
from jarvis_memory_server.store.collections import (
    FIELD_NAME,
    FIELD_TYPES,
    OPERATORS,
    CollectionStore,
    Column,
    DefRow,
    Where,
)

__all__ = ["CollectionService", "DefRow", "FieldDef", "Filter", "JsonText", "StoredRow"]

FILTER_OPERATORS = (*OPERATORS, "in", "prefix", "is_null")
MAX_FIELDS = 200
MAX_ROWS = 1000
MAX_IN_VALUES = 1000
# Filters are AND-ed into one SQL condition, whose expression tree SQLite bounds (depth 1000)
# as it bounds bound parameters (32766): these caps keep every accepted request compilable.
MAX_FILTERS = 64
MAX_FILTER_VALUES = 10_000  # the values of all in lists of a request together
MAX_ORDER_BY = 64
# SQLite's names for the rowid of every table: as a column name they would shadow it.
ROWID_ALIASES = frozenset({"rowid", "oid", "_rowid_"})
MAX_JSON_BYTES = 1024 * 1024  # the JSON text of one json field's value
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_COLLECTION_NAME = FIELD_NAME


@dataclass(frozen=True, slots=True)
class FieldDef:
    """A field of a collection; type is a lowercase name ("string", "integer", ...)."""

    name: str
    type: str
    required: bool = False
    indexed: bool = False
    unique: bool = False


@dataclass(frozen=True, slots=True)
class Filter:
    """One condition on a field (or "id"); op is a lowercase operator name ("eq", ...).

    ``value`` is as for to_stored (a list for in). ``source`` names the request field the
    value came from, for error messages ("value", "typed_value", "typed_values").
    """

    field: str
    op: str
    value: Any = None
    source: str = "value"


@dataclass(frozen=True, slots=True)
class JsonText:
    """A json field's value that came as JSON text (FieldValue.json_value), parsed.

    Only a json field takes it; every other field type refuses it as the wrong kind.
    """

    value: Any


class StoredRow(NamedTuple):
    """A row as stored: its id and a (field name, field type, stored value) cell per field."""

    id: int
    cells: list[tuple[str, str, Any]]


class _RowQuery(NamedTuple):
    """A checked QueryRows request: what to read, and how to page it."""

    definition: DefRow
    fields: dict[str, FieldDef]
    where: Where
    order_by: list[tuple[str, bool]]
    limit: int
    offset: int
    fingerprint: str


class CollectionService(ServiceBase):
    """Defines collections and reads and writes their typed rows."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._store = CollectionStore(db)


    # -- definitions ------------------------------------------------------------------------

    def create(self, namespace: str, name: str, fields: list[FieldDef]) -> DefRow:
        """Create a collection. Raises InvalidArgument, AlreadyExists."""
        _check_name(name, "name")
        if not fields:
            raise InvalidArgument("fields", "give at least one field")
        if len(fields) > MAX_FIELDS:
            raise InvalidArgument("fields", f"at most {MAX_FIELDS} fields")
        seen: set[str] = set()
        for i, field in enumerate(fields):
            _check_field(field, f"fields[{i}]")
            if field.name in seen:
                raise InvalidArgument(f"fields[{i}].name", f"{field.name!r} appears twice")
            seen.add(field.name)
        with self._db.write() as txn:
            return self._store.create(txn, namespace, name, _fields_json(fields),
                                      [Column(**asdict(f)) for f in fields], now_us())

    def get(self, namespace: str, name: str) -> tuple[DefRow, list[FieldDef]]:
        """Return a collection's definition. Raises NotFound, InvalidArgument."""
        definition = self._definition(namespace, name)
        return definition, fields_of(definition)

    def list_page(
        self, namespace: str, *, size: int = 0, token: str = ""
    ) -> tuple[list[DefRow], str]:
        """Return one page of collections by name, and the next page's token."""
        limit = page_size(size)
        fingerprint = filter_fingerprint(namespace, {"collections": True})
        after = self._pages.decode_key_cursor(token, fingerprint) if token else ""
        rows = self._store.page_defs(namespace, after, limit + 1)
        return self._pages.finish_page(rows, limit, fingerprint, lambda r: {"key": r.name})

    def add_field(self, namespace: str, name: str, field: FieldDef) -> DefRow:
        """Add an optional field. Raises NotFound, InvalidArgument, AlreadyExists."""
        _check_field(field, "field")
        if field.required:
            raise InvalidArgument("field.required", "a field added later cannot be required: "
                                  "the rows already stored have no value for it")
        with self._db.write() as txn:
            definition = self._definition(namespace, name, txn)
            fields = fields_of(definition)
            if any(f.name == field.name for f in fields):
                raise AlreadyExists(f"collection {name!r} already has a field {field.name!r}",
                                    reason="FIELD_EXISTS")
            if len(fields) >= MAX_FIELDS:
                raise InvalidArgument("field", f"a collection has at most {MAX_FIELDS} fields")
            return self._store.add_column(txn, definition, _fields_json([*fields, field]),
                                          Column(**asdict(field)), now_us())

    def drop(self, namespace: str, name: str) -> None:
        """Delete a collection and its rows. Raises NotFound, InvalidArgument."""
        with self._db.write() as txn:
            self._store.drop(txn, self._definition(namespace, name, txn), now_us())

    # -- rows -------------------------------------------------------------------------------

    def insert(
        self, namespace: str, name: str, rows: list[dict[str, Any]], *, source: str = "rows"
    ) -> list[int]:
        """Insert rows (field name -> value, see to_stored), all or none.

        Raises InvalidArgument naming the row and field (``<source>[3].qty``), NotFound,
        AlreadyExists (a unique field).
        """
        if not rows:
            raise InvalidArgument(source, "give at least one row")
        if len(rows) > MAX_ROWS:
            raise InvalidArgument(source, f"holds {len(rows)} rows; at most {MAX_ROWS} per call")
        with self._db.write() as txn:
            definition = self._definition(namespace, name, txn)
            fields = {f.name: f for f in fields_of(definition)}
            stored = [_row_values(fields, row, f"{source}[{i}]", insert=True)
                      for i, row in enumerate(rows)]
            return self._store.insert(txn, definition, stored, now_us())

    def query(
        self, namespace: str, name: str, filters: list[Filter],
        order_by: list[tuple[str, bool]], *, size: int = 0, token: str = "",
    ) -> tuple[list[StoredRow], str]:
        """Return one page of matching rows, as stored, and the next page's token."""
        query = self._row_query(namespace, name, filters, order_by, size, token)
        return self._page(query, self._read(query))

    def _row_query(
        self, namespace: str, name: str, filters: list[Filter],
        order_by: list[tuple[str, bool]], size: int, token: str,
    ) -> _RowQuery:
        limit = page_size(size)
        definition = self._definition(namespace, name)
        fields = {f.name: f for f in fields_of(definition)}
        validated = _filters(fields, filters)
        if len(order_by) > MAX_ORDER_BY:
            raise InvalidArgument("order_by", f"holds {len(order_by)} entries; at most "
                                  f"{MAX_ORDER_BY}")
        for i, (field, _) in enumerate(order_by):
            _field(fields, field, f"order_by[{i}].field")
        # The validated filters themselves (repr: 1 and 1.0 stay apart), not the SQL text.
        fingerprint = filter_fingerprint(namespace, {
            "collection": name, "filters": repr(validated), "order": order_by})
        offset = self._pages.decode_offset_cursor(token, fingerprint) if token else 0
        return _RowQuery(definition, fields, self._store.where(validated), order_by, limit,
                         offset, fingerprint)

    def _read(self, query: _RowQuery) -> list[tuple[Any, ...]]:
        rows = self._store.query(query.definition, list(query.fields), query.where,
                                 query.order_by, query.limit + 1, query.offset)
        if rows is None:  # dropped while the read waited
            raise _not_found(query.definition.namespace, query.definition.name)
        return rows

    def _page(
        self, query: _RowQuery, rows: list[tuple[Any, ...]]
    ) -> tuple[list[StoredRow], str]:
        columns = list(query.fields)
        types = [f.type for f in query.fields.values()]
        page = [StoredRow(row[0], list(zip(columns, types, row[1:], strict=True)))
                for row in rows[:query.limit]]
        next_token = (
            self._pages.encode_offset_cursor(query.offset + query.limit, query.fingerprint)
            if len(rows) > query.limit else "")
        return page, next_token

    def update(
        self, namespace: str, name: str, filters: list[Filter], values: dict[str, Any], *,
        source: str = "set",
    ) -> int:
        """Set fields of the matching rows (values as for insert); return how many.

        Raises InvalidArgument (naming ``<source>.field``), NotFound, AlreadyExists.
        """
        if not values:
            raise InvalidArgument(source, "name at least one field to change")
        with self._db.write() as txn:
            definition = self._definition(namespace, name, txn)
            fields = {f.name: f for f in fields_of(definition)}
            stored = _row_values(fields, values, source, insert=False)
            where = self._store.where(_filters(fields, filters))
            return self._store.update(txn, definition, stored, where, now_us())

    def delete(self, namespace: str, name: str, filters: list[Filter]) -> int:
        """Delete the matching rows; return how many. Raises InvalidArgument, NotFound."""
        with self._db.write() as txn:
            definition = self._definition(namespace, name, txn)
            fields = {f.name: f for f in fields_of(definition)}
            where = self._store.where(_filters(fields, filters))
            return self._store.delete(txn, definition, where, now_us())

    def explain(self, namespace: str, name: str, filters: list[Filter]) -> list[str]:
        """Return the database's plan for the filters (the tests check index use)."""
        definition = self._definition(namespace, name)
        fields = {f.name: f for f in fields_of(definition)}
        return self._store.explain(definition, self._store.where(_filters(fields, filters)))

    def _definition(self, namespace: str, name: str, txn: Any = None) -> DefRow:
        _check_name(name, "collection")
        definition = self._store.get_def(namespace, name, txn)
        if definition is None:
            raise _not_found(namespace, name)
        return definition


def _not_found(namespace: str, name: str) -> NotFound:
    return NotFound(f"collection {name!r} does not exist in namespace {namespace!r}",
                    reason="COLLECTION_NOT_FOUND", namespace=namespace, name=name)


def fields_of(definition: DefRow) -> list[FieldDef]:
    """The fields of a catalog entry."""
    return [FieldDef(**f) for f in json.loads(definition.fields)]


def _fields_json(fields: list[FieldDef]) -> str:
    return json.dumps([asdict(f) for f in fields], separators=(",", ":"))


def _check_name(name: str, field: str) -> None:
    if not name:
        raise InvalidArgument(field, "is required")
    if _COLLECTION_NAME.fullmatch(name) is None:
        raise InvalidArgument(field, f"{name[:64]!r} is not a valid name: 1 to 63 lowercase "
                              "letters, digits or '_', starting with a letter")


def _check_field(field: FieldDef, prefix: str) -> None:
    if (not field.name or FIELD_NAME.fullmatch(field.name) is None or field.name == "id"
            or field.name.lower() in ROWID_ALIASES):
        raise InvalidArgument(f"{prefix}.name", f"{field.name[:64]!r} is not a valid field "
                              "name: 1 to 63 lowercase letters, digits or '_', starting with a "
                              "letter, and not 'id', 'rowid' or 'oid' (SQLite's names for the "
                              "row id)")
    choice(field.type, FIELD_TYPES, f"{prefix}.type")
    if field.unique and field.type == "json":
        raise InvalidArgument(f"{prefix}.unique", "a json field cannot be unique")


def _field(fields: dict[str, FieldDef], name: str, where: str) -> FieldDef:
    if name == "id":
        return FieldDef("id", "integer", required=True)
    field = fields.get(name)
    if field is None:
        raise InvalidArgument(where, f"{name[:64]!r} is not a field of the collection "
                              f"(fields: id, {', '.join(fields)})")
    return field


def _row_values(
    fields: dict[str, FieldDef], row: dict[str, Any], where: str, *, insert: bool
) -> dict[str, Any]:
    """Check a row's (or an update's) values against the field types; return stored values.

    The stored values are in the collection's field order, so that rows naming the same
    fields insert together whatever order they were given in.
    """
    for name in row:
        if name not in fields:
            raise InvalidArgument(f"{where}.{name[:64]}", "is not a field of the collection")
    stored = {name: to_stored(field, row[name], f"{where}.{name}")
              for name, field in fields.items() if name in row}
    for field in fields.values():
        if not field.required:
            continue
        if (insert and stored.get(field.name) is None) or (
                field.name in stored and stored[field.name] is None):
            raise InvalidArgument(f"{where}.{field.name}", "is required")
    return stored


_EXPECTED = {
    "string": "a string",
    "integer": "a whole number within the int64 range (through the older Struct form: within "
               "+-2^53)",
    "real": "a finite number",
    "boolean": "true or false",
    "json": "JSON text or a JSON value",
    "timestamp": "a timestamp, or an RFC 3339 time with a zone such as 2026-11-22T07:30:00Z",
}


def to_stored(field: FieldDef, value: Any, where: str) -> Any:
    """A request's value -> the value stored for a field of this type. Raises InvalidArgument.

    ``value`` is None (null), a str, int, float, bool, an aware datetime (a timestamp), a
    JsonText (JSON text given for a json field), or a list or dict (a JSON value of the older
    Struct form). Stored: str for string, int for integer, float for real, 0 or 1 for boolean,
    compact JSON text for json (see service.common.json_text), microseconds since the epoch
    for timestamp.
    """
    if value is None:
        return None
    kind = field.type
    if kind == "json":
        if isinstance(value, JsonText):
            return None if value.value is None else json_text(value.value, where, MAX_JSON_BYTES)
        if not isinstance(value, datetime):
            return json_text(value, where, MAX_JSON_BYTES)
    elif isinstance(value, JsonText):
        pass  # JSON text is only for json fields
    elif kind == "string" and isinstance(value, str):
        return value
    elif kind == "integer" and _is_number(value) and isinstance(value, int):
        if MIN_INT64 <= value <= MAX_INT64:
            return value
    elif kind == "real" and _is_number(value) and math.isfinite(value):
        return float(value)
    elif kind == "boolean" and isinstance(value, bool):
        return int(value)
    elif kind == "timestamp":
        moment = _rfc3339(value) if isinstance(value, str) else value
        if isinstance(moment, datetime) and moment.tzinfo is not None:
            return _check_micros((moment - EPOCH) // timedelta(microseconds=1), where)
    hint = ""
    if kind == "integer" and isinstance(value, float) and value.is_integer() and (
            abs(value) > 2**53):
        hint = (" (a whole number beyond +-2^53 is not exact as a Struct number: "
                "send an integer_value)")
    article = "an" if kind[0] in "aeiou" else "a"
    raise InvalidArgument(where, f"expected {_EXPECTED[kind]} for {article} {kind} field, "
                          f"got {_describe(value)}{hint}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rfc3339(text: str) -> datetime | None:
    if _RFC3339.fullmatch(text) is None:
        return None
    try:
        return datetime.fromisoformat(text.upper())
    except ValueError:
        return None


def _check_micros(us: int, where: str) -> int:
    if not MIN_TIME_US <= us <= MAX_TIME_US:
        raise InvalidArgument(where, "is outside years 0001 to 9999 (UTC)")
    return us


def timestamp_from_micros(us: int, where: str) -> datetime:
    """Microseconds since the epoch -> an aware UTC datetime.

    Raises InvalidArgument (naming ``where``) outside years 0001 to 9999.
    """
    return EPOCH + timedelta(microseconds=_check_micros(us, where))


def _describe(value: Any) -> str:
    """What a request gave, for error messages."""
    if isinstance(value, JsonText):
        return f"JSON text {_short(json.dumps(value.value, ensure_ascii=False))}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the real number {value!r}"
    if isinstance(value, str):
        return f"the string {_short(repr(value))}"
    if isinstance(value, datetime):
        return f"the timestamp {value.isoformat()}"
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(text: str) -> str:
    return text if len(text) <= 64 else text[:61] + "..."


def from_stored(kind: str, value: Any) -> Any:
    """A stored value of a field of type ``kind`` -> its JSON value (the older Struct form)."""
    if value is None:
        return None
    if kind == "boolean":
        return bool(value)
    if kind == "json":
        return json.loads(value)
    if kind == "timestamp":
        return (EPOCH + timedelta(microseconds=value)).isoformat().replace("+00:00", "Z")
    return value


def _filters(fields: dict[str, FieldDef], filters: list[Filter]
             ) -> list[tuple[str, str, Any]]:
    if len(filters) > MAX_FILTERS:
        raise InvalidArgument("filters", f"holds {len(filters)} filters; at most {MAX_FILTERS}")
    values = sum(len(f.value) for f in filters if f.op == "in" and isinstance(f.value, list))
    if values > MAX_FILTER_VALUES:
        raise InvalidArgument("filters", f"the in lists hold {values} values; at most "
                              f"{MAX_FILTER_VALUES} in all")
    compiled: list[tuple[str, str, Any]] = []
    for i, f in enumerate(filters):
        where = f"filters[{i}]"
        value_at = f"{where}.{f.source}"
        field = _field(fields, f.field, f"{where}.field")
        op = choice(f.op, FILTER_OPERATORS, f"{where}.op")
        if op != "in" and f.source == "typed_values":
            raise InvalidArgument(value_at, f"are the values of in: give {op} a typed_value")
        if op == "is_null":
            if f.value is not None and not isinstance(f.value, bool):
                raise InvalidArgument(value_at, "must be true, false or unset for is_null")
            compiled.append((field.name, op, f.value is not False))
        elif op == "in":
            if not isinstance(f.value, list) or len(f.value) > MAX_IN_VALUES:
                raise InvalidArgument(value_at,
                                      f"must be a list of at most {MAX_IN_VALUES} values for in")
            compiled.append((field.name, op, [_comparable(field, v, f"{value_at}[{j}]")
                                              for j, v in enumerate(f.value)]))
        elif op == "prefix":
            if field.type != "string" or not isinstance(f.value, str):
                raise InvalidArgument(f"{where}", "prefix needs a string field and a string value")
            compiled.append((field.name, op, f.value))
        else:
            compiled.append((field.name, op, _comparable(field, f.value, value_at)))
    return compiled


def _comparable(field: FieldDef, value: Any, where: str) -> Any:
    if value is None:
        raise InvalidArgument(where, "is null: use the is_null operator")
    if field.type == "json":
        raise InvalidArgument(where, "json fields can only be tested with is_null")
    return to_stored(field, value, where)
