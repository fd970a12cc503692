"""Auth: the matrix of credentials x every RPC (generated from the service descriptors), the
token command line, auth switching on, and the secure-by-default bind."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import METHODS, Daemon, database_for, run_daemon_expecting_failure
from jarvis.memory.v1 import common_pb2
from jarvis_memory import Client, PermissionDenied, Unauthenticated
from jarvis_memory_server import errors
from jarvis_memory_server.service.auth import sign_jwt, verify_jwt

JWT_SECRET = "test-jwt-secret-do-not-log"
NS, OTHER_NS = "team-a", "team-b"
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
LEAST_ROLE = {common_pb2.ACCESS_READ: "reader", common_pb2.ACCESS_WRITE: "writer",
              common_pb2.ACCESS_ADMIN: "admin"}
LOWER_ROLE = {"writer": "reader", "admin": "writer"}




def cli(db: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jarvis_memory_server", "token", *args,
                           "--db", str(db)], capture_output=True, text=True, timeout=60)


def create_token(db: Path | str, role: str, *namespaces: str) -> str:
    args = ["create", "--role", role]
    for namespace in namespaces:
        args += ["--namespace", namespace]
    result = cli(db, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def jwt(role: str, namespaces: list[str], *, expires_in: float = 3600, key: str = JWT_SECRET) -> str:
    return sign_jwt({"sub": f"test-{role}", "role": role, "namespaces": namespaces,
                     "exp": int(time.time() + expires_in)}, key.encode())


class Credentials:
    def __init__(self, db: Path | str) -> None:
        self.tokens = {role: create_token(db, role, NS) for role in ("reader", "writer", "admin")}
        self.other_namespace = create_token(db, "admin", OTHER_NS)
        self.revoked = create_token(db, "admin", NS)
        token_id = self.revoked.split("_")[1]
        assert cli(db, "revoke", token_id).returncode == 0


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, backend: str,
            request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Credentials]]:
    db = database_for(backend, tmp_path_factory.mktemp("auth"), request)
    credentials = Credentials(db)
    daemon = Daemon(db, "--auth-cache-ttl", "0", env={"JARVIS_MEMORY_JWT_SECRET": JWT_SECRET})
    daemon.start()
    yield daemon, credentials
    assert daemon.stop() == 0
    for secret in (*credentials.tokens.values(), credentials.revoked, JWT_SECRET):
        assert secret not in daemon.output, "a secret reached the log"


def call(daemon: Daemon, method: MethodDescriptor, token: str | None,
         scheme: str = "Bearer") -> grpc.StatusCode:
    """Call any RPC with a request that names namespace team-a; return the status code."""
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", f"{scheme} {token}"),) if token is not None else None
    request = request_class(namespace=NS) if spans_one_namespace(method) else request_class()
    with grpc.insecure_channel(daemon.addr) as channel:
        kind = channel.unary_stream if method.server_streaming else channel.unary_unary
        stub = kind(path, request_serializer=request_class.SerializeToString,
                    response_deserializer=response_class.FromString)
        try:
            # A live stream (Watch) never ends by itself: a short deadline ends it; auth
            # errors come back at once, long before it.
            result = stub(request, metadata=metadata,
                          timeout=1.5 if method.server_streaming else 10)
            if method.server_streaming:
                list(result)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def spans_one_namespace(method: MethodDescriptor) -> bool:
    """Whether requests name a namespace; the others span all and need "*"."""
    return "namespace" in method.input_type.fields_by_name


def test_every_rpc_declares_its_access() -> None:
    assert len(METHODS) >= 14
    for method in METHODS:
        assert method.GetOptions().Extensions[common_pb2.access] in LEAST_ROLE, method.full_name


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name.rsplit(".", 2)[-2] + "." + m.name
                                                  for m in METHODS])
def test_auth_matrix(secured: tuple[Daemon, Credentials], method: MethodDescriptor) -> None:
    daemon, creds = secured
    least = LEAST_ROLE[method.GetOptions().Extensions[common_pb2.access]]
    unauthenticated = {
        "no credential": (None, "Bearer"),
        "malformed header": (creds.tokens["admin"], "Basic"),
        "unknown token": ("jmt_000000000000_" + "x" * 43, "Bearer"),
        "garbage token": ("not-a-token", "Bearer"),
        "token with a wrong secret": (creds.tokens["admin"][:-4] + "AAAA", "Bearer"),
        "revoked token": (creds.revoked, "Bearer"),
        "expired JWT": (jwt("admin", ["*"], expires_in=-10), "Bearer"),
        "badly signed JWT": (jwt("admin", ["*"], key="another-secret"), "Bearer"),
    }
    for case, (token, scheme) in unauthenticated.items():
        assert call(daemon, method, token, scheme) == grpc.StatusCode.UNAUTHENTICATED, case
    assert call(daemon, method, creds.other_namespace) == grpc.StatusCode.PERMISSION_DENIED
    assert call(daemon, method, jwt("admin", [OTHER_NS])) == grpc.StatusCode.PERMISSION_DENIED
    if least in LOWER_ROLE:
        low = LOWER_ROLE[least]
        assert call(daemon, method, creds.tokens[low]) == grpc.StatusCode.PERMISSION_DENIED
        assert call(daemon, method, jwt(low, [NS])) == grpc.StatusCode.PERMISSION_DENIED
    # The right role gets past auth (the empty request itself may still be invalid); an RPC
    # that spans every namespace also needs a credential that holds "*".
    if spans_one_namespace(method):
        assert call(daemon, method, creds.tokens[least]) not in DENIED
        assert call(daemon, method, jwt(least, [NS])) not in DENIED
    else:
        assert call(daemon, method, creds.tokens[least]) == grpc.StatusCode.PERMISSION_DENIED
        assert call(daemon, method, jwt(least, ["*"])) not in DENIED
    assert call(daemon, method, jwt("admin", ["*"])) not in DENIED


def test_health_and_reflection_need_no_credential(secured: tuple[Daemon, Credentials]) -> None:
    daemon, _ = secured
    with grpc.insecure_channel(daemon.addr) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(daemon.addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "jarvis.memory.v1.MemoryService" in {s.name for s in reply.list_services_response.service}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _signed(header: bytes, payload: bytes, key: str = JWT_SECRET) -> str:
    """A JWT of raw header and payload bytes, signed with ``key`` (as sign_jwt would)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


_CLAIMS = json.dumps({"sub": "x", "role": "admin", "namespaces": ["*"],
                      "exp": 4102444800}).encode()
_HS256 = b'{"alg":"HS256"}'
HOSTILE_JWTS = {
    "unsigned, header nested 1000 deep": f"{_b64(b'[' * 1000 + b']' * 1000)}.{_b64(_CLAIMS)}.",
    "unsigned, claims nested 1000 deep": f"{_b64(_HS256)}.{_b64(b'[' * 1000 + b']' * 1000)}.",
    "alg none": _b64(b'{"alg":"none"}') + "." + _b64(_CLAIMS) + ".",
    "signed, header nested 1000 deep": _signed(b"[" * 1000 + b"]" * 1000, _CLAIMS),
    "signed, claims not UTF-8": _signed(_HS256, b'{"role":"\xff"}'),
    "signed, role a list": _signed(
        _HS256, b'{"role":["admin"],"namespaces":["*"],"exp":4102444800}'),
    "signed, exp NaN": _signed(_HS256, b'{"role":"admin","namespaces":["*"],"exp":NaN}'),
    "signed, claims an array": _signed(_HS256, b"[1]"),
    "not base64": "a!b.c.d",
    "too long": _signed(_HS256, _CLAIMS[:-1] + b',"pad":"' + b"x" * 20_000 + b'"}'),
}
# gRPC refuses metadata beyond 8 KiB before the daemon sees it.
ON_THE_WIRE = {case: token for case, token in HOSTILE_JWTS.items() if len(token) < 8000}


@pytest.mark.parametrize("token", HOSTILE_JWTS.values(), ids=HOSTILE_JWTS.keys())
def test_malformed_jwts_are_refused_before_parsing(token: str) -> None:
    with pytest.raises(errors.Unauthenticated) as info:
        verify_jwt(token, JWT_SECRET.encode())
    assert info.value.reason in {"JWT_MALFORMED", "JWT_BAD_SIGNATURE"}


def test_malformed_jwts_are_unauthenticated_on_the_wire(
        secured: tuple[Daemon, Credentials]) -> None:
    daemon, _ = secured
    get_memory = next(m for m in METHODS if m.name == "GetMemory")
    for case, token in ON_THE_WIRE.items():
        assert call(daemon, get_memory, token) == grpc.StatusCode.UNAUTHENTICATED, case
    assert "Traceback" not in daemon.output


def test_the_sdk_sends_its_token(secured: tuple[Daemon, Credentials]) -> None:
    daemon, creds = secured
    with Client(daemon.addr, token=creds.tokens["writer"], namespace=NS) as jm:
        m = jm.add_memory("authenticated fact", category="fact", source="user_explicit")
        assert jm.get_memory(m.id).content == "authenticated fact"
    with Client(daemon.addr, token=creds.tokens["reader"], namespace=NS) as jm:
        assert jm.get_memory(m.id).id == m.id
        with pytest.raises(PermissionDenied) as info:
            jm.add_memory("readers cannot write", category="fact", source="user_explicit")
        assert info.value.reason == "ROLE_TOO_LOW"
    with Client(daemon.addr, namespace=NS) as jm, pytest.raises(Unauthenticated) as missing:
        jm.get_memory(m.id)
    assert missing.value.reason == "CREDENTIAL_MISSING"


def test_auth_switches_on_when_the_first_token_is_created(db_target: Path | str) -> None:
    db = db_target
    daemon = Daemon(db, "--auth-cache-ttl", "0").start()
    try:
        assert "auth off" in daemon.output
        with daemon.client() as jm:
            jm.list_memories()  # open while no token exists
            token = create_token(db, "reader", "*")
            with pytest.raises(Unauthenticated):
                jm.list_memories()
        with daemon.client(token=token) as jm:
            assert jm.list_memories() == []
    finally:
        assert daemon.stop() == 0


def test_token_command_line(db_target: Path | str) -> None:
    db = db_target
    token = create_token(db, "writer", "a", "b")
    assert token.startswith("jmt_")
    listing = cli(db, "list")
    assert listing.returncode == 0
    token_id, secret = token[4:].split("_", 1)
    assert token_id in listing.stdout and "writer" in listing.stdout and "a,b" in listing.stdout
    assert secret not in listing.stdout
    assert cli(db, "revoke", token_id).returncode == 0
    again = cli(db, "revoke", token_id)
    assert again.returncode == 2 and "no active token" in again.stderr
    bad = cli(db, "create", "--role", "writer", "--namespace", "bad namespace!")
    assert bad.returncode == 2 and "namespace" in bad.stderr


def test_refuses_to_expose_an_open_daemon(tmp_path: Path) -> None:
    result = run_daemon_expecting_failure(tmp_path / "jarvis.db", "--addr", "0.0.0.0:0")
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 with auth off" in result.stderr
    for extra, env in ((("--insecure",), {}), ((), {"JARVIS_MEMORY_JWT_SECRET": "s"})):
        d = Daemon(tmp_path / "jarvis.db", "--addr", "0.0.0.0:0", *extra, env=env).start()
        assert d.addr.startswith("0.0.0.0:")
        assert d.stop() == 0
