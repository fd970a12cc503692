"""CollectionService servicer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

import grpc
from google.protobuf import struct_pb2

from jarvis.memory.v1 import collection_pb2, collection_pb2_grpc
from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.collections import (
    CollectionService,
    DefRow,
    FieldDef,
    Filter,
    JsonText,
    fields_of,
    from_stored,
    timestamp_from_micros,
)
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.transport.convert import (
    EnumNames,
    micros,
    parse_json,
    set_timestamp,
    struct_to_dict,
    value_to_python,
)
from jarvis_memory_server.transport.rpc import ServicerBase, read_rpc, write_rpc

FIELD_TYPE = EnumNames(collection_pb2.FieldType, "FIELD_TYPE_")
OPERATOR = EnumNames(collection_pb2.FilterOperator, "FILTER_OPERATOR_")
Context: TypeAlias = grpc.aio.ServicerContext


def field_def(message: collection_pb2.Field, where: str) -> FieldDef:
    """Field message -> FieldDef."""
    return FieldDef(message.name, FIELD_TYPE.required(message.type, f"{where}.type"),
                    message.required, message.indexed, message.unique)


def filters(messages: Iterable[collection_pb2.Filter]) -> list[Filter]:
    """Filter messages -> Filters: the older value, typed_value, or typed_values (a list).

    An in filter with no value at all is in an empty list (typed_values cannot tell an empty
    list from none). Giving the older value and a typed one is InvalidArgument.
    """
    result = []
    for i, f in enumerate(messages):
        where = f"filters[{i}]"
        op = OPERATOR.required(f.op, f"{where}.op")
        typed_one, typed_many = f.HasField("typed_value"), len(f.typed_values) > 0
        if f.HasField("value"):
            if typed_one or typed_many:
                raise InvalidArgument(where, "give value or typed_value/typed_values, not both")
            result.append(Filter(f.field, op, value_to_python(f.value)))
        elif typed_one:
            if typed_many:
                raise InvalidArgument(where, "give typed_value or typed_values, not both")
            result.append(Filter(f.field, op, field_value(f.typed_value, f"{where}.typed_value"),
                                 "typed_value"))
        elif typed_many or op == "in":
            result.append(Filter(f.field, op, [
                field_value(v, f"{where}.typed_values[{j}]") for j, v in enumerate(f.typed_values)
            ], "typed_values"))
        else:
            result.append(Filter(f.field, op))
    return result


def field_value(message: collection_pb2.FieldValue, where: str) -> Any:
    """FieldValue -> the service's value (see service.collections.to_stored).

    string -> str, integer -> int, real -> float, boolean -> bool, json_value -> JsonText of
    the parsed JSON, timestamp_value -> aware UTC datetime, null_value (or no kind) -> None.
    Raises InvalidArgument naming ``where`` for JSON that does not parse and a Timestamp out of
    range (nanos outside [0, 1e9), seconds outside years 0001 to 9999).
    """
    kind = message.WhichOneof("kind")
    if kind == "string_value":
        return message.string_value
    if kind == "integer_value":
        return message.integer_value
    if kind == "real_value":
        return message.real_value
    if kind == "boolean_value":
        return message.boolean_value
    if kind == "json_value":
        return JsonText(parse_json(message.json_value, where))
    if kind == "timestamp_value":
        return timestamp_from_micros(micros(message.timestamp_value, where), where)
    return None


def typed_fields(values: Mapping[str, collection_pb2.FieldValue], where: str) -> dict[str, Any]:
    """A map of FieldValues (a typed row or typed_set) -> field name -> the service's value."""
    return {name: field_value(values[name], f"{where}.{name[:64]}") for name in sorted(values)}


def fill_row(
    message: collection_pb2.Row, collection: str, row_id: int,
    cells: Iterable[tuple[str, str, Any]],
) -> collection_pb2.Row:
    """Write a stored row into a Row message: id, collection, fields and the older values.

    Each cell is (field name, field type name such as "integer", the value as stored):
    str for string, int for integer, float (or int) for real, 0/1 for boolean, JSON text for
    json (returned as it is), microseconds since the epoch for timestamp, None for null.
    """
    message.id = row_id
    message.collection = collection
    legacy: dict[str, Any] = {}
    for name, kind, stored in cells:
        _set_field_value(message.fields[name], kind, stored)
        legacy[name] = from_stored(kind, stored)
    message.values.update(legacy)
    return message


def _set_field_value(message: collection_pb2.FieldValue, kind: str, stored: Any) -> None:
    if stored is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif kind == "string":
        message.string_value = stored
    elif kind == "integer":
        message.integer_value = stored
    elif kind == "real":
        message.real_value = float(stored)
    elif kind == "boolean":
        message.boolean_value = bool(stored)
    elif kind == "json":
        message.json_value = stored
    elif kind == "timestamp":
        set_timestamp(message.timestamp_value, stored)
    else:
        raise ValueError(f"unknown field type {kind!r}")


def fill_collection(message: collection_pb2.Collection, row: DefRow) -> collection_pb2.Collection:
    """Write a catalog entry into a Collection message."""
    message.namespace = row.namespace
    message.name = row.name
    for field in fields_of(row):
        message.fields.add(name=field.name, type=FIELD_TYPE.to_number[field.type],
                           required=field.required, indexed=field.indexed, unique=field.unique)
    set_timestamp(message.created_at, row.created_at)
    message.revision = row.revision
    return message


class CollectionServicer(ServicerBase, collection_pb2_grpc.CollectionServiceServicer):
    """Serves jarvis.memory.v1.CollectionService."""

    def __init__(self, collections: CollectionService, auth: Authenticator) -> None:
        super().__init__(collections, auth,
                         collection_pb2.DESCRIPTOR.services_by_name["CollectionService"])
        self._collections = collections

    @write_rpc
    def CreateCollection(
        self, request: collection_pb2.CreateCollectionRequest, context: Context
    ) -> collection_pb2.CreateCollectionResponse:
        row = self._collections.create(
            resolve_namespace(request.namespace), request.name,
            [field_def(f, f"fields[{i}]") for i, f in enumerate(request.fields)],
        )
        response = collection_pb2.CreateCollectionResponse()
        fill_collection(response.collection, row)
        return response

    @read_rpc
    def GetCollection(
        self, request: collection_pb2.GetCollectionRequest, context: Context
    ) -> collection_pb2.GetCollectionResponse:
        row, _ = self._collections.get(resolve_namespace(request.namespace), request.name)
        response = collection_pb2.GetCollectionResponse()
        fill_collection(response.collection, row)
        return response

    @read_rpc
    def ListCollections(
        self, request: collection_pb2.ListCollectionsRequest, context: Context
    ) -> collection_pb2.ListCollectionsResponse:
        rows, token = self._collections.list_page(
            resolve_namespace(request.namespace), size=request.page_size,
            token=request.page_token)
        response = collection_pb2.ListCollectionsResponse(next_page_token=token)
        for row in rows:
            fill_collection(response.collections.add(), row)
        return response

    @write_rpc
    def AddField(
        self, request: collection_pb2.AddFieldRequest, context: Context
    ) -> collection_pb2.AddFieldResponse:
        row = self._collections.add_field(resolve_namespace(request.namespace),
                                          request.collection, field_def(request.field, "field"))
        response = collection_pb2.AddFieldResponse()
        fill_collection(response.collection, row)
        return response

    @write_rpc
    def DropCollection(
        self, request: collection_pb2.DropCollectionRequest, context: Context
    ) -> collection_pb2.DropCollectionResponse:
        self._collections.drop(resolve_namespace(request.namespace), request.name)
        return collection_pb2.DropCollectionResponse()

    @write_rpc
    def InsertRows(
        self, request: collection_pb2.InsertRowsRequest, context: Context
    ) -> collection_pb2.InsertRowsResponse:
        if request.typed_rows:
            if request.rows:
                raise InvalidArgument("typed_rows", "give rows or typed_rows, not both")
            rows = [typed_fields(row.fields, f"typed_rows[{i}]")
                    for i, row in enumerate(request.typed_rows)]
            source = "typed_rows"
        else:
            rows, source = [struct_to_dict(row) for row in request.rows], "rows"
        ids = self._collections.insert(resolve_namespace(request.namespace), request.collection,
                                       rows, source=source)
        return collection_pb2.InsertRowsResponse(ids=ids)

    @read_rpc
    def QueryRows(
        self, request: collection_pb2.QueryRowsRequest, context: Context
    ) -> collection_pb2.QueryRowsResponse:
        rows, token = self._collections.query(
            resolve_namespace(request.namespace), request.collection, filters(request.filters),
            [(o.field, o.descending) for o in request.order_by],
            size=request.page_size, token=request.page_token,
        )
        response = collection_pb2.QueryRowsResponse(next_page_token=token)
        for row in rows:
            fill_row(response.rows.add(), request.collection, row.id, row.cells)
        return response

    @write_rpc
    def UpdateRows(
        self, request: collection_pb2.UpdateRowsRequest, context: Context
    ) -> collection_pb2.UpdateRowsResponse:
        if request.typed_set:
            if request.HasField("set"):
                raise InvalidArgument("typed_set", "give set or typed_set, not both")
            values, source = typed_fields(request.typed_set, "typed_set"), "typed_set"
        else:
            values, source = struct_to_dict(request.set), "set"
        updated = self._collections.update(
            resolve_namespace(request.namespace), request.collection, filters(request.filters),
            values, source=source)
        return collection_pb2.UpdateRowsResponse(updated=updated)

    @write_rpc
    def DeleteRows(
        self, request: collection_pb2.DeleteRowsRequest, context: Context
    ) -> collection_pb2.DeleteRowsResponse:
        deleted = self._collections.delete(resolve_namespace(request.namespace),
                                           request.collection, filters(request.filters))
        return collection_pb2.DeleteRowsResponse(deleted=deleted)
