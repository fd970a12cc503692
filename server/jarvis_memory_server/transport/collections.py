"""CollectionService servicer."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from jarvis.memory.v1 import collection_pb2, collection_pb2_grpc
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.collections import (
    CollectionService,
    DefRow,
    FieldDef,
    Filter,
    fields_of,
)
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.transport.convert import (
    EnumNames,
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


def filters(messages: Any) -> list[Filter]:
    """Filter messages -> Filters."""
    return [
        Filter(f.field, OPERATOR.required(f.op, f"filters[{i}].op"),
               value_to_python(f.value) if f.HasField("value") else None)
        for i, f in enumerate(messages)
    ]


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
        ids = self._collections.insert(resolve_namespace(request.namespace), request.collection,
                                       [struct_to_dict(row) for row in request.rows])
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
        for values in rows:
            row = response.rows.add(id=values.pop("id"))
            row.values.update(values)
        return response

    @write_rpc
    def UpdateRows(
        self, request: collection_pb2.UpdateRowsRequest, context: Context
    ) -> collection_pb2.UpdateRowsResponse:
        updated = self._collections.update(
            resolve_namespace(request.namespace), request.collection, filters(request.filters),
            struct_to_dict(request.set))
        return collection_pb2.UpdateRowsResponse(updated=updated)

    @write_rpc
    def DeleteRows(
        self, request: collection_pb2.DeleteRowsRequest, context: Context
    ) -> collection_pb2.DeleteRowsResponse:
        deleted = self._collections.delete(resolve_namespace(request.namespace),
                                           request.collection, filters(request.filters))
        return collection_pb2.DeleteRowsResponse(deleted=deleted)
