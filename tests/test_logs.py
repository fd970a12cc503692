"""--log-format json, --access-log, --slow-call-ms, and grpc's debug chatter kept out.

Logging does not depend on the backend: these daemons run on SQLite files.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from conftest import Daemon
from jarvis.memory.v1 import memory_pb2, memory_pb2_grpc
from jarvis_memory import Client, NotFound, Unauthenticated
from jarvis_memory_server.config import add_serve_arguments, from_args

NAMESPACE = "logs-ns"
CONTENT = "log-body-3c9e1f never to be logged"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CALL_FIELDS = ("method", "namespace", "code", "duration_ms", "peer", "credential")
# A line of the text format from a library's logger (grpc's, asyncio's).
LIBRARY_LINE = re.compile(r"^\S+ \S+ [A-Z]+ (grpc|asyncio)[.:]", re.MULTILINE)


class JsonDaemon:
    """A daemon logging JSON with the access log on, auth on, and an API token to call with."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.daemon = Daemon(tmp_path_factory.mktemp("logs") / "jarvis.db",
                             "--log-format", "json", "--access-log")
        created = self.daemon.run_cli("token", "create", "--role", "admin",
                                      "--namespace", "*", "--label", "logs")
        assert created.returncode == 0, created.stderr
        self.token = created.stdout.strip()
        self.token_id = self.token.split("_")[1]
        self.daemon.start()

    def entries(self) -> list[dict[str, Any]]:
        """Every line of the daemon's output, parsed (each must be a JSON object)."""
        entries = []
        for line in self.daemon.output.splitlines():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            entries.append(entry)
        return entries

    def wait_for_entry(self, **fields: Any) -> dict[str, Any]:
        """The first entry with these fields, once the daemon has logged it."""
        pattern = ".*".join(re.escape(json.dumps({k: v})[1:-1]) for k, v in fields.items())
        self.daemon.wait_for_log(pattern)
        return next(e for e in self.entries() if all(e.get(k) == v for k, v in fields.items()))


@pytest.fixture(scope="module")
def json_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JsonDaemon]:
    d = JsonDaemon(tmp_path_factory)
    yield d
    assert d.daemon.stop() == 0, d.daemon.output
    output = d.daemon.output
    # Never a token, its secret, or a request's content.
    assert d.token not in output and d.token.rsplit("_", 1)[1] not in output
    assert CONTENT not in output and "log-body" not in output
    d.entries()  # still one JSON object per line, shutdown included


def test_every_line_is_a_json_object(json_daemon: JsonDaemon) -> None:
    entries = json_daemon.entries()
    assert any("serving on" in e["message"] for e in entries)
    for entry in entries:
        assert RFC3339_UTC.fullmatch(entry["time"]), entry
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert entry["logger"].startswith("jarvis_memory"), entry
        assert isinstance(entry["message"], str)


def test_access_lines_carry_the_call_and_the_credential(json_daemon: JsonDaemon) -> None:
    with Client(json_daemon.daemon.addr, token=json_daemon.token) as jm:
        memory = jm.add_memory(CONTENT, category="fact", source="user_explicit",
                               namespace=NAMESPACE)
        with pytest.raises(NotFound):
            jm.get_memory(memory.id + 1000, namespace=NAMESPACE)
    entry = json_daemon.wait_for_entry(logger="jarvis_memory.access", method="AddMemory")
    assert entry["level"] == "INFO"
    assert entry["service"] == "jarvis.memory.v1.MemoryService"
    assert entry["namespace"] == NAMESPACE and entry["code"] == "OK"
    assert isinstance(entry["duration_ms"], float) and 0 < entry["duration_ms"] < 30_000
    assert re.fullmatch(r"ipv[46]:.+:\d+", entry["peer"]), entry
    assert entry["credential"] == f"token:{json_daemon.token_id}"
    assert entry["message"].startswith(f"AddMemory ns={NAMESPACE} OK ")
    # A failed call: the access line, and the failure line with the same fields.
    failed = json_daemon.wait_for_entry(logger="jarvis_memory.access", method="GetMemory")
    assert failed["code"] == "NOT_FOUND" and failed["namespace"] == NAMESPACE
    failure = json_daemon.wait_for_entry(logger="jarvis_memory.rpc", method="GetMemory")
    assert failure["message"].startswith("rpc GetMemory failed: NOT_FOUND")
    assert set(CALL_FIELDS) <= set(failure)
    assert failure["code"] == "NOT_FOUND" and failure["namespace"] == NAMESPACE
    assert failure["credential"] == f"token:{json_daemon.token_id}"


def test_a_call_without_a_credential(json_daemon: JsonDaemon) -> None:
    with grpc.insecure_channel(json_daemon.daemon.addr) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListMemories(memory_pb2.ListMemoriesRequest(namespace="logs-anonymous"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    entry = json_daemon.wait_for_entry(logger="jarvis_memory.access", method="ListMemories")
    assert entry["code"] == "UNAUTHENTICATED" and entry["credential"] is None
    assert entry["namespace"] == "logs-anonymous"
    with Client(json_daemon.daemon.addr, token="jmt_0123456789ab_not-a-real-secret") as jm, \
            pytest.raises(Unauthenticated):
        jm.list_memories(namespace=NAMESPACE)
    assert "not-a-real-secret" not in json_daemon.daemon.output


def test_no_slow_call_lines_when_off(json_daemon: JsonDaemon) -> None:
    access = [e for e in json_daemon.entries() if e["logger"] == "jarvis_memory.access"]
    assert access and all(e["level"] == "INFO" for e in access)


def test_slow_calls_in_text_and_no_grpc_chatter_at_debug(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    d = Daemon(tmp_path_factory.mktemp("slow") / "jarvis.db",
               "--log-level", "DEBUG", "--slow-call-ms", "0.001").start()
    try:
        with d.client() as jm:
            jm.add_memory(CONTENT, category="fact", source="user_explicit", namespace="logs-slow")
        line = d.wait_for_log(r"WARNING jarvis_memory\.access: AddMemory .*").group(0)
        assert re.fullmatch(
            r"WARNING jarvis_memory\.access: AddMemory ns=logs-slow OK [0-9.]+ms "
            r"peer=ipv[46]:\S+:\d+ credential=- \(slower than 0\.001 ms\)", line), line
    finally:
        assert d.stop() == 0, d.output
    output = d.output
    assert " DEBUG jarvis_memory" in output  # DEBUG is on, for the daemon's own loggers
    assert not LIBRARY_LINE.search(output), LIBRARY_LINE.search(output)
    assert "INFO jarvis_memory.access" not in output  # --access-log is off
    assert "metrics on" not in output  # metrics are off by default
    assert CONTENT not in output


def test_grpc_debug_lets_grpc_chatter_through(tmp_path_factory: pytest.TempPathFactory) -> None:
    d = Daemon(tmp_path_factory.mktemp("grpc-debug") / "jarvis.db",
               "--log-level", "DEBUG", "--grpc-debug").start()
    try:
        d.wait_for_log(r"DEBUG (grpc|asyncio)[.:]")
    finally:
        assert d.stop() == 0, d.output


def test_log_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*argv: str) -> Any:
        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        return from_args(parser.parse_args(argv))

    config = parse()
    assert (config.log_format, config.access_log, config.slow_call_ms, config.grpc_debug) == (
        "text", False, 0.0, False)
    config = parse("--log-format", "json", "--access-log", "--slow-call-ms", "250",
                   "--grpc-debug")
    assert (config.log_format, config.access_log, config.slow_call_ms, config.grpc_debug) == (
        "json", True, 250.0, True)
    for name, value in (("LOG_FORMAT", "json"), ("ACCESS_LOG", "1"), ("SLOW_CALL_MS", "0.5"),
                        ("GRPC_DEBUG", "true")):
        monkeypatch.setenv(f"JARVIS_MEMORY_{name}", value)
    config = parse()
    assert (config.log_format, config.access_log, config.slow_call_ms, config.grpc_debug) == (
        "json", True, 0.5, True)
    monkeypatch.setenv("JARVIS_MEMORY_ACCESS_LOG", "0")
    assert parse().access_log is False
    with pytest.raises(SystemExit):
        parse("--slow-call-ms", "-1")
    with pytest.raises(SystemExit):
        parse("--log-format", "xml")
