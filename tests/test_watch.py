"""WatchService: replay then live with no gap, many watchers, resume, slow watchers, compaction."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from conftest import Collector, Daemon
from jarvis.memory.v1 import watch_pb2, watch_pb2_grpc
from jarvis_memory import Change, Client, InvalidArgument, Memory, OutOfRange, StateEntry


def committed_changes(daemon: Daemon, namespace: str, after: int) -> list[tuple[int, str, str]]:
    return daemon.query(  # type: ignore[return-value]
        "SELECT revision, kind, key FROM changes WHERE namespace = ? AND revision > ? "
        "ORDER BY revision", (namespace, after))


def test_three_watchers_see_exactly_the_committed_writes_of_four_writers(
        daemon: Daemon, namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        start = jm.add_memory("before the watch", category="fact", source="user_explicit").revision
    clients = [daemon.client(namespace=namespace) for _ in range(3)]
    watchers = [Collector(c, start_revision=start + 1) for c in clients]

    def writer(n: int) -> None:
        with daemon.client(namespace=namespace) as jm:
            for i in range(25):
                m = jm.add_memory(f"writer {n} fact {i}", category="fact", source="user_explicit")
                if i % 5 == 0:
                    jm.update_memory(m.id, stale=True)
            jm.record_event(type="status", severity="info", source="agent", summary=f"w{n} done")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = committed_changes(daemon, namespace, start)
    assert len(expected) == 4 * (25 + 5 + 1)
    for watcher in watchers:
        seen = watcher.wait_for(len(expected))
        assert [(c.revision, c.kind, c.key) for c in seen] == expected
        assert all(c.namespace == namespace for c in seen)
    for c in clients:
        c.close()


def test_kind_filters(daemon: Daemon, namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        start = jm.add_memory("anchor", category="fact", source="user_explicit").revision
        watcher = Collector(jm, kinds=["memory", "event"], start_revision=start + 1)
        jm.set_preference("ignored", 1)  # not a watched kind
        e = jm.record_event(type="alert", severity="error", source="monitor", summary="disk")
        m = jm.add_memory("seen", category="fact", source="user_explicit")
        jm.delete_memory(m.id)
        seen = watcher.wait_for(3)
    assert [(c.kind, c.key, c.operation) for c in seen] == [
        ("event", str(e.id), "create"), ("memory", str(m.id), "create"),
        ("memory", str(m.id), "delete")]
    # Each change carries the resource as it was after the change (none after a delete).
    assert seen[0].resource == e
    assert isinstance(seen[1].resource, Memory) and seen[1].resource.content == "seen"
    assert seen[1].resource.revision == seen[1].revision
    assert seen[2].resource is None


def test_from_now_skips_what_was_committed_before(daemon: Daemon, namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm, daemon.client(namespace=namespace) as w:
        before = jm.add_memory("committed before the watch", category="fact",
                               source="user_explicit").revision
        watcher = Collector(w, start_revision=0)
        # The watch registers asynchronously: write until it reports something.
        for i in range(200):
            jm.add_memory(f"probe {i}", category="fact", source="user_explicit")
            with watcher._cond:
                if watcher._cond.wait_for(lambda: bool(watcher.changes), timeout=0.05):
                    break
        seen = watcher.wait_for(1)
    assert all(c.revision > before for c in seen)
    assert seen[0].operation == "create" and seen[0].kind == "memory"


def test_resuming_from_the_last_revision_has_no_gap(daemon: Daemon, namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        start = jm.add_memory("anchor", category="fact", source="user_explicit").revision
        for i in range(10):
            jm.add_memory(f"first half {i}", category="fact", source="user_explicit")
        first: list[Change] = []
        for change in jm.watch(start_revision=start + 1):
            first.append(change)
            if len(first) == 6:
                break  # the connection is dropped here
        for i in range(10):
            jm.add_memory(f"second half {i}", category="fact", source="user_explicit")
        rest = Collector(jm, start_revision=first[-1].revision + 1).wait_for(14)
    revisions = [c.revision for c in first + rest]
    assert revisions == [r for r, _, _ in committed_changes(daemon, namespace, start)]


def test_a_stalled_watcher_does_not_hold_writers_back(db_target: Path | str) -> None:
    d = Daemon(db_target, "--watch-buffer", "50").start()
    try:
        with grpc.insecure_channel(d.addr) as channel, d.client() as jm:
            stalled = watch_pb2_grpc.WatchServiceStub(channel).Watch(
                watch_pb2.WatchRequest(start_revision=1))
            batch = [{"content": f"flood {i}", "category": "fact", "source": "user_explicit"}
                     for i in range(1000)]
            for round_ in range(5):  # 5000 changes: far more than the buffer and the window
                jm.add_memories([{**m, "content": f"{m['content']} {round_}"} for m in batch])
            assert jm.list_memories(page_size=1).next_page_token  # the writes all landed
            with pytest.raises(grpc.RpcError) as info:
                for _ in stalled:
                    pass
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "resume from revision" in info.value.details()
    finally:
        assert d.stop() == 0


def test_a_compacted_start_is_out_of_range(db_target: Path | str) -> None:
    d = Daemon(db_target, "--change-retention", "10",
               "--compact-interval", "0.05").start()
    try:
        with d.client() as jm:
            jm.add_memories([{"content": f"m{i}", "category": "fact", "source": "user_explicit"}
                             for i in range(50)])
            d.wait_for_log(r"compacted \d+ changes out of the change log")
            with pytest.raises(OutOfRange) as info:
                next(iter(jm.watch(start_revision=1)))
            assert "oldest available is" in info.value.message
            oldest = int(info.value.metadata["oldest_revision"])
            assert 1 < oldest <= 41
            replayed = Collector(jm, start_revision=oldest).wait_for(50 - oldest + 1)
            assert [c.revision for c in replayed][:3] == [oldest, oldest + 1, oldest + 2]
    finally:
        assert d.stop() == 0


def test_the_async_client_watches_too(daemon: Daemon, namespace: str) -> None:
    import asyncio

    from jarvis_memory import AsyncClient

    async def scenario() -> list[Change]:
        async with AsyncClient(daemon.addr, namespace=namespace) as jm:
            start = (await jm.add_memory("async anchor", category="fact",
                                         source="user_explicit")).revision
            for i in range(3):
                await jm.put_state(f"k{i}", i)
            seen = []
            async for change in jm.watch(start_revision=start):
                seen.append(change)
                if len(seen) == 4:
                    break
            return seen

    seen = asyncio.run(scenario())
    assert [c.kind for c in seen] == ["memory", "state", "state", "state"]
    # The resource is the StateEntry get_state returns.
    assert [c.resource.value for c in seen[1:] if isinstance(c.resource, StateEntry)] == [0, 1, 2]


def test_a_negative_start_is_invalid(jm: Client) -> None:
    with pytest.raises(InvalidArgument):
        next(iter(jm.watch(start_revision=-1)))


def test_compaction_reports_a_full_batch_so_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jarvis_memory_server.service import watch
    from jarvis_memory_server.service.memories import MemoryService, NewMemory
    from jarvis_memory_server.store.sqlite import Database

    monkeypatch.setattr(watch, "COMPACT_BATCH", 10)
    db = Database(tmp_path / "jarvis.db")
    db.open()
    try:
        MemoryService(db).add_many("ns", [NewMemory(content=f"note {i}", category="fact",
                                                    source="user_explicit") for i in range(35)])
        service = watch.WatchService(db, retention=5)
        # 30 changes lie beyond the newest 5: three full rounds, then nothing.
        assert [service.compact() for _ in range(4)] == [10, 10, 10, 0]
    finally:
        db.close()
