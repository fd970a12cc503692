"""Operations: consistent online backups and statistics."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from jarvis_memory_server.errors import InvalidArgument, ResourceExhausted
from jarvis_memory_server.service.common import ServiceBase
from jarvis_memory_server.store.admin import BackupCopy, backup_file, row_counts, storage_bytes
from jarvis_memory_server.store.backend import Database

if TYPE_CHECKING:
    from jarvis_memory_server.store.sqlite import Database as SqliteDatabase

log = logging.getLogger("jarvis_memory.admin")

DEFAULT_CHUNK = 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
# Backups make their copies one at a time (each is as large as the database); this many more
# may wait for their turn, further ones are refused with RESOURCE_EXHAUSTED.
MAX_WAITING_BACKUPS = 4


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


def staging_prefix(db_path: pathlib.Path) -> str:
    """The name prefix of the folders backups stage their copies in, beside the database."""
    return f".{db_path.name}.backup-"


def remove_stale_staging(db_path: pathlib.Path) -> tuple[int, int]:
    """Remove the staging folders of backups a crash interrupted; return (folders, bytes).

    Call it while holding the database's exclusive lock (no backup of it is running then).
    Folders named ``.backup-*`` (as before staging names carried the database's name) count
    too when they hold nothing but a backup copy.
    """
    removed = size = 0
    try:
        entries = list(db_path.parent.iterdir())
    except OSError:
        return 0, 0
    for entry in entries:
        try:
            if not entry.is_dir() or entry.is_symlink():
                continue
            files = list(entry.iterdir())
            if not entry.name.startswith(staging_prefix(db_path)) and not (
                entry.name.startswith(".backup-")
                and all(f.name.startswith("backup.db") for f in files)
            ):
                continue
            size += sum(f.stat().st_size for f in files if f.is_file())
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed, size


class AdminService(ServiceBase):
    """Backups and statistics."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._started = time.monotonic()
        self._one_copy = asyncio.Lock()  # one staging copy on disk at a time
        self._waiting = 0

    async def backup(self, chunk_size: int = 0) -> AsyncGenerator[Chunk, None]:
        """Yield a consistent copy of the database in chunks.

        ``VACUUM INTO`` runs in a worker thread on a connection of its own, so writes go on;
        the copy reflects one read snapshot, taken after every write acknowledged before the
        backup's turn came. Backups take turns: one copy exists at a time, and its file is gone
        from the folder before the first chunk leaves (only the open file holds it), so a
        cancelled or crashed backup leaves nothing behind but, after a crash during the copy,
        a folder that the next start-up removes. Raises InvalidArgument for a bad chunk size,
        ResourceExhausted when MAX_WAITING_BACKUPS already wait or the disk has no room.
        """
        db = backup_file(self._db)
        if chunk_size < 0 or chunk_size > MAX_CHUNK:
            raise InvalidArgument("chunk_size", f"must be between 0 and {MAX_CHUNK}")
        size = chunk_size or DEFAULT_CHUNK
        if self._one_copy.locked() and self._waiting >= MAX_WAITING_BACKUPS:
            raise ResourceExhausted(
                f"a backup is running and {self._waiting} more wait for their turn; retry later",
                reason="BACKUPS_QUEUED",
            )
        self._waiting += 1
        try:
            await self._one_copy.acquire()
        finally:
            self._waiting -= 1
        try:
            revision = self._db.revision
            with await self._stage(db) as file:
                total = os.fstat(file.fileno()).st_size
                digest = hashlib.sha256()
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
            self._one_copy.release()

    async def _stage(self, db: SqliteDatabase) -> BinaryIO:
        """Copy the database into a staging folder; return the copy opened, its folder gone."""
        folder = pathlib.Path(tempfile.mkdtemp(prefix=staging_prefix(db.path),
                                               dir=db.path.parent))
        try:
            copy = BackupCopy(db, folder / "backup.db")
            done = asyncio.get_running_loop().run_in_executor(None, copy.run)
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                copy.interrupt()  # and wait until the thread stopped writing into the folder
                await asyncio.wait([done])
                if not done.cancelled():
                    done.exception()  # retrieved: an interrupted copy fails, as it should
                raise
            return (folder / "backup.db").open("rb")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def stats(self) -> Stats:
        """Count rows per kind and namespace; read file sizes and counters."""
        counts = row_counts(self._db)
        db_bytes, wal_bytes = storage_bytes(self._db)
        return Stats(
            counts, db_bytes, wal_bytes, time.monotonic() - self._started, self._db.writes.commits,
            self._db.writes.committed_writes,
        )
