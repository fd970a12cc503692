"""The PostgreSQL backend as an operator meets it: start-up checks, the server going away."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import BACKENDS, Daemon, Postgres, run_daemon_expecting_failure
from jarvis_memory import Unavailable

pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL only")


@pytest.fixture(scope="module")
def own_server() -> Iterator[Postgres]:
    """A server of this module's own: the tests stop it."""
    folder = Path(tempfile.mkdtemp(prefix="jarvis-memory-pg-"))
    server = Postgres(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_the_server_going_away_is_unavailable_and_the_daemon_recovers_by_itself(
        own_server: Postgres) -> None:
    d = Daemon(own_server.new_database()).start()
    try:
        with d.client(retry=None, timeout=10) as jm:
            kept = jm.add_memory("written before the outage", category="fact",
                                 source="user_explicit")
            own_server.pause()
            try:
                for call in (lambda: jm.add_memory("during", category="fact",
                                                   source="user_explicit"),
                             lambda: jm.get_memory(kept.id)):
                    with pytest.raises(Unavailable, match="PostgreSQL"):
                        call()
            finally:
                own_server.resume()
            assert jm.get_memory(kept.id).content == "written before the outage"
            after = jm.add_memory("written after the outage", category="fact",
                                  source="user_explicit")
            assert after.revision == kept.revision + 1
        assert d.proc is not None and d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.output


def test_a_bad_url_is_one_clear_line_at_start_up(tmp_path: Path) -> None:
    unreachable = f"postgresql://jm@/jarvis?host={tmp_path}&connect_timeout=2"
    result = run_daemon_expecting_failure(unreachable)
    assert result.returncode == 2
    assert "unreachable" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "secret" not in run_daemon_expecting_failure(
        f"postgresql://jm:secret@/jarvis?host={tmp_path}").stderr


def test_a_newer_schema_and_a_foreign_database_are_refused(postgres: Postgres) -> None:
    url = postgres.new_database()
    d = Daemon(url).start()
    assert d.stop() == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('UPDATE "jarvis_memory_schema" SET "version" = "version" + 1')
    result = run_daemon_expecting_failure(url)
    assert result.returncode == 2 and "newer than this daemon supports" in result.stderr

    foreign = postgres.new_database()
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id bigint primary key)")
    result = run_daemon_expecting_failure(foreign)
    assert result.returncode == 2 and "not a jarvis-memory database" in result.stderr


def test_a_schema_11_database_gets_the_lifecycle_at_start_up(postgres: Postgres) -> None:
    """Migration 12 on PostgreSQL: the memory lifecycle's columns, indexes and history."""
    url = postgres.new_database()
    d = Daemon(url).start()
    with d.client(namespace="upgrade") as jm:
        kept = jm.add_memory("Keeps bees", category="fact", source="user_explicit")
    assert d.stop() == 0
    with psycopg.connect(url, autocommit=True) as conn:  # back to what schema 11 had
        conn.execute('DROP TABLE "memory_history"')
        conn.execute('DROP INDEX "memories_expires_at"')
        conn.execute('DROP INDEX "memories_dated_namespace"')
        for column in ("superseded_by", "superseded_at", "supersedes", "valid_from", "valid_to",
                       "expires_at", "created_by"):
            conn.execute(f'ALTER TABLE "memories" DROP COLUMN "{column}"')
        conn.execute('UPDATE "jarvis_memory_schema" SET "version" = 11')
    d = Daemon(url).start()
    try:
        with d.client(namespace="upgrade") as jm:
            assert jm.get_memory(kept.id).content == "Keeps bees"
            new = jm.add_memory("Keeps bees and hens", category="fact", source="user_explicit",
                                supersedes=[kept.id])
            assert jm.get_memory(kept.id).superseded_by == new.id
            assert [v.operation for v in jm.get_memory_history(kept.id)] == [
                "create", "supersede"]
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute('SELECT "version" FROM "jarvis_memory_schema"').fetchone() == (12,)
    finally:
        assert d.stop() == 0
