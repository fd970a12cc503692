"""Server reflection: the API with its comments, over grpc.reflection.v1 and v1alpha.

Three things stock grpcio-reflection does not do:

- **Comments.** It answers from the descriptors the generated modules register, which carry no
  source info, so ``grpcurl describe`` printed the API without its documentation. This servicer
  answers from the FileDescriptorSet proto/generate.py writes beside this package
  (descriptors.binpb, with source info and imports), sending each file as the set has it.
- **grpc.reflection.v1.** grpcio-reflection ships v1alpha only. v1 is the same protocol under
  another package name (same messages, same field numbers), so one servicer answers both, and
  its descriptor is v1alpha's renamed.
- **Method symbols.** ``file_containing_symbol`` resolved only messages, enums and services, so
  ``grpcurl describe jarvis.memory.v1.MemoryService.AddMemory`` failed with "Symbol not found"
  (grpc/grpc issue 34743): a method symbol is answered with the file of its service.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

log = logging.getLogger("jarvis_memory")

DESCRIPTOR_SET = "descriptors.binpb"  # package data of jarvis_memory_server
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _v1_reflection_file() -> bytes:
    """reflection.proto of grpc.reflection.v1: v1alpha's, renamed (the wire format is one)."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    old = f".{proto.package}."
    new = ".grpc.reflection.v1."

    def renamed(type_name: str) -> str:
        return new + type_name.removeprefix(old) if type_name.startswith(old) else type_name

    def rename_fields(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                if field.HasField("type_name"):  # messages and enums only
                    field.type_name = renamed(field.type_name)
            rename_fields(message.nested_type)

    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    rename_fields(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    proto.options.Clear()  # upstream v1's options; v1alpha's say deprecated
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    return proto.SerializeToString()


def load_descriptors(
    service_names: Iterable[str],
) -> tuple[descriptor_pool.DescriptorPool, dict[str, bytes]]:
    """A pool holding the services and what they use, and each file's serialized descriptor.

    The jarvis.memory.v1 files come from the descriptor set, comments included. Services it
    does not hold (health, reflection) are taken from the modules that registered them, with
    no comments; so is everything when the set is missing (a package built without it).
    """
    files: dict[str, bytes] = {}  # by name, each after the files it imports
    try:
        data = importlib.resources.files("jarvis_memory_server").joinpath(DESCRIPTOR_SET)
        fds = descriptor_pb2.FileDescriptorSet.FromString(data.read_bytes())
    except OSError as exc:
        log.warning("reflection serves the API without its comments: %s", exc)
    else:
        for proto in fds.file:  # protoc writes imports first
            files[proto.name] = proto.SerializeToString()
    pool = descriptor_pool.DescriptorPool()
    for serialized in files.values():
        pool.AddSerializedFile(serialized)

    def add(file: FileDescriptor) -> None:
        if file.name in files:
            return
        for dependency in file.dependencies:
            add(dependency)
        files[file.name] = file.serialized_pb
        pool.AddSerializedFile(file.serialized_pb)

    for name in service_names:
        try:
            pool.FindServiceByName(name)
        except KeyError:
            if name == V1_SERVICE_NAME:
                add(reflection_pb2.DESCRIPTOR)  # v1 is never imported alone
                files[_V1_FILE] = _v1_reflection_file()
                pool.AddSerializedFile(files[_V1_FILE])
            else:
                add(descriptor_pool.Default().FindFileContainingSymbol(name))
    return pool, files


class MethodAwareReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """Reflection for grpc.aio servers from serialized files, with method symbols resolved."""

    def __init__(
        self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool,
        files: dict[str, bytes],
    ) -> None:
        super().__init__(service_names, pool=pool)
        self._files = files

    def _respond(self, file: FileDescriptor, request: Any) -> Any:
        """The file and every file it imports, directly or not, as the set has them."""
        found: dict[str, FileDescriptor] = {}
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name not in found:
                found[current.name] = current
                pending.extend(current.dependencies)
        serialized = []
        for name, descriptor in found.items():
            data = self._files.get(name)
            if data is None:  # not one of ours: as the pool has it
                proto = descriptor_pb2.FileDescriptorProto()
                descriptor.CopyToProto(proto)
                data = proto.SerializeToString()
            serialized.append(data)
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=serialized),
            original_request=request,
        )

    def _not_found(self, request: Any) -> Any:
        return reflection_pb2.ServerReflectionResponse(
            error_response=reflection_pb2.ErrorResponse(
                error_code=grpc.StatusCode.NOT_FOUND.value[0],
                error_message=grpc.StatusCode.NOT_FOUND.value[1].encode(),
            ),
            original_request=request,
        )

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        try:
            return self._respond(self._pool.FindFileByName(filename), request)
        except KeyError:
            return self._not_found(request)

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        pool: descriptor_pool.DescriptorPool = self._pool
        try:
            return self._respond(pool.FindFileContainingSymbol(fully_qualified_name), request)
        except KeyError:
            pass
        try:  # a method: the file of its service
            service = pool.FindMethodByName(fully_qualified_name).containing_service
            return self._respond(service.file, request)
        except KeyError:
            return self._not_found(request)

    def _file_containing_extension(
        self, request: Any, containing_type: str, extension_number: int
    ) -> Any:
        pool: descriptor_pool.DescriptorPool = self._pool
        try:
            message = pool.FindMessageTypeByName(containing_type)
            extension = pool.FindExtensionByNumber(message, extension_number)
            return self._respond(pool.FindFileContainingSymbol(extension.full_name), request)
        except KeyError:
            return self._not_found(request)


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serve reflection for these services (and itself, v1 and v1alpha) on the server."""
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    pool, files = load_descriptors(names)
    servicer = MethodAwareReflection(names, pool, files)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # v1's messages are v1alpha's under another name: the same (de)serializers do.
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(V1_SERVICE_NAME, handlers)
