"""The daemon's operational surface: health (Check, Watch, List) and reflection (v1 and
v1alpha, with the protos' comments), over the wire against a real daemon."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_debugging import TOOLS

from conftest import ROOT, Daemon
from jarvis_memory import JarvisMemoryError
from jarvis_memory_server.daemon import SERVICE_NAMES
from jarvis_memory_server.transport.health import MAX_LISTED, HealthServicer

MEMORY_PROTO = ROOT / "proto" / "jarvis" / "memory" / "v1" / "memory.proto"
DESCRIPTORS = ROOT / "server" / "jarvis_memory_server" / "descriptors.binpb"
V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def leading_comment(proto: Path, declaration: str) -> list[str]:
    """The comment lines right above the line that starts with ``declaration``, as written."""
    lines = [line.strip() for line in proto.read_text().splitlines()]
    at = next(i for i, line in enumerate(lines) if line.startswith(declaration))
    comment: list[str] = []
    while at > 0 and lines[at - 1].startswith("//"):
        at -= 1
        comment.insert(0, lines[at])
    assert comment, f"{declaration!r} has no comment in {proto.name}"
    return comment


def grpcurl(daemon: Daemon, *args: str) -> str:
    tool = TOOLS["grpcurl"]
    if not tool.exists():
        pytest.fail(f"{tool} is missing: run `make setup` first")
    result = subprocess.run([str(tool), "-plaintext", daemon.addr, *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def reflect_v1(channel: grpc.Channel, *requests: reflection_pb2.ServerReflectionRequest
               ) -> list[reflection_pb2.ServerReflectionResponse]:
    """Ask grpc.reflection.v1 (its messages are v1alpha's, byte for byte)."""
    call = channel.stream_stream(
        V1, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=10))


def reflect_v1alpha(channel: grpc.Channel, *requests: reflection_pb2.ServerReflectionRequest
                    ) -> list[reflection_pb2.ServerReflectionResponse]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return list(stub.ServerReflectionInfo(iter(requests), timeout=10))


def files_of(response: reflection_pb2.ServerReflectionResponse
             ) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert response.HasField("file_descriptor_response"), response
    protos = (descriptor_pb2.FileDescriptorProto.FromString(data)
              for data in response.file_descriptor_response.file_descriptor_proto)
    return {proto.name: proto for proto in protos}


def comments(proto: descriptor_pb2.FileDescriptorProto) -> str:
    return "".join(location.leading_comments for location in proto.source_code_info.location)


@pytest.fixture
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(daemon.addr) as channel:
        yield channel


# -- health -----------------------------------------------------------------------------------

def test_health_list_reports_every_service_serving(daemon: Daemon, channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    listed = health.List(health_pb2.HealthListRequest(), timeout=10)
    assert set(listed.statuses) == {"", *SERVICE_NAMES}
    assert {name: s.status for name, s in listed.statuses.items()} == dict.fromkeys(
        listed.statuses, SERVING)
    # A failed call the daemon logs, after the List: its line comes after anything List logged.
    with daemon.client() as jm, pytest.raises(JarvisMemoryError):
        jm.get_memory(987654322)
    daemon.wait_for_log(r"rpc GetMemory failed: NOT_FOUND memory 987654322")
    for trouble in ("Traceback", "NotImplementedError", "UNIMPLEMENTED"):
        assert trouble not in daemon.output, daemon.output


def test_health_list_through_grpcurl(daemon: Daemon) -> None:
    output = grpcurl(daemon, "grpc.health.v1.Health/List")
    assert '"jarvis.memory.v1.MemoryService": {\n      "status": "SERVING"' in output, output
    assert '"": {\n      "status": "SERVING"' in output, output


def test_health_check_and_watch_still_work(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICE_NAMES):
        assert health.Check(health_pb2.HealthCheckRequest(service=service),
                            timeout=10).status == SERVING
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service="jarvis.memory.v1.MemoryService"),
                         timeout=10)
    assert next(watch).status == SERVING
    watch.cancel()


def test_graceful_shutdown_reports_not_serving(db_target: Path | str) -> None:
    """On SIGTERM the status turns NOT_SERVING for watchers before the server stops."""
    d = Daemon(db_target).start()
    try:
        with grpc.insecure_channel(d.addr) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == SERVING
            assert d.proc is not None
            d.proc.terminate()
            assert next(watch).status == NOT_SERVING
            watch.cancel()  # else the daemon waits out its grace period for this stream
        assert d.wait() == 0, d.output
    finally:
        d.kill()
    assert "Traceback" not in d.output, d.output


class _Aborted(Exception):
    pass


class _Context:
    """The part of grpc.aio.ServicerContext List uses."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code = code
        raise _Aborted(details)


def test_health_list_after_graceful_shutdown_and_beyond_its_limit() -> None:
    async def scenario() -> None:
        servicer = HealthServicer()
        await servicer.set("a.Service", SERVING)
        await servicer.enter_graceful_shutdown()
        listed = await servicer.List(health_pb2.HealthListRequest(), _Context())
        assert {k: v.status for k, v in listed.statuses.items()} == {
            "": NOT_SERVING, "a.Service": NOT_SERVING}
        crowded = HealthServicer()
        for n in range(MAX_LISTED):  # with "", one more than the limit
            await crowded.set(f"s{n}.Service", SERVING)
        context = _Context()
        with pytest.raises(_Aborted):
            await crowded.List(health_pb2.HealthListRequest(), context)
        assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    asyncio.run(scenario())


# -- reflection -------------------------------------------------------------------------------

def test_grpcurl_lists_both_reflection_versions(daemon: Daemon) -> None:
    listed = set(grpcurl(daemon, "list").split())
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
            "grpc.health.v1.Health", *SERVICE_NAMES} == listed


@pytest.mark.parametrize(("symbol", "declaration"), [
    ("jarvis.memory.v1.MemoryService", "service MemoryService {"),
    ("jarvis.memory.v1.MemoryService.AddMemory", "rpc AddMemory("),
    ("jarvis.memory.v1.Memory", "message Memory {"),
])
def test_grpcurl_describe_prints_the_proto_comments(
        daemon: Daemon, symbol: str, declaration: str) -> None:
    output = grpcurl(daemon, "describe", symbol)
    printed = {line.strip() for line in output.splitlines()}
    for line in leading_comment(MEMORY_PROTO, declaration):
        assert line in printed, f"{line!r} missing from:\n{output}"


def test_grpcurl_describe_reflection_v1(daemon: Daemon) -> None:
    output = grpcurl(daemon, "describe", "grpc.reflection.v1.ServerReflection")
    assert "stream .grpc.reflection.v1.ServerReflectionRequest" in output, output


def test_v1_reflection_through_a_stub(channel: grpc.Channel) -> None:
    listed, by_method, by_name, missing = reflect_v1(
        channel,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="jarvis.memory.v1.MemoryService.AddMemory"),
        reflection_pb2.ServerReflectionRequest(
            file_by_filename="grpc/reflection/v1/reflection.proto"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="jarvis.memory.v1.Nope"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
            "grpc.health.v1.Health", *SERVICE_NAMES} == names
    files = files_of(by_method)
    memory = files["jarvis/memory/v1/memory.proto"]
    # With its imports, so a client can build the file.
    assert set(memory.dependency) <= set(files)
    assert "AddMemory stores a memory" in comments(memory)
    v1 = files_of(by_name)["grpc/reflection/v1/reflection.proto"]
    assert v1.package == "grpc.reflection.v1"
    assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.original_request.file_containing_symbol == "jarvis.memory.v1.Nope"


def test_v1_and_v1alpha_answer_alike(channel: grpc.Channel) -> None:
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="jarvis.memory.v1.Memory"),
        reflection_pb2.ServerReflectionRequest(file_by_filename="jarvis/memory/v1/common.proto"),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.health.v1.Health.Check"),
        reflection_pb2.ServerReflectionRequest(
            all_extension_numbers_of_type="google.protobuf.MethodOptions"),
    ]
    assert reflect_v1(channel, *requests) == reflect_v1alpha(channel, *requests)


def test_reflection_and_health_need_no_credential(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db", "--require-auth").start()
    try:
        with grpc.insecure_channel(d.addr) as channel:
            (listed,) = reflect_v1(channel, reflection_pb2.ServerReflectionRequest(
                list_services=""))
            assert "jarvis.memory.v1.MemoryService" in {
                s.name for s in listed.list_services_response.service}
            statuses = health_pb2_grpc.HealthStub(channel).List(
                health_pb2.HealthListRequest(), timeout=10).statuses
            assert statuses[""].status == SERVING
        with d.client(retry=None) as jm, pytest.raises(JarvisMemoryError) as error:
            jm.get_memory(1)
        assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert d.stop() == 0, d.output


def test_descriptor_set_is_the_generated_modules_with_comments() -> None:
    """descriptors.binpb describes exactly the API the stubs serve, plus source info."""
    import jarvis.memory.v1.memory_pb2  # noqa: F401 - registers the files in the default pool

    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    ours = [f for f in fds.file if f.package == "jarvis.memory.v1"]
    assert {f.name for f in ours} == {
        f"jarvis/memory/v1/{p.name}" for p in MEMORY_PROTO.parent.glob("*.proto")}
    pool = descriptor_pool.Default()
    for proto in ours:
        assert proto.source_code_info.location, proto.name
        stripped = descriptor_pb2.FileDescriptorProto()
        stripped.CopyFrom(proto)
        stripped.ClearField("source_code_info")
        generated = descriptor_pb2.FileDescriptorProto.FromString(
            pool.FindFileByName(proto.name).serialized_pb)
        assert stripped == generated, proto.name
    assert re.search(r"MemoryService stores the facts", comments(
        next(f for f in ours if f.name.endswith("/memory.proto"))))


def test_reflection_without_the_descriptor_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package built without descriptors.binpb still reflects, from the generated modules."""
    from jarvis_memory_server.transport import reflection

    monkeypatch.setattr(reflection, "DESCRIPTOR_SET", "missing.binpb")
    names = (*SERVICE_NAMES, HEALTH_SERVICE, reflection.V1_SERVICE_NAME,
             reflection.V1ALPHA_SERVICE_NAME)
    pool, files = reflection.load_descriptors(names)
    for name in names:
        assert pool.FindServiceByName(name).full_name == name
    memory = descriptor_pb2.FileDescriptorProto.FromString(files["jarvis/memory/v1/memory.proto"])
    assert memory.service and not memory.source_code_info.location
