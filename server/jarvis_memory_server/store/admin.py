"""SQL of the operations: the online backup copy and the row counts of GetStats."""

from __future__ import annotations

import pathlib
import threading

import apsw

from jarvis_memory_server.errors import ResourceExhausted
from jarvis_memory_server.store.failures import storage_errors, translate_error
from jarvis_memory_server.store.sqlite import Database

# Tables counted by GetStats: kind -> the condition a row must meet to count.
COUNTED = {
    "memories": "1", "sessions": "1", "messages": "1", "session_events": "1", "events": "1",
    "snapshots": "1", "preferences": "1", "state": "1", "decisions": "1", "collections": "1",
    "tool_calls": "parent_id IS NULL", "planning_cycles": "parent_id IS NULL",
}


class BackupCopy:
    """``VACUUM INTO`` on a connection of its own, run in a worker thread; interruptible."""

    def __init__(self, db: Database, target: pathlib.Path) -> None:
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
