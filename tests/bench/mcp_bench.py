"""remember and recall through jarvis-memory-mcp over stdio, at 1k and at 100k memories.

The MCP server runs as a desktop client would launch it (stdio), driven by the official MCP
client, against a daemon this script starts on a temporary SQLite file. For each size the
namespace is first filled through AddMemories, then ``--calls`` remember calls (new facts)
and ``--calls`` recall calls of two kinds run one at a time: "recall" asks for one stored fact
by a word only it holds (its note number) among common ones, "recall_common" only with words
that every fifth memory or more holds (the corpus has few distinct words: the keyword search's
worst case). p50 and p99 are per call, as the agent waits for them. The target: p50 under
10 ms at 100k memories, flat as the memories grow.

Run: `.venv/bin/python tests/bench/mcp_bench.py` (part of `make bench`); results go to
bench-results-mcp.json at the repo root.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from jarvis.memory.v1 import memory_pb2, memory_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CATEGORIES, SOURCE, WHAT, WHO, LocalDaemon, Sentences

RESULTS_PATH = Path(__file__).resolve().parents[2] / "bench-results-mcp.json"
NAMESPACE = "mcp-bench"
SIZES = (1_000, 100_000)


async def fill_to(stub: memory_pb2_grpc.MemoryServiceStub, sentences: Sentences,
                  have: int, want: int) -> None:
    """Add memories until the namespace holds ``want`` (1000 a call, two calls in flight)."""
    batches = iter(range(have, want, 1000))

    async def loader() -> None:
        for start in batches:
            await stub.AddMemories(memory_pb2.AddMemoriesRequest(namespace=NAMESPACE, memories=[
                memory_pb2.NewMemory(content=sentences(), category=CATEGORIES[i % 3],
                                     source=SOURCE, subject="bench")
                for i in range(min(1000, want - start))]))

    await asyncio.gather(loader(), loader())


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(statistics.median(samples) * 1000, 2),
            "p99_ms": round(cuts[98] * 1000, 2)}


async def timed(session: ClientSession, tool: str, arguments: list[dict[str, Any]]) -> list[float]:
    samples = []
    for args in arguments:
        started = time.perf_counter()
        result = await session.call_tool(tool, args)
        samples.append(time.perf_counter() - started)
        if result.is_error:
            raise RuntimeError(f"{tool} failed: {result.content}")
    return samples


async def run(addr: str, calls: int) -> list[dict[str, Any]]:
    sentences = Sentences("mcp")
    common = itertools.cycle(f"{who.lower()} {what}" for who in WHO for what in WHAT)
    numbers = itertools.count(7, 331)  # note numbers spread over what was stored
    params = StdioServerParameters(
        command=str(Path(sys.executable).with_name("jarvis-memory-mcp")),
        args=["--target", addr, "--namespace", NAMESPACE])
    results: list[dict[str, Any]] = []
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        have = 0
        async with (stdio_client(params) as (read, write),
                    ClientSession(read, write) as session):
            await session.initialize()
            for size in SIZES:
                t0 = time.perf_counter()
                await fill_to(stub, sentences, have, size)
                have = size
                print(f"{size} memories ({time.perf_counter() - t0:.1f} s to fill)", flush=True)
                await timed(session, "recall", [{"query": "warm up"}] * 20)
                for name, tool, arguments in (
                    ("remember", "remember", [{"content": sentences()} for _ in range(calls)]),
                    ("recall", "recall", [
                        {"query": f"{next(common)} mcp-{next(numbers) % size + 1}", "limit": 10}
                        for _ in range(calls)]),
                    ("recall_common", "recall",
                     [{"query": next(common), "limit": 10} for _ in range(calls)]),
                ):
                    row = {"tool": name, "memories": size, "calls": calls,
                           **percentiles(await timed(session, tool, arguments))}
                    have += calls if name == "remember" else 0
                    results.append(row)
                    print(f"  {name:<13} p50 {row['p50_ms']:7.2f} ms   p99 {row['p99_ms']:7.2f} ms",
                          flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300, help="calls per tool and size")
    args = parser.parse_args()
    daemon = LocalDaemon()
    try:
        results = asyncio.run(run(daemon.start(), args.calls))
    finally:
        daemon.stop()
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
