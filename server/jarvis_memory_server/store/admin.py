"""SQL of the operations: the online backup copy and the row counts of GetStats."""

from __future__ import annotations

import pathlib
import threading

import apsw

from jarvis_memory_server.errors import FailedPrecondition, ResourceExhausted
from jarvis_memory_server.store.backend import Database
from jarvis_memory_server.store.failures import storage_errors, translate_error
from jarvis_memory_server.store.sqlite import Database as SqliteDatabase

# Tables counted by GetStats: kind -> the condition a row must meet to count.
COUNTED = {
    "memories": "TRUE", "sessions": "TRUE", "messages": "TRUE", "session_events": "TRUE",
    "events": "TRUE", "snapshots": "TRUE", "preferences": "TRUE", "state": "TRUE",
    "decisions": "TRUE", "collections": "TRUE",
    "tool_calls": "parent_id IS NULL", "planning_cycles": "parent_id IS NULL",
}


def backup_file(db: Database) -> SqliteDatabase:
    """The SQLite database a backup copies; FailedPrecondition on PostgreSQL."""
    if not isinstance(db, SqliteDatabase):
        raise FailedPrecondition(
            "Backup copies the daemon's SQLite file; this daemon serves a PostgreSQL database, "
            "which is backed up with PostgreSQL's own tools: pg_dump for a logical copy, "
            "pg_basebackup with WAL archiving for point-in-time recovery (README: Scaling out)",
            reason="BACKUP_NOT_SUPPORTED")
    return db


def storage_bytes(db: Database) -> tuple[int, int]:
    """(database bytes, WAL bytes): the file and its -wal on SQLite.

    On PostgreSQL: the database's size, and 0 (its WAL belongs to the whole server).
    """
    if isinstance(db, SqliteDatabase):
        wal = pathlib.Path(f"{db.path}-wal")
        return db.path.stat().st_size, wal.stat().st_size if wal.exists() else 0
    with storage_errors():
        row = db.reader.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]), 0


class BackupCopy:
    """``VACUUM INTO`` on a connection of its own, run in a worker thread; interruptible."""

    def __init__(self, db: SqliteDatabase, target: pathlib.Path) -> None:
        self._db = db
        self._target = target
        self._lock = threading.Lock()
        self._conn: apsw.Connection | None = None
        self._cancelled = False

    def run(self) -> None:
        """Write the copy to the target file (blocking). Raises ResourceExhausted (no room)."""
        conn = self._db.connect_aside()
        with self._lock:
            if self._cancelled:
                conn.close()
                return
            self._conn = conn
        try:
            conn.execute("VACUUM INTO ?", (str(self._target),))
        except apsw.FullError as exc:
            raise ResourceExhausted(
                f"no room for the backup's copy beside the database ({exc})", reason="DISK_FULL"
            ) from exc
        except apsw.Error as exc:
            raise translate_error(exc) from exc
        finally:
            with self._lock:
                self._conn = None
            conn.close()

    def interrupt(self) -> None:
        """Stop the copy (from another thread): it ends soon with an InterruptError."""
        with self._lock:
            self._cancelled = True
            if self._conn is not None:
                self._conn.interrupt()


def row_counts(db: Database) -> list[tuple[str, str, int]]:
    """(kind, namespace, rows) for every counted kind, by namespace (committed data)."""
    counts = []
    with storage_errors():
        for kind, condition in COUNTED.items():
            rows = db.reader.execute(
                f'SELECT namespace, count(*) FROM "{kind}" WHERE {condition} '
                "GROUP BY namespace ORDER BY namespace"
            )
            counts += [(kind, str(namespace), int(n)) for namespace, n in rows]
    return counts
