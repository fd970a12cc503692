"""Operations: consistent online backups and statistics."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.common import ServiceBase
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.sqlite import Database

DEFAULT_CHUNK = 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
# Tables counted by GetStats: kind -> the condition a row must meet to count.
COUNTED = {
    "memories": "1", "sessions": "1", "messages": "1", "session_events": "1", "events": "1",
    "snapshots": "1", "preferences": "1", "state": "1", "decisions": "1", "collections": "1",
    "tool_calls": "parent_id IS NULL", "planning_cycles": "parent_id IS NULL",
}


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a backup file."""

    offset: int
    data: bytes
    total_size: int
    revision: int
    sha256: str  # of the whole file; on the last chunk only


@dataclass(frozen=True, slots=True)
class Stats:
    """What GetStats reports."""

    counts: list[tuple[str, str, int]]  # (kind, namespace, rows)
    database_bytes: int
    wal_bytes: int
    uptime_s: float
    commits: int
    committed_writes: int


class AdminService(ServiceBase):
    """Backups and statistics."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._started = time.monotonic()

    async def backup(self, chunk_size: int = 0) -> AsyncIterator[Chunk]:
        """Yield a consistent copy of the database in chunks.

        ``VACUUM INTO`` runs in a worker thread on a connection of its own, so writes go on;
        the copy reflects one read snapshot, taken after every write acknowledged so far.
        Raises InvalidArgument for a bad chunk size.
        """
        if chunk_size < 0 or chunk_size > MAX_CHUNK:
            raise InvalidArgument("chunk_size", f"must be between 0 and {MAX_CHUNK}")
        size = chunk_size or DEFAULT_CHUNK
        revision = self._db.revision
        folder = tempfile.mkdtemp(prefix=".backup-", dir=self._db.path.parent)
        copy = pathlib.Path(folder) / "backup.db"
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._vacuum_into, copy)
            total = copy.stat().st_size
            digest = hashlib.sha256()
            with copy.open("rb") as file:
                offset = 0
                while True:
                    data = file.read(size)
                    digest.update(data)
                    last = offset + len(data) >= total
                    yield Chunk(offset, data, total, revision, digest.hexdigest() if last else "")
                    offset += len(data)
                    if last:
                        return
        finally:
            copy.unlink(missing_ok=True)
            os.rmdir(folder)

    def _vacuum_into(self, target: pathlib.Path) -> None:
        conn = self._db.connect_aside()
        try:
            with storage_errors():
                conn.execute("VACUUM INTO ?", (str(target),))
        finally:
            conn.close()

    def stats(self) -> Stats:
        """Count rows per kind and namespace; read file sizes and counters."""
        counts = []
        with storage_errors():
            for kind, condition in COUNTED.items():
                rows = self._db.reader.execute(
                    f'SELECT namespace, count(*) FROM "{kind}" WHERE {condition} '
                    "GROUP BY namespace ORDER BY namespace"
                )
                counts += [(kind, str(namespace), int(n)) for namespace, n in rows]
        wal = pathlib.Path(f"{self._db.path}-wal")
        return Stats(
            counts, self._db.path.stat().st_size, wal.stat().st_size if wal.exists() else 0,
            time.monotonic() - self._started, self._db.writes.commits,
            self._db.writes.committed_writes,
        )
