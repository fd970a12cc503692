"""--metrics-addr: Prometheus metrics, /livez and /readyz, from a real daemon over real HTTP."""

from __future__ import annotations

import argparse
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Collector, Daemon, database_for, run_daemon_expecting_failure
from jarvis.memory.v1 import memory_pb2, memory_pb2_grpc, search_pb2
from jarvis_memory_server import __version__
from jarvis_memory_server.config import add_serve_arguments, from_args

METRICS_LINE = r"metrics on http://(\S+)/metrics"
# A namespace and a content no scrape may ever show (labels never carry client text).
NAMESPACE = "metrics-ns-7f3a9c"
CONTENT = "metrics-body-51d2e0 the quick brown fox"
SERVICE = "jarvis.memory.v1.MemoryService"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_get(addr: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(addr: str) -> tuple[str, Samples]:
    status, text = http_get(addr, "/metrics")
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def call_labels(method: str, service: str = SERVICE, kind: str = "unary") -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": service, "grpc_method": method}


def poll(addr: str, done: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    """Scrape until ``done`` holds (within a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(addr)
        if done(samples):
            return samples
        assert time.monotonic() < deadline, "the metrics never reached the expected state"
        time.sleep(0.05)


def add_request(content: str) -> memory_pb2.AddMemoryRequest:
    return memory_pb2.AddMemoryRequest(
        namespace=NAMESPACE, content=content, category=memory_pb2.MEMORY_CATEGORY_FACT,
        source=memory_pb2.MEMORY_SOURCE_USER_EXPLICIT)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, backend: str,
             request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, str]]:
    """A daemon with metrics on, and the address of its metrics server."""
    d = Daemon(database_for(backend, tmp_path_factory.mktemp("metrics"), request),
               "--metrics-addr", "127.0.0.1:0").start()
    metrics_addr = d.wait_for_log(METRICS_LINE).group(1)
    yield d, metrics_addr
    assert d.stop() == 0, d.output


@pytest.fixture(scope="module")
def memory_stub(observed: tuple[Daemon, str]) -> Iterator[memory_pb2_grpc.MemoryServiceStub]:
    with grpc.insecure_channel(observed[0].addr) as channel:
        yield memory_pb2_grpc.MemoryServiceStub(channel)


def test_calls_are_counted_by_method_and_status_code(
        observed: tuple[Daemon, str], memory_stub: memory_pb2_grpc.MemoryServiceStub) -> None:
    _, addr = observed
    _, before = scrape(addr)
    for i in range(2):
        memory_stub.AddMemory(add_request(f"{CONTENT} {i}"))
    with pytest.raises(grpc.RpcError) as missing:
        memory_stub.GetMemory(memory_pb2.GetMemoryRequest(namespace=NAMESPACE, id=987654321))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    text, after = scrape(addr)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    add, get = call_labels("AddMemory"), call_labels("GetMemory")
    assert delta("grpc_server_started_total", **add) == 2
    assert delta("grpc_server_handled_total", **add, grpc_code="OK") == 2
    assert delta("grpc_server_started_total", **get) == 1
    assert delta("grpc_server_handled_total", **get, grpc_code="NOT_FOUND") == 1
    assert delta("grpc_server_handled_total", **get, grpc_code="OK") == 0
    # The histogram: cumulative buckets ending in +Inf, which counts every handled call.
    buckets = sorted(
        (float(dict(labels)["le"]), v) for (name, labels), v in after.items()
        if name == "grpc_server_handling_seconds_bucket"
        and dict(labels)["grpc_method"] == "AddMemory")
    assert len(buckets) > 10 and buckets[-1][0] == float("inf")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    handled = sum(v for (name, labels), v in after.items()
                  if name == "grpc_server_handled_total" and dict(labels)["grpc_method"] == "AddMemory")
    assert buckets[-1][1] == handled == value(after, "grpc_server_handling_seconds_count", **add)
    assert 0 < value(after, "grpc_server_handling_seconds_sum", **add) < 60
    # No label, no sample carries what a client sent.
    assert NAMESPACE not in text and "metrics-body" not in text


def test_daemon_state_and_work(
        observed: tuple[Daemon, str], memory_stub: memory_pb2_grpc.MemoryServiceStub) -> None:
    d, addr = observed
    _, before = scrape(addr)
    response = memory_stub.AddMemory(add_request(f"{CONTENT} state"))
    memory_stub.SearchMemories(memory_pb2.SearchMemoriesRequest(
        namespace=NAMESPACE, query="quick fox", mode=search_pb2.SEARCH_MODE_KEYWORD))
    _, after = scrape(addr)
    # The change log's revision is the one the last write's response reported.
    assert response.header.revision > 0
    assert value(after, "jarvis_memory_revision") == response.header.revision
    assert value(after, "jarvis_memory_database_size_bytes") > 0
    backend = "postgresql" if d.on_postgres else "sqlite"
    assert value(after, "jarvis_memory_build_info", backend=backend, version=__version__) == 1
    if d.on_postgres:
        assert ("jarvis_memory_wal_size_bytes", ()) not in after
        assert value(after, "jarvis_memory_db_pool_size") == 8  # --db-pool-size's default
        assert 0 <= value(after, "jarvis_memory_db_pool_in_use") <= 8
        assert value(after, "jarvis_memory_db_pool_waiting") >= 0
    else:
        assert ("jarvis_memory_wal_size_bytes", ()) in after
        assert ("jarvis_memory_db_pool_size", ()) not in after
    # Group commits: at least the one holding this write, each of one write or more.
    commits = value(after, "jarvis_memory_commit_writes_count")
    assert commits - value(before, "jarvis_memory_commit_writes_count") >= 1
    assert value(after, "jarvis_memory_commit_writes_sum") >= commits
    assert value(after, "jarvis_memory_commit_duration_seconds_count") == commits
    searches = "jarvis_memory_search_duration_seconds_count"
    assert value(after, searches, mode="keyword") - value(before, searches, mode="keyword") == 1
    assert ("process_resident_memory_bytes", ()) in after


def test_watchers_and_their_streams(observed: tuple[Daemon, str]) -> None:
    d, addr = observed
    watch = call_labels("Watch", "jarvis.memory.v1.WatchService", "server_stream")
    _, before = scrape(addr)
    cancelled = value(before, "grpc_server_handled_total", **watch, grpc_code="CANCELLED")
    started = value(before, "grpc_server_started_total", **watch)
    client = d.client()
    collector = Collector(client, namespace=NAMESPACE)
    try:
        # Once this watch has started (an earlier test's stream may still be ending).
        samples = poll(addr, lambda s: value(s, "jarvis_memory_watchers") == 1 and value(
            s, "grpc_server_started_total", **watch) == started + 1)
        assert value(samples, "jarvis_memory_watch_slowest_pending_changes") == 0
        client.add_memory(f"{CONTENT} watched", category="fact", source="user_explicit",
                          namespace=NAMESPACE)
        collector.wait_for(1)
    finally:
        client.close()
    # The stream's end is counted (the client went away: CANCELLED), with its duration.
    samples = poll(addr, lambda s: value(s, "jarvis_memory_watchers") == 0 and value(
        s, "grpc_server_handled_total", **watch, grpc_code="CANCELLED") == cancelled + 1)
    assert value(samples, "grpc_server_handling_seconds_count", **watch) >= 1


def test_livez_readyz_and_other_paths(observed: tuple[Daemon, str]) -> None:
    _, addr = observed
    assert http_get(addr, "/livez") == (200, "ok\n")
    assert http_get(addr, "/readyz") == (200, "ready\n")
    status, _ = http_get(addr, "/nothing-here")
    assert status == 404


@pytest.mark.parametrize("fresh_backend", ["sqlite"], indirect=True)
def test_readyz_is_503_while_draining(db_target: Path | str) -> None:
    # A long grace period and an open Watch stream: the drain lasts until the stream ends.
    d = Daemon(db_target, "--metrics-addr", "127.0.0.1:0", "--grace-period", "60").start()
    try:
        addr = d.wait_for_log(METRICS_LINE).group(1)
        assert http_get(addr, "/readyz")[0] == 200
        client = d.client()
        Collector(client, namespace=NAMESPACE)
        poll(addr, lambda s: value(s, "jarvis_memory_watchers") == 1)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while (readiness := http_get(addr, "/readyz"))[0] != 503:
            assert time.monotonic() < deadline, f"/readyz stayed {readiness} after SIGTERM"
            time.sleep(0.02)
        assert readiness == (503, "not ready: draining\n")
        assert d.proc.poll() is None, "the daemon should still be draining"
        assert http_get(addr, "/livez")[0] == 200  # alive, only not ready
        assert scrape(addr)[1]  # and its metrics are still there
        started = time.monotonic()
        client.close()  # the last call ends: the drain is over
        assert d.wait(30) == 0, d.output
        assert time.monotonic() - started < 30
    finally:
        d.kill()


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert from_args(parser.parse_args([])).metrics_addr == ""  # off by default
    config = from_args(parser.parse_args(["--metrics-addr", "127.0.0.1:9464"]))
    assert config.metrics_addr == "127.0.0.1:9464"
    monkeypatch.setenv("JARVIS_MEMORY_METRICS_ADDR", "[::1]:9464")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert from_args(parser.parse_args([])).metrics_addr == "[::1]:9464"


def test_a_bad_or_busy_metrics_address_stops_the_start(tmp_path: Path) -> None:
    bad = run_daemon_expecting_failure(tmp_path / "bad.db", "--metrics-addr", "9464")
    assert bad.returncode == 2 and "host:port" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_daemon_expecting_failure(
            tmp_path / "busy.db", "--metrics-addr", f"127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "busy.db").exists()  # nothing written by a daemon that did not start
