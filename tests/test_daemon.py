"""The daemon as a process: start-up checks, persistence, crash safety, health, reflection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import apsw
import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import Daemon, kill_under_writes, run_daemon_expecting_failure
from jarvis_memory import Client, JarvisMemoryError
from jarvis_memory_server.store.postgres import WRITE_LOCK


def open_file(path: Path) -> apsw.Connection:
    return apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)


def test_creates_missing_folders_and_uses_wal(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "deeper" / "jarvis.db"
    d = Daemon(db).start()
    try:
        with d.client() as jm:
            jm.add_memory("folders are created", category="fact", source="user_explicit")
    finally:
        assert d.stop() == 0
    assert db.exists()
    conn = open_file(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1


def test_everything_survives_a_restart(db_target: Path | str) -> None:
    d = Daemon(db_target).start()
    with d.client() as jm:
        kept = [jm.add_memory(f"persistent fact {i}", category="fact", source="user_explicit")
                for i in range(20)]
        jm.update_memory(kept[0].id, stale=True)
        jm.delete_memory(kept[1].id)
        restated = jm.add_memory("PERSISTENT fact 2", category="fact", source="user_explicit")
    assert d.stop() == 0
    assert "stopped cleanly" in d.output
    assert "migration 1" in d.output or "created the schema" in d.output

    d.start()
    try:  # already at the latest version
        assert "migration" not in d.output and "created the schema" not in d.output
        with d.client() as jm:
            stored = list(jm.iter_memories())
            assert [m.id for m in stored] == [m.id for m in kept[::-1] if m.id != kept[1].id]
            assert jm.get_memory(kept[0].id).stale
            assert jm.get_memory(kept[2].id).restated_count == 1
            # The revision counter continues where it stopped.
            newer = jm.add_memory("after restart", category="fact", source="user_explicit")
            assert newer.revision > restated.revision
            assert newer.id > kept[-1].id
    finally:
        assert d.stop() == 0


def test_acknowledged_writes_survive_kill_9(db_target: Path | str) -> None:
    d = Daemon(db_target).start()

    def write(jm: Client, n: int, i: int) -> tuple[int, str]:
        content = f"writer {n} fact {i}"
        return jm.add_memory(content, category="fact", source="agent_inferred").id, content

    acknowledged = kill_under_writes(d, write, enough=400)

    d.start()
    try:
        with d.client() as jm:
            stored = {m.id: m.content for m in jm.iter_memories(page_size=1000)}
        for memory_id, content in acknowledged:
            assert stored.get(memory_id) == content
    finally:
        assert d.stop() == 0
    if not d.on_postgres:  # (PostgreSQL checks its own pages)
        assert open_file(Path(d.db_path)).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sigterm_exits_zero_and_closes_the_wal(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()
    with d.client() as jm:
        jm.add_memory("checkpointed on exit", category="fact", source="user_explicit")
    assert d.stop() == 0
    wal = Path(str(d.db_path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_refuses_a_schema_newer_than_the_code(tmp_path: Path) -> None:
    db = tmp_path / "jarvis.db"
    d = Daemon(db).start()
    assert d.stop() == 0
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    result = run_daemon_expecting_failure(db)
    assert result.returncode == 2
    assert "schema is version 999, newer than this daemon supports" in result.stderr


def test_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "jarvis.db"
    db.write_bytes(b"this is a text file, not a database\n" * 200)
    result = run_daemon_expecting_failure(db)
    assert result.returncode == 2
    assert "is not a usable SQLite database" in result.stderr
    assert db.read_bytes().startswith(b"this is a text file")


def test_refuses_somebody_elses_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE memories (x)")
    conn.close()
    result = run_daemon_expecting_failure(db)
    assert result.returncode == 2
    assert "not a jarvis-memory database" in result.stderr


def test_refuses_an_address_it_cannot_bind(tmp_path: Path) -> None:
    result = run_daemon_expecting_failure(tmp_path / "jarvis.db", "--addr", "256.1.1.1:1",
                                          "--insecure")
    assert result.returncode == 2
    assert "cannot listen on 256.1.1.1:1" in result.stderr


def test_health_reports_serving(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "jarvis.memory.v1.MemoryService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in response.list_services_response.service}
    assert {"jarvis.memory.v1.MemoryService", "grpc.health.v1.Health"} <= names


def test_failed_calls_are_logged_with_method_and_status(daemon: Daemon) -> None:
    with Client(daemon.addr) as jm, pytest.raises(JarvisMemoryError):
        jm.get_memory(987654321)
    # The log reaches the test through a pipe: wait for the line rather than race it.
    daemon.wait_for_log(r"rpc GetMemory failed: NOT_FOUND memory 987654321")


def test_durability_full_is_accepted_from_the_environment(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db", env={"JARVIS_MEMORY_DURABILITY": "full"}).start()
    try:
        assert "durability full" in d.output
        with d.client() as jm:
            m = jm.add_memory("fsynced", category="fact", source="user_explicit")
            assert jm.get_memory(m.id).content == "fsynced"
    finally:
        assert d.stop() == 0


def test_python_dash_m_and_help_work(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "jarvis_memory_server", "serve", "--help"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for flag in ("--addr", "--db", "--durability", "JARVIS_MEMORY_ADDR", "JARVIS_MEMORY_DB"):
        assert flag in result.stdout


class WriteLockHolder:
    """Another process holding the database's write lock (SQLite's, or the daemons' on
    PostgreSQL: the advisory lock every write batch takes)."""

    def __init__(self, d: Daemon) -> None:
        if d.on_postgres:
            self.pg = psycopg.connect(str(d.db_path), autocommit=True)
            self.pg.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})".encode())
        else:
            self.sqlite = apsw.Connection(str(d.db_path))
            self.sqlite.execute("BEGIN IMMEDIATE")
        self.on_postgres = d.on_postgres

    def release(self) -> None:
        if self.on_postgres:
            self.pg.execute("ROLLBACK")
            self.pg.close()
        else:
            self.sqlite.execute("ROLLBACK")
            self.sqlite.close()


def test_a_lock_held_by_another_process_is_unavailable_and_reads_go_on(
        db_target: Path | str) -> None:
    d = Daemon(db_target, "--busy-timeout-ms", "250").start()
    with d.client(retry=None) as jm:
        kept = jm.add_memory("written before the lock", category="fact", source="user_explicit")
        other = WriteLockHolder(d)  # another process takes the write lock
        try:
            with pytest.raises(JarvisMemoryError) as info:
                jm.add_memory("blocked", category="fact", source="user_explicit")
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert "busy" in info.value.message
            assert jm.get_memory(kept.id).content == "written before the lock"
        finally:
            other.release()
        assert jm.add_memory("after the lock", category="fact", source="user_explicit").id > kept.id
    assert d.stop() == 0


def test_sigterm_under_load_finishes_in_flight_calls_and_loses_nothing(db_target: Path | str) -> None:
    d = Daemon(db_target).start()
    acknowledged: list[int] = []
    failures: list[grpc.StatusCode] = []
    lock = threading.Lock()
    started = threading.Event()

    def writer(n: int) -> None:
        with d.client(retry=None, timeout=10) as jm:
            for i in range(10_000):
                try:
                    m = jm.add_memory(f"shutdown writer {n} fact {i}", category="fact",
                                      source="agent_inferred")
                except JarvisMemoryError as exc:
                    with lock:
                        failures.append(exc.code)
                    return
                with lock:
                    acknowledged.append(m.id)
                started.set()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    assert started.wait(30)
    assert d.stop() == 0  # SIGTERM while 8 clients write
    for t in threads:
        t.join(30)
    assert "stopped cleanly" in d.output
    # Calls arriving after the stop began are refused, never half-done.
    assert set(failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    if not d.on_postgres:
        assert open_file(Path(d.db_path)).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {row[0] for row in d.query("SELECT id FROM memories")}
    assert set(acknowledged) <= stored


def refused(db: Path, *args: str, env: dict[str, str] | None = None,
            addr: str = "127.0.0.1:0") -> str:
    """Start a daemon that must refuse to start: exit status 2, and one line on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "jarvis_memory_server", "serve", "--addr", addr, "--db", str(db),
         *args], capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "env", "message"), [
    (("--tls-cert", "/nonexistent/server.crt", "--tls-key", "/nonexistent/server.key"), {},
     "cannot read a TLS file"),
    (("--addr", "0.0.0.0:0"), {}, "refusing to listen on 0.0.0.0:0 with auth off"),
    (("--addr", "localhost"), {}, "'localhost' is not host:port (the port is required"),
    (("--addr", "[::1:50051"), {}, "is not host:port"),
    ((), {"JARVIS_MEMORY_BUSY_TIMEOUT_MS": "soon"}, "--busy-timeout-ms: invalid int value"),
    (("--max-db-size", "10 parsecs"), {}, "'10 parsecs' is not a size"),
    (("--max-db-size", "512K"), {}, "must be 0 (no limit) or at least 1M"),
    (("--max-wal-size", "0"), {}, "--max-wal-size: must be at least 1M"),
    ((), {"JARVIS_MEMORY_VERIFY": "maybe"}, "--verify: must be auto, always or never"),
])
def test_misconfigurations_are_refused_before_any_file_is_made(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    folder = tmp_path / "data"
    line = refused(folder / "jarvis.db", *args, env=env)
    assert message in line
    assert not folder.exists()  # neither the database nor its folder or lock file


def test_a_port_in_use_is_refused_before_the_database_is_made(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(tmp_path / "data" / "jarvis.db", addr=f"127.0.0.1:{port}")
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert not (tmp_path / "data").exists()


def test_db_below_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    line = refused(tmp_path / "plain" / "jarvis.db")
    assert "plain is a file, not a folder" in line


def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # permissions do not stop root: a read-only mount does
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                               capture_output=True, text=True)
        if mount.returncode != 0:
            pytest.skip(f"cannot mount a read-only file system here: {mount.stderr.strip()}")
    else:
        folder.chmod(0o555)
    try:
        line = refused(folder / "jarvis.db")
        assert f"cannot write in {folder}" in line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.chmod(0o755)


def test_a_negative_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "jarvis.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA user_version = -1")
    conn.close()
    assert "schema version -1 (PRAGMA user_version)" in refused(db)


def test_a_file_with_corrupt_pages_is_refused_with_data_loss(tmp_path: Path) -> None:
    db = tmp_path / "jarvis.db"
    d = Daemon(db).start()
    try:
        with d.client() as jm:
            jm.add_memories([{"content": f"to be damaged {i} " + "y" * 300, "category": "fact",
                              "source": "user_explicit"} for i in range(500)])
    finally:
        assert d.stop() == 0
    conn = apsw.Connection(str(db))
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'memories'").fetchone()[0]
    conn.close()
    with db.open("r+b") as file:  # scribble over the memories table's root page
        file.seek((root - 1) * page)
        file.write(b"\xa5" * page)
    line = refused(db)
    assert f"DATA_LOSS: {db} is corrupt" in line and "jarvis-memory restore" in line
