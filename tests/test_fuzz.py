"""Hostile input, on every RPC: the daemon answers each call with a precise status.

Every RPC of every jarvis.memory.v1 service is found through the service descriptors, so a new
RPC is fuzzed without editing this file. Requests are built from the message descriptors and
sent as raw bytes (identity serializers), which lets them hold what the Python protobuf
runtime refuses to build: strings that are not UTF-8, Structs nested beyond protobuf's
recursion limit, integers beyond their type. Each request is a plausible one (so that calls
get past "is required" into the code behind it) with one or more hostile fields appended on
the wire (for a singular field the last value wins; repeated fields grow).

Asserted for every call: the status is never UNKNOWN or INTERNAL, the connection was not
dropped (UNAVAILABLE), a unary call did not hang (DEADLINE_EXCEEDED); afterwards the daemon
still answers a health check and its log holds no traceback.

``make test`` runs a bounded set (every hostile value of every field once, plus
JARVIS_FUZZ_EXAMPLES random combinations per RPC, 20 by default; about half a minute);
``make fuzz`` runs many more. JARVIS_FUZZ_SEED replays a run (the seed is in the failure);
JARVIS_FUZZ_REPORT=<file> writes every failure to a file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import METHODS, Daemon
from jarvis_memory import AlreadyExists

EXAMPLES = int(os.environ.get("JARVIS_FUZZ_EXAMPLES", "20"))
SEED = int(os.environ.get("JARVIS_FUZZ_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
HUGE = 10 * 1024 * 1024  # a 10 MB string: beyond every documented limit, within the transport's
NAMESPACE = "fuzz"
COLLECTION = "fuzzc"
COLLECTION_FIELDS = {"label": 1, "qty": 2, "price": 3, "flag": 4, "doc": 5, "at": 6}  # FieldType
BAD_STATUSES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
UNARY_DEADLINE_S = 30.0
STREAM_DEADLINE_S = 1.0  # a stream that is still open then was accepted (Watch waits for changes)

F = FieldDescriptor




# -- the wire format --------------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers are 10-byte two's complement varints
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def scalar(field: FieldDescriptor, value: Any) -> bytes:
    """One value of a scalar field, encoded (values beyond the type's range are not clamped)."""
    t, n = field.type, field.number
    if t in (F.TYPE_DOUBLE,):
        return key(n, 1) + struct.pack("<d", value)
    if t in (F.TYPE_FLOAT,):
        return key(n, 5) + struct.pack("<f", value)
    if t in (F.TYPE_FIXED64, F.TYPE_SFIXED64):
        return key(n, 1) + (value & (2**64 - 1)).to_bytes(8, "little")
    if t in (F.TYPE_FIXED32, F.TYPE_SFIXED32):
        return key(n, 5) + (value & (2**32 - 1)).to_bytes(4, "little")
    if t in (F.TYPE_SINT32, F.TYPE_SINT64):
        return key(n, 0) + varint(zigzag(value))
    if t in (F.TYPE_STRING, F.TYPE_BYTES):
        return length_delimited(n, value if isinstance(value, bytes) else value.encode())
    return key(n, 0) + varint(int(value))


# -- hostile values ---------------------------------------------------------------------------

INVALID_UTF8 = [b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80"]  # bad bytes, cut sequence, a surrogate
STRINGS = [b"a\x00b", b"\x00", "\u202e\U0001f600\u0301".encode(), b"' OR 1=1 --", b"%s%n{}",
           b"../../etc/passwd", b" " * 300, b"x" * 70_000]
INTS: dict[int, list[int]] = {
    F.TYPE_INT32: [-1, 2**31 - 1, -(2**31), 2**31, 2**32, 2**63 - 1, -(2**63)],
    F.TYPE_INT64: [-1, 2**31, 2**53 + 1, 2**62, -(2**62), 2**63 - 1, -(2**63)],
    F.TYPE_UINT32: [2**32 - 1, 2**31, 2**64 - 1],
    F.TYPE_UINT64: [2**63, 2**64 - 1],
    F.TYPE_SINT32: [-(2**31), 2**31 - 1],
    F.TYPE_SINT64: [-(2**63), 2**63 - 1],
    F.TYPE_FIXED32: [2**32 - 1],
    F.TYPE_FIXED64: [2**64 - 1],
    F.TYPE_SFIXED32: [-(2**31), 2**31 - 1],
    F.TYPE_SFIXED64: [-(2**63), 2**63 - 1],
    F.TYPE_BOOL: [2, 2**64 - 1],
    F.TYPE_ENUM: [999, -1, 2**31 - 1, -(2**31)],
}
FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7e308, 2.0**63, 2.0**64]
TIME_EDGES = [(2**62, 0), (-(2**62), 0), (0, -1), (0, 10**9), (0, 2**31 - 1), (0, -(2**31)),
              (253_402_300_800, 0), (-62_135_596_801, 0), (-1, 999_999_999),
              (315_576_000_001, 0), (1, -1), (2**63 - 1, 0), (-(2**63), 0)]
OVERLONG_VARINT = b"\xff" * 10 + b"\x01"  # 11 bytes: a broken wire format


def deep_value(depth: int, kind: str = "list") -> bytes:
    """A google.protobuf.Value nested ``depth`` levels (two messages a level)."""
    value = key(2, 1) + struct.pack("<d", 1.0)  # number_value
    for _ in range(depth):
        if kind == "list":  # Value{list_value: ListValue{values: [value]}}
            value = length_delimited(6, length_delimited(1, value))
        else:  # Value{struct_value: Struct{fields: {"k": value}}}
            entry = length_delimited(1, b"k") + length_delimited(2, value)
            value = length_delimited(5, length_delimited(1, entry))
    return value


def struct_entry(name: bytes, value: bytes) -> bytes:
    """A Struct's fields map entry (field 1 of Struct)."""
    return length_delimited(1, length_delimited(1, name) + length_delimited(2, value))


def hostile_values(full_name: str) -> list[tuple[str, bytes]]:
    """Payloads of a google.protobuf.Value, Struct or ListValue field: deep, wide, odd."""
    number = lambda x: key(2, 1) + struct.pack("<d", x)  # noqa: E731
    if full_name == "google.protobuf.Struct":
        return [
            ("deep struct", struct_entry(b"k", deep_value(150, "struct"))),
            ("deep list in struct", struct_entry(b"k", deep_value(60))),
            ("struct 40 deep", struct_entry(b"k", deep_value(40, "struct"))),
            ("wide struct", b"".join(struct_entry(f"k{i}".encode(), number(i))
                                     for i in range(20_000))),
            ("bad utf-8 key", struct_entry(b"\xff", number(1))),
            ("NaN in struct", struct_entry(b"n", number(float("nan")))),
            ("2^64 in struct", struct_entry(b"n", number(2.0**64))),
            ("empty value", struct_entry(b"e", b"")),
            ("unknown null", struct_entry(b"z", key(1, 0) + varint(7))),
        ]
    if full_name == "google.protobuf.ListValue":
        return [("deep list", length_delimited(1, deep_value(150))),
                ("wide list", b"".join(length_delimited(1, number(i)) for i in range(50_000))),
                ("NaN in list", length_delimited(1, number(float("inf"))))]
    return [("deep value", deep_value(150)), ("deep struct value", deep_value(80, "struct")),
            ("value 35 deep", deep_value(35)), ("NaN value", number(float("nan"))),
            ("-inf value", number(float("-inf"))), ("bad utf-8 value", length_delimited(3, b"\xff")),
            ("empty value", b""), ("two kinds", number(1) + key(4, 0) + varint(1))]


class Hostile(NamedTuple):
    what: str  # for failure messages: path = value
    data: bytes  # the field's encoding, appended to a request


class Context:
    """What plausible requests refer to: ids and tokens made before an RPC is fuzzed."""

    def __init__(self) -> None:
        self.session_id = "fuzz-s"
        self.ids: list[int] = [1]
        self.page_tokens: list[str] = []


def page_token_values(ctx: Context) -> list[tuple[str, bytes]]:
    """Garbage and edited page tokens: forged in the old unsigned format, and real ones changed."""
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    forged = [
        {"c": {"at": 2**70, "id": 1}, "f": "0" * 16},
        {"c": {"at": 1, "id": -(2**64)}, "f": "0" * 16},
        {"c": {"key": 5}, "f": "0" * 16},
        {"c": {"offset": 2**80}, "f": "0" * 16},
        {"c": {"at": True, "id": 1.5}, "f": None},
    ]
    values = [("garbage", b"not-a-token"), ("empty JSON", b64(b"{}")),
              ("deep JSON", b64(b"[" * 100_000 + b"]" * 100_000)),
              ("lone surrogate key", b64(b'{"c":{"\\ud800":1,"key":"\\udfff"},"f":"x"}')),
              ("non-UTF-8", b64(b'{"c":{"key":"\xff"}}')), ("padding", b"=="),
              ("long", b"A" * 100_000)]
    values += [(f"forged {i}", b64(json.dumps(f).encode())) for i, f in enumerate(forged)]
    for token in ctx.page_tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for position in (0, len(raw) // 2, len(raw) - 1):
            edited = bytearray(raw)
            edited[position] ^= 0x01
            values.append((f"edited token @{position}", b64(bytes(edited))))
        values += [("truncated token", token[:-3].encode()),
                   ("extended token", token.encode() + b"AAAA")]
        # The JSON inside (whole, or before a MAC), with other cursors and the same filters:
        # what a client that knows the format could make.
        for body in (raw, raw[:-32]):
            try:
                issued_for = json.loads(body)["f"]
            except (ValueError, KeyError, TypeError):
                continue
            for cursor in ({"at": 2**70, "id": 1}, {"at": 1, "id": -(2**64)},
                           {"key": "\ud800"}, {"key": 7}, {"offset": 2**80}, {"offset": -5},
                           {"at": True, "id": None}, {"\udfff": []}):
                forged_body = json.dumps({"c": cursor, "f": issued_for}).encode()
                values += [(f"recursored token {cursor}", b64(forged_body)),
                           (f"recursored token with the MAC {cursor}",
                            b64(forged_body + raw[len(body):]))]
    return values


def hostile(field: FieldDescriptor, ctx: Context, depth: int = 0,
            huge: bool = False) -> list[Hostile]:
    """The hostile encodings of one field (for a message field: of its own fields too)."""
    name, t = field.name, field.type
    out: list[Hostile] = []
    if t == F.TYPE_STRING:
        values = [*INVALID_UTF8, *STRINGS]
        if huge:
            values.append(b"h" * HUGE)
        out += [Hostile(f"{name}={v[:12]!r}{'...' if len(v) > 12 else ''}", scalar(field, v))
                for v in values]
        if "page_token" in name:
            out += [Hostile(f"{name}={what}", scalar(field, v)) for what, v in
                    page_token_values(ctx)]
    elif t == F.TYPE_BYTES:
        out += [Hostile(f"{name}=bytes", scalar(field, v)) for v in (b"\xff" * 64, b"")]
    elif t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        out += [Hostile(f"{name}={v}", scalar(field, v)) for v in FLOATS
                if t == F.TYPE_DOUBLE or abs(v) < 3.4e38 or v != v or abs(v) == float("inf")]
    elif t == F.TYPE_MESSAGE:
        out += hostile_message(field, ctx, depth, huge)
    else:
        out += [Hostile(f"{name}={v}", scalar(field, v)) for v in INTS.get(t, [])]
        out.append(Hostile(f"{name}=overlong varint", key(field.number, 0) + OVERLONG_VARINT))
    if field.is_repeated and t != F.TYPE_MESSAGE:
        plain = plausible_scalar(field, ctx, random.Random(0))
        if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):  # packed: an embedding of 100,000 dimensions
            fmt = "<f" if t == F.TYPE_FLOAT else "<d"
            packed = b"".join(struct.pack(fmt, 0.5) for _ in range(100_000))
            out.append(Hostile(f"{name}=100k values", length_delimited(field.number, packed)))
        elif plain is not None:
            out.append(Hostile(f"{name}=10k copies", scalar(field, plain) * 10_000))
    return out


def hostile_message(field: FieldDescriptor, ctx: Context, depth: int,
                    huge: bool) -> list[Hostile]:
    name, n, message = field.name, field.number, field.message_type
    full = message.full_name
    out = [Hostile(f"{name}=broken bytes", length_delimited(n, b"\x0a\xff")),
           Hostile(f"{name}=overlong varint", length_delimited(n, b"\x08" + OVERLONG_VARINT))]
    if full in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        out += [Hostile(f"{name}={s}s{ns:+d}ns", length_delimited(
            n, key(1, 0) + varint(s) + key(2, 0) + varint(ns))) for s, ns in TIME_EDGES]
    elif full in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        out += [Hostile(f"{name}={what}", length_delimited(n, data))
                for what, data in hostile_values(full)]
    elif full == "google.protobuf.FieldMask":
        out += [Hostile(f"{name}={p!r}", length_delimited(n, length_delimited(1, p)))
                for p in (b"\xff", b"", b"no_such_field", b"a.b.c", b"x" * 10_000)]
    elif depth < 2:
        for sub in message.fields:
            out += [Hostile(f"{name}.{h.what}", length_delimited(n, h.data))
                    for h in hostile(sub, ctx, depth + 1, huge=False)]
    if field.is_repeated and not message.GetOptions().map_entry:
        element = plausible(message, ctx, random.Random(0), depth + 1).SerializeToString()
        out.append(Hostile(f"{name}=1000 elements", length_delimited(n, element) * 1000))
    return out


def method_hostiles(method: MethodDescriptor, ctx: Context) -> list[Hostile]:
    """Every hostile encoding of every field of a method's request, and whole-request junk."""
    out = [Hostile("junk bytes", b"\xff\xff\xff\xff"), Hostile("truncated", b"\x0a\x05ab"),
           Hostile("unknown field", key(999, 2) + varint(3) + b"abc"),
           Hostile("wrong wire type", b"".join(key(f.number, 5) + b"\0\0\0\0"
                                               for f in method.input_type.fields))]
    huge = True  # one 10 MB string per RPC: the first string field
    for field in method.input_type.fields:
        values = hostile(field, ctx, huge=huge and field.type == F.TYPE_STRING)
        huge = huge and field.type != F.TYPE_STRING
        out += values
    return out


# -- plausible requests -----------------------------------------------------------------------


def plausible_scalar(field: FieldDescriptor, ctx: Context, rng: random.Random) -> Any:
    name, t = field.name, field.type
    if t == F.TYPE_STRING:
        if name == "namespace":
            return NAMESPACE
        if name == "session_id":
            return ctx.session_id
        if name == "collection" or (
                name == "name" and "Collection" in field.containing_type.full_name):
            return COLLECTION
        if name == "field":
            return rng.choice([*COLLECTION_FIELDS, "id"])
        if name == "page_token":
            return rng.choice(ctx.page_tokens) if ctx.page_tokens and rng.random() < 0.5 else ""
        if name.endswith("_json"):
            return rng.choice(['{"a": 1}', "[1, 2]", "null", '"s"'])
        return rng.choice(["fuzz", "k1", "hello world", "x/y"])
    if t == F.TYPE_BYTES:
        return b"fuzz"
    if t == F.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values if v.number]
        return rng.choice(numbers) if numbers else 0
    if t == F.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return rng.choice([0.5, 1.0, -2.25])
    if name in ("id", "cycle_id"):
        return rng.choice(ctx.ids)
    if name in ("page_size", "limit"):
        return rng.choice([1, 2, 5])
    return rng.choice([0, 1, 2])


def plausible(message: Descriptor, ctx: Context, rng: random.Random, depth: int = 0,
              presence: float = 0.7) -> Message:
    """A request (or part of one) with believable values: most fields set, one oneof member."""
    result = GetMessageClass(message)()
    if message.full_name == "google.protobuf.Timestamp":
        result.FromSeconds(int(time.time()) + rng.randrange(-86400, 86400))
        return result
    if message.full_name == "google.protobuf.Duration":
        result.FromSeconds(rng.randrange(1, 3600))
        return result
    if message.full_name == "google.protobuf.Struct":
        result.update({"a": 1, "b": [True, None, "s"]})
        return result
    if message.full_name == "google.protobuf.Value":
        result.number_value = 1
        return result
    if message.full_name.startswith("google.protobuf.") or depth > 3:
        return result
    chosen = {o.name: rng.choice(o.fields) for o in message.oneofs}
    for field in message.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] is not field:
            continue
        if rng.random() > presence and field.name != "namespace":
            continue
        if field.type == F.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                entry = field.message_type.fields_by_name["value"]
                target = getattr(result, field.name)
                for key_name in rng.sample(list(COLLECTION_FIELDS), 2):
                    if entry.type == F.TYPE_MESSAGE:
                        target[key_name].CopyFrom(plausible(entry.message_type, ctx, rng,
                                                            depth + 1))
                    else:
                        target[key_name] = plausible_scalar(entry, ctx, rng)
            elif field.is_repeated:
                getattr(result, field.name).extend(
                    plausible(field.message_type, ctx, rng, depth + 1)
                    for _ in range(rng.randrange(1, 3)))
            else:
                getattr(result, field.name).CopyFrom(
                    plausible(field.message_type, ctx, rng, depth + 1))
        elif field.is_repeated:
            getattr(result, field.name).extend(
                plausible_scalar(field, ctx, rng) for _ in range(3))
        else:
            setattr(result, field.name, plausible_scalar(field, ctx, rng))
    return result


# -- the daemon and the calls -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon of this module's own: what it logs must come from the fuzzing only."""
    d = Daemon(tmp_path_factory.mktemp("fuzz") / "jarvis.db").start()
    yield d
    code = d.stop()
    assert code == 0, d.output[-5000:]


def prepare(d: Daemon, ctx: Context) -> None:
    """Make what plausible requests name: a collection, a session, rows, memories, tokens."""
    with d.client(namespace=NAMESPACE) as jm:
        names = {1: "string", 2: "integer", 3: "real", 4: "boolean", 5: "json", 6: "timestamp"}
        with contextlib.suppress(AlreadyExists):
            jm.create_collection(COLLECTION, fields=[
                {"name": n, "type": names[t]} for n, t in COLLECTION_FIELDS.items()])
        with contextlib.suppress(AlreadyExists):
            jm.start_session(id=ctx.session_id)
        memories = [jm.add_memory(f"fuzz fact {i}", category="fact", source="user_explicit")
                    for i in range(3)]
        for i in range(2):
            jm.set_preference(f"k{i}", i)
            jm.put_state(f"k{i}", i)
            jm.insert_rows(COLLECTION, [{"label": "fuzz", "qty": i}])
        ctx.ids = [1, memories[0].id]
        # Real tokens of several listings (keyset and offset cursors), to edit and forge.
        ctx.page_tokens = [jm.list_memories(page_size=1).next_page_token,
                           jm.list_preferences(page_size=1).next_page_token,
                           jm.query_rows(COLLECTION, page_size=1).next_page_token]


def call(channel: grpc.Channel, method: MethodDescriptor, data: bytes) -> grpc.StatusCode | None:
    """Send raw request bytes; return the status (None: a stream still open at the deadline)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        stream = channel.unary_stream(path, request_serializer=None,
                                      response_deserializer=None)
        responses = stream(data, timeout=STREAM_DEADLINE_S)
        try:
            next(iter(responses), None)
            responses.cancel()
        except grpc.RpcError as exc:
            code = exc.code()
            return None if code == grpc.StatusCode.DEADLINE_EXCEEDED else code
        return grpc.StatusCode.OK
    unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        unary(data, timeout=UNARY_DEADLINE_S)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def requests_for(method: MethodDescriptor, ctx: Context, rng: random.Random
                 ) -> list[tuple[str, bytes]]:
    """The requests an RPC gets: each hostile value once, then random combinations."""
    hostiles = method_hostiles(method, ctx)
    made = []
    for i, h in enumerate(hostiles):
        # Every other one alone (but for the namespace): a page token then meets the filters
        # it was issued for, and required fields are missing; the others in a full request.
        presence = 0.0 if i % 2 else 0.7
        base = plausible(method.input_type, ctx, rng, presence=presence).SerializeToString()
        made.append((h.what, base + h.data))
    for _ in range(EXAMPLES):
        picked = rng.sample(hostiles, min(len(hostiles), rng.randrange(1, 4)))
        base = plausible(method.input_type, ctx, rng, presence=rng.random()).SerializeToString()
        made.append((" & ".join(h.what for h in picked), base + b"".join(h.data for h in picked)))
    # Plausible requests too: they reach the handlers' deepest paths with odd combinations.
    made += [("plausible", plausible(method.input_type, ctx, rng).SerializeToString())
             for _ in range(max(3, EXAMPLES // 4))]
    return made


def run_method(channel: grpc.Channel, method: MethodDescriptor, requests: list[tuple[str, bytes]],
               pool: ThreadPoolExecutor, seen: Counter[str]) -> list[str]:
    """Send an RPC's requests concurrently; count the statuses; return the failures as text."""
    def one(item: tuple[str, bytes]) -> tuple[grpc.StatusCode | None, str]:
        return call(channel, method, item[1]), item[0]

    failures = []
    for code, what in pool.map(one, requests):
        seen[code.name if code else "STREAM_OPEN"] += 1
        if code in BAD_STATUSES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
            failures.append(f"{method.full_name} [{what}] -> {code.name if code else code}")
    return failures


def test_every_rpc_answers_hostile_input_precisely(fuzzed: Daemon) -> None:
    rng = random.Random(SEED)
    ctx = Context()
    failures: list[str] = []
    seen: Counter[str] = Counter()
    calls = 0
    started = time.monotonic()
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024),
               ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(fuzzed.addr, options=options) as channel, \
            ThreadPoolExecutor(8) as pool:
        for method in METHODS:
            prepare(fuzzed, ctx)
            requests = requests_for(method, ctx, rng)
            calls += len(requests)
            failures += run_method(channel, method, requests, pool, seen)
            assert fuzzed.proc is not None and fuzzed.proc.poll() is None, (
                f"the daemon died fuzzing {method.full_name} (seed {SEED}):\n"
                + fuzzed.output[-5000:])
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    elapsed = time.monotonic() - started
    print(f"fuzzed {len(METHODS)} RPCs with {calls} requests in {elapsed:.1f} s (seed {SEED}):",
          dict(seen.most_common()))
    # The rarest kinds of failure first: one UNKNOWN per request field would hide them.
    if os.environ.get("JARVIS_FUZZ_REPORT"):  # every failure, for a long run
        Path(os.environ["JARVIS_FUZZ_REPORT"]).write_text("\n".join(failures) + "\n")
    codes = Counter(f.rsplit(" ", 1)[1] for f in failures)
    failures.sort(key=lambda f: codes[f.rsplit(" ", 1)[1]])
    assert not failures, (f"{len(failures)} of {calls} calls failed (JARVIS_FUZZ_SEED={SEED}):\n"
                          + "\n".join(failures[:40]))
    assert "Traceback" not in fuzzed.output, fuzzed.output[fuzzed.output.index("Traceback") - 500:][
        :5000]


def test_the_suite_covers_every_rpc() -> None:
    """The enumeration finds every service, unary and streaming RPCs alike."""
    services = {m.containing_service.name for m in METHODS}
    assert {"MemoryService", "WatchService", "CollectionService", "AdminService"} <= services
    assert any(m.server_streaming for m in METHODS)
