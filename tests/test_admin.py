"""AdminService and the backup/restore commands: online backups under load, statistics."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import apsw
import grpc
import pytest

from conftest import Daemon, run_daemon_expecting_failure
from jarvis.memory.v1 import admin_pb2, admin_pb2_grpc
from jarvis_memory_server.service.admin import MAX_WAITING_BACKUPS


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jarvis_memory_server", *args],
                          capture_output=True, text=True, timeout=120)


def test_backup_under_write_load_restores_every_acknowledged_write(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "live" / "jarvis.db").start()
    acknowledged: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(n: int) -> None:
        with d.client() as jm:
            i = 0
            while not stop.is_set():
                m = jm.add_memory(f"writer {n} fact {i}", category="fact", source="agent_inferred")
                with lock:
                    acknowledged.append(m.id)
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        with d.client() as jm:  # some data first, so that the copy has something to prove
            jm.add_memories([{"content": f"bulk {i}", "category": "fact",
                              "source": "user_explicit"} for i in range(1000)])
        with lock:
            before_backup = list(acknowledged)
        backup = tmp_path / "nightly.db"
        result = cli("backup", "--out", str(backup), "--addr", d.addr)
        assert result.returncode == 0, result.stderr
        assert "wrote" in result.stdout and not Path(f"{backup}.partial").exists()
    finally:
        stop.set()
        for t in threads:
            t.join()
        assert d.stop() == 0
    assert before_backup, "the writers never wrote"

    restored = tmp_path / "restored" / "jarvis.db"
    result = cli("restore", str(backup), "--db", str(restored))
    assert result.returncode == 0, result.stderr
    conn = apsw.Connection(str(restored), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    fresh = Daemon(restored).start()
    try:
        with fresh.client() as jm:
            stored = {m.id for m in jm.iter_memories(page_size=1000)}
            assert set(before_backup) <= stored
            assert len(stored) >= 1000 + len(before_backup)
    finally:
        assert fresh.stop() == 0


def test_restore_refuses_to_overwrite_or_to_run_beside_a_daemon(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()
    try:
        with d.client() as jm:
            jm.add_memory("to back up", category="fact", source="user_explicit")
        backup = tmp_path / "copy.db"
        assert cli("backup", "--out", str(backup), "--addr", d.addr).returncode == 0
        running = cli("restore", str(backup), "--db", str(d.db_path), "--force")
        assert running.returncode == 2 and "in use" in running.stderr
    finally:
        assert d.stop() == 0
    refused = cli("restore", str(backup), "--db", str(d.db_path))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert cli("restore", str(backup), "--db", str(d.db_path), "--force").returncode == 0
    not_a_backup = tmp_path / "junk.db"
    not_a_backup.write_bytes(b"junk" * 1000)
    bad = cli("restore", str(not_a_backup), "--db", str(tmp_path / "x.db"))
    assert bad.returncode == 2 and "not a usable SQLite database" in bad.stderr


def test_two_daemons_cannot_share_a_file(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()
    try:
        second = run_daemon_expecting_failure(tmp_path / "jarvis.db")
        assert second.returncode == 2 and "in use by another jarvis-memory process" in second.stderr
    finally:
        assert d.stop() == 0


def test_stats_count_rows_per_kind_and_namespace(daemon: Daemon, namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        jm.add_memory("counted", category="fact", source="user_explicit")
        session = jm.start_session()
        jm.append_message(session.id, role="user", content="hi")
        call = jm.start_tool_call("t")
        jm.finish_tool_call(call.id, status="succeeded")
    with grpc.insecure_channel(daemon.addr) as channel:
        stats = admin_pb2_grpc.AdminServiceStub(channel).GetStats(admin_pb2.GetStatsRequest())
    counts = {(c.kind, c.namespace): c.rows for c in stats.counts}
    assert counts[("memories", namespace)] == 1
    assert counts[("sessions", namespace)] == 1
    assert counts[("messages", namespace)] == 1
    assert counts[("session_events", namespace)] == 1  # session_start
    assert counts[("tool_calls", namespace)] == 1  # one call, though two rows
    assert stats.database_bytes > 0 and stats.header.revision > 0
    assert stats.uptime.ToTimedelta().total_seconds() > 0
    assert stats.committed_writes >= stats.commits > 0


@pytest.mark.sqlite_only("Backup copies the SQLite file (PostgreSQL: the test below)")
def test_backup_chunks_are_in_order_with_a_checksum(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        chunks = list(stub.Backup(admin_pb2.BackupRequest(chunk_size=4096)))
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Backup(admin_pb2.BackupRequest(chunk_size=-1)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(chunks) > 1 and all(len(c.data) <= 4096 for c in chunks)
    assert [c.offset for c in chunks] == [sum(len(x.data) for x in chunks[:i])
                                          for i in range(len(chunks))]
    assert sum(len(c.data) for c in chunks) == chunks[0].total_size
    assert chunks[-1].sha256 and not any(c.sha256 for c in chunks[:-1])


@pytest.mark.postgresql_only("Backup copies the SQLite file; PostgreSQL has its own tools")
def test_backup_on_postgresql_points_to_its_own_tools(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Backup(admin_pb2.BackupRequest()))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pg_dump" in str(info.value.details()) and "pg_basebackup" in str(info.value.details())


def staging_folders(db: Path) -> list[Path]:
    return [p for p in db.parent.iterdir() if ".backup-" in p.name]


def test_start_up_removes_staging_copies_a_crash_left_behind(tmp_path: Path) -> None:
    db = tmp_path / "jarvis.db"
    left = tmp_path / ".jarvis.db.backup-k1ll3d"
    older = tmp_path / ".backup-x7y8z9"  # named as before staging names had the file's name
    someone_elses = tmp_path / ".other.db.backup-abcdef"
    for folder in (left, older, someone_elses):
        folder.mkdir()
        (folder / "backup.db").write_bytes(b"\0" * 100_000)
    d = Daemon(db).start()
    try:
        assert "removed 2 backup staging copies left behind" in d.output
        assert staging_folders(db) == [someone_elses]
    finally:
        assert d.stop() == 0


def big_daemon(tmp_path: Path) -> Daemon:
    d = Daemon(tmp_path / "jarvis.db").start()
    try:
        with d.client() as jm:
            for batch in range(4):
                jm.add_memories([{"content": f"backup ballast {batch} {i} " + "z" * 800,
                                  "category": "fact", "source": "user_explicit"}
                                 for i in range(1000)])
    except BaseException:
        d.kill()
        raise
    return d


def test_a_cancelled_backup_leaves_nothing_and_the_next_one_runs(tmp_path: Path) -> None:
    d = big_daemon(tmp_path)
    try:
        with grpc.insecure_channel(d.addr) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            stream = stub.Backup(admin_pb2.BackupRequest(chunk_size=4096))
            first = next(stream)
            assert first.total_size > 1_000_000
            assert staging_folders(d.db_path) == []  # the copy is open, its name already gone
            stream.cancel()
            chunks = list(stub.Backup(admin_pb2.BackupRequest(), timeout=30))
        assert sum(len(c.data) for c in chunks) == chunks[0].total_size
        assert staging_folders(d.db_path) == []
    finally:
        assert d.stop() == 0


def test_concurrent_backups_take_turns_and_the_queue_is_bounded(tmp_path: Path) -> None:
    d = big_daemon(tmp_path)
    try:
        with grpc.insecure_channel(d.addr) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            holder = stub.Backup(admin_pb2.BackupRequest(chunk_size=4096))
            next(holder)  # the first backup holds its turn while it is not read on
            outcomes: list[object] = []
            lock = threading.Lock()

            def backup() -> None:
                try:
                    chunks = list(stub.Backup(admin_pb2.BackupRequest(),
                                              timeout=60))
                    result: object = sum(len(c.data) for c in chunks) == chunks[0].total_size
                except grpc.RpcError as exc:
                    result = exc.code()
                with lock:
                    outcomes.append(result)

            threads = [threading.Thread(target=backup) for _ in range(MAX_WAITING_BACKUPS + 1)]
            for t in threads:
                t.start()
            d.wait_for_log("rpc Backup failed: RESOURCE_EXHAUSTED a backup is running")
            assert len(staging_folders(d.db_path)) <= 1
            rest = list(holder)
            for t in threads:
                t.join(60)
        assert rest and rest[-1].sha256
        assert sorted(map(str, outcomes)) == sorted(
            [str(grpc.StatusCode.RESOURCE_EXHAUSTED)] + ["True"] * MAX_WAITING_BACKUPS)
        assert staging_folders(d.db_path) == []
    finally:
        assert d.stop() == 0


class _BrokenAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Sends part of a backup, then fails: what a daemon dying mid-stream looks like."""

    def Backup(self, request: admin_pb2.BackupRequest, context: grpc.ServicerContext
               ) -> Iterator[admin_pb2.BackupResponse]:
        yield admin_pb2.BackupResponse(offset=0, data=b"SQLite format 3\0" + b"\0" * 4080,
                                       total_size=1 << 20)
        context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon went away")


def test_a_failed_cli_backup_leaves_no_file(tmp_path: Path) -> None:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    admin_pb2_grpc.add_AdminServiceServicer_to_server(_BrokenAdmin(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    out = tmp_path / "out"
    out.mkdir()
    try:
        result = cli("backup", "--out", str(out / "nightly.db"), "--addr", f"127.0.0.1:{port}")
    finally:
        server.stop(None)
    assert result.returncode == 1 and "UNAVAILABLE: the daemon went away" in result.stderr
    assert list(out.iterdir()) == []
    unreachable = cli("backup", "--out", str(out / "nightly.db"), "--addr", "127.0.0.1:1")
    assert unreachable.returncode == 1 and list(out.iterdir()) == []
