"""AdminService and the backup/restore commands: online backups under load, statistics."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import apsw
import grpc
import pytest

from conftest import Daemon, run_daemon_expecting_failure
from jarvis.memory.v1 import admin_pb2, admin_pb2_grpc


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
