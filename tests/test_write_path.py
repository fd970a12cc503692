"""The group-commit write path on a real SQLite file (store layer, with a real event loop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jarvis_memory_server.errors import BatchRolledBack, NotFound
from jarvis_memory_server.service.memories import MemoryService, NewMemory
from jarvis_memory_server.store.sqlite import Database
from jarvis_memory_server.store.writes import pending_commit


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(tmp_path / "jarvis.db")
    database.open()
    yield database
    database.close()


def fact(text: str) -> NewMemory:
    return NewMemory(content=text, category="fact", source="user_explicit")


async def add_and_wait(service: MemoryService, text: str) -> tuple[int, int]:
    """What a write RPC does: wait for the writer, write, wait for the commit."""
    (row, _), revision = await service.run_write(lambda: service.add("default", fact(text)))
    assert revision is not None
    return row.id, revision


async def broken_write(db: Database) -> None:
    """A write that fails with a bug after it changed a row (never a client's doing)."""
    await db.writes.writable()
    with db.write() as txn:
        txn.cursor.execute(
            "INSERT INTO memories (namespace, content, content_hash, category, source, subject,"
            " stale, created_at, updated_at, restated_count, revision)"
            " VALUES ('default', 'half', x'00', 'fact', 'user_explicit', '', 0, 1, 1, 0, 1)"
        )
        raise RuntimeError("bug after a change")


def count_rows(db: Database) -> int:
    return int(db.reader.execute("SELECT count(*) FROM memories").fetchone()[0])


def test_concurrent_writes_share_commits_and_get_distinct_revisions(db: Database) -> None:
    service = MemoryService(db)

    async def scenario() -> list[tuple[int, int]]:
        return await asyncio.gather(*(add_and_wait(service, f"fact {i}") for i in range(200)))

    results = asyncio.run(scenario())
    revisions = [revision for _, revision in results]
    assert sorted(revisions) == list(range(1, 201))
    assert len({memory_id for memory_id, _ in results}) == 200
    assert db.writes.committed_writes == 200
    assert db.writes.commits < 200  # writes were grouped
    assert db.revision == 200
    assert count_rows(db) == 200


def test_readers_never_see_an_uncommitted_batch(db: Database) -> None:
    service = MemoryService(db)

    async def scenario() -> None:
        await db.writes.writable()
        row, _ = service.add("default", fact("not yet committed"))
        pending = pending_commit()
        assert pending is not None
        with pytest.raises(NotFound):
            service.get("default", row.id)  # same loop iteration: the batch is still open
        assert count_rows(db) == 0
        await pending.committed
        assert service.get("default", row.id).content == "not yet committed"

    asyncio.run(scenario())


def test_a_rejected_write_leaves_its_batch_intact(db: Database) -> None:
    service = MemoryService(db)

    async def failing() -> None:
        await db.writes.writable()
        service.delete("default", 424242)  # NotFound before any change

    async def scenario() -> list[object]:
        return await asyncio.gather(
            add_and_wait(service, "kept 1"), failing(), add_and_wait(service, "kept 2"),
            return_exceptions=True,
        )

    first, error, second = asyncio.run(scenario())
    assert isinstance(error, NotFound)
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert count_rows(db) == 2


def test_a_write_failing_after_changes_rolls_back_its_whole_batch(db: Database) -> None:
    service = MemoryService(db)

    async def victim() -> None:  # the write() protocol alone, without GroupCommitter.run
        await db.writes.writable()
        service.add("default", fact("in the doomed batch"))
        pending = pending_commit()
        assert pending is not None
        await pending.committed

    async def scenario() -> list[object]:
        return await asyncio.gather(victim(), broken_write(db), return_exceptions=True)

    rolled_back, cause = asyncio.run(scenario())
    assert isinstance(cause, RuntimeError)
    assert isinstance(rolled_back, BatchRolledBack)  # not acknowledged: safe to run again
    assert count_rows(db) == 0
    assert db.revision == 0

    async def after() -> tuple[int, int]:
        return await add_and_wait(service, "the next batch works")

    assert asyncio.run(after())[1] == 1


def test_a_write_whose_batch_another_write_rolled_back_runs_again(db: Database) -> None:
    """Through GroupCommitter.run (what every write RPC uses), the innocent write succeeds."""
    service = MemoryService(db)

    async def innocent() -> tuple[int, int | None]:
        (row, _), revision = await db.writes.run(
            lambda: service.add("default", fact("written beside a broken write")))
        return row.id, revision

    async def scenario() -> list[object]:
        return await asyncio.gather(innocent(), broken_write(db), return_exceptions=True)

    result, cause = asyncio.run(scenario())
    assert isinstance(cause, RuntimeError)  # the broken write failed, alone
    assert isinstance(result, tuple)
    memory_id, revision = result
    assert service.get("default", memory_id).content == "written beside a broken write"
    assert revision == db.revision == 1 and count_rows(db) == 1


def test_writes_wait_while_a_commit_runs(db: Database) -> None:
    service = MemoryService(db)

    async def scenario() -> None:
        # Two writes in one iteration make a batch that commits in the commit thread.
        first = asyncio.ensure_future(add_and_wait(service, "one"))
        second = asyncio.ensure_future(add_and_wait(service, "two"))
        while not db.writes.commit_running:
            assert not first.done(), "the batch of two was committed inline"
            await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="await writable"):
            service.add("default", fact("too early"))
        third = await add_and_wait(service, "three")  # waits for the writer, then writes
        await asyncio.gather(first, second)
        assert third[1] == 3

    asyncio.run(scenario())
    assert count_rows(db) == 3


def test_without_an_event_loop_each_write_commits_at_once(db: Database) -> None:
    service = MemoryService(db)
    row, deduplicated = service.add("default", fact("synchronous"))
    assert not deduplicated and pending_commit() is None
    assert service.get("default", row.id).content == "synchronous"
    assert db.revision == 1
