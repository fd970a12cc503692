"""Operations: full disks, --max-db-size, a bounded WAL, start-up after a crash."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from conftest import Daemon
from jarvis_memory import Client, JarvisMemoryError

FILLER = "x" * 600  # makes each memory take room


def memories(tag: str, n: int) -> list[dict[str, object]]:
    return [{"content": f"{tag} memory {i} {FILLER}", "category": "fact",
             "source": "user_explicit"} for i in range(n)]


def fill_until_refused(jm: Client, limit: int = 100_000) -> tuple[list[int], JarvisMemoryError]:
    """Add memories, 20 a call, until the daemon refuses; return their ids and the refusal."""
    ids: list[int] = []
    for batch in range(limit):
        try:
            ids += [m.id for m in jm.add_memories(memories(f"fill {batch}", 20))]
        except JarvisMemoryError as exc:
            return ids, exc
    raise AssertionError(f"{len(ids)} memories written and still no refusal")


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def wal_size(db: Path) -> int:
    try:
        return os.stat(f"{db}-wal").st_size
    except FileNotFoundError:
        return 0


def check_full_then_freed(d: Daemon, expected_reason: str, message: str) -> None:
    """Fill the daemon's database until refused; reads go on; deletes make room again."""
    with d.client(retry=None, timeout=30) as jm:
        kept = jm.add_memory("written before the disk filled up", category="fact",
                             source="user_explicit")
        ids, refusal = fill_until_refused(jm)
        assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal
        assert refusal.reason == expected_reason and message in refusal.message, refusal
        assert len(ids) > 20
        # Reads keep working, and so does refusing again.
        assert jm.get_memory(kept.id).content == "written before the disk filled up"
        assert len(jm.list_memories(page_size=50)) == 50
        with pytest.raises(JarvisMemoryError) as again:
            jm.add_memory("one more " + FILLER, category="fact", source="user_explicit")
        assert again.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Deletes work, and free room that new writes take by themselves.
        for memory_id in ids[: len(ids) // 2]:
            jm.delete_memory(memory_id)
        after = jm.add_memories(memories("after the deletes", 20))
        assert jm.get_memory(after[-1].id).content.startswith("after the deletes")
        assert jm.get_memory(kept.id).content == "written before the disk filled up"
    assert d.stop() == 0  # the final checkpoint found the room it needs
    assert "stopped cleanly" in d.output


def test_max_db_size_refuses_new_data_and_deletes_make_room(tmp_path: Path) -> None:
    db = tmp_path / "jarvis.db"
    d = Daemon(db, "--max-db-size", "2M").start()
    try:
        check_full_then_freed(d, "DB_SIZE_LIMIT", "the database has reached --max-db-size")
    finally:
        d.kill()
    assert db.stat().st_size <= 2 * 1024 * 1024
    assert "refusing writes that add data" in d.output
    assert "writes that add data are accepted again" in d.output


def test_max_db_size_is_read_from_the_environment(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db", env={"JARVIS_MEMORY_MAX_DB_SIZE": "1536K"}).start()
    try:
        with d.client(retry=None) as jm:
            _, refusal = fill_until_refused(jm)
        assert "--max-db-size (1572864 bytes)" in refusal.message
    finally:
        assert d.stop() == 0


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *options: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``folder`` (root only; the test is skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)), "tmpfs",
         str(folder)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_keeps_reads_and_deletes_working(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "8m") as folder:
        d = Daemon(folder / "jarvis.db")
        try:
            d.start()
            check_full_then_freed(d, "DISK_FULL", "the disk holding the database is nearly full")
        finally:
            d.kill()
        assert "Traceback" not in d.output


def test_the_wal_stays_bounded_under_ingest_and_is_truncated_when_idle(tmp_path: Path) -> None:
    db = tmp_path / "jarvis.db"
    d = Daemon(db, "--max-wal-size", "2M", "--checkpoint-interval", "0.1").start()
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], wal_size(db))
            time.sleep(0.005)

    def read(jm: Client) -> None:  # readers keep snapshots open all the time
        while not stop.is_set():
            jm.list_memories(page_size=100)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with d.client(timeout=30) as jm, d.client() as reader:
            readers = [threading.Thread(target=read, args=(reader,)) for _ in range(2)]
            for t in readers:
                t.start()
            written = 0
            for batch in range(60):  # 30,000 memories: about 60 MB through the WAL
                jm.add_memories(memories(f"ingest {batch}", 500))
                written += 500
            stop.set()
            for t in readers:
                t.join()
        sampler.join()
        size = db.stat().st_size
        assert size > 16 * 2**20, size  # far more went through the WAL than its bound
        # The bound, plus what arrives while a checkpoint catches up (a few batches).
        assert peak[0] < 12 * 2**20, (peak[0], d.output)
        assert "checkpointed and rewound it" in d.output
        wait_until(lambda: wal_size(db) == 0)  # idle: truncated to nothing
    finally:
        stop.set()
        sampler.join()
        assert d.stop() == 0


def test_start_up_after_kill_9_with_a_full_wal_is_fast(tmp_path: Path) -> None:
    db = tmp_path / "jarvis.db"
    d = Daemon(db, "--max-wal-size", "16M").start()
    try:
        with d.client(timeout=30) as jm:
            for batch in range(20):
                jm.add_memories(memories(f"before the crash {batch}", 500))
            last = jm.add_memory("the last acknowledged write", category="fact",
                                 source="user_explicit")
        assert wal_size(db) > 1024 * 1024  # there is a WAL to recover
    finally:
        d.kill()
    d.start()
    try:
        ready = re.search(r"ready in (\d+) ms", d.output)
        assert ready is not None and int(ready.group(1)) < 1000, d.output
        with d.client() as jm:
            assert jm.get_memory(last.id).content == "the last acknowledged write"
    finally:
        assert d.stop() == 0
