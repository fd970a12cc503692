"""The SQLite file: APSW connections, pragmas, migrations at open, checkpoints.

The daemon serves every request on one asyncio event loop thread, which owns two connections:
the writer (its write path is writes.py: group commit) and a reader, which sees committed data
only. Work that must not block the loop (searches, checkpoints, backups) uses connections of its
own in other threads; WAL mode keeps readers and the writer out of each other's way. Every
connection has the sqlite-vec extension loaded (vector indexes and distance functions) and the
full-text indexes' tokenizer registered.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import apsw
import peewee as pw
import sqlite_vec
from playhouse.apsw_ext import APSWDatabase

from jarvis_memory_server.errors import StartupError, Unavailable
from jarvis_memory_server.store import fulltext, migrations, models
from jarvis_memory_server.store.writes import GroupCommitter, WriteTxn

log = logging.getLogger("jarvis_memory.store")

Durability = Literal["normal", "full"]

# synchronous=NORMAL in WAL mode: a commit is in the WAL file (the OS page cache) before the
# response is sent, so it survives the daemon being killed; only a power loss or kernel crash
# can drop the last commits. FULL adds an fsync per commit and survives those too.
_SYNCHRONOUS: dict[str, str] = {"normal": "NORMAL", "full": "FULL"}


MIGRATION_BUSY_TIMEOUT_MS = 30_000


def load_extensions(conn: apsw.Connection) -> None:
    """Prepare a connection for this schema: sqlite-vec and the full-text tokenizer.

    sqlite-vec gives vec0 tables and vec_* functions (store/search.py); the tokenizer is
    store/fulltext.py's.
    """
    fulltext.register(conn)
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.enable_load_extension(False)


def now_us() -> int:
    """Return the current time in microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000


class Database:
    """The daemon's SQLite database: opened, migrated and owned by the event loop thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "normal",
        busy_timeout_ms: int = 250,
    ) -> None:
        self.path = pathlib.Path(path)
        self.durability = durability
        self.busy_timeout_ms = busy_timeout_ms
        self.peewee = APSWDatabase(None)
        self._conn: apsw.Connection | None = None
        self._reader: apsw.Connection | None = None
        self._thread_local = threading.local()
        self._thread_readers: list[apsw.Connection] = []
        self._thread_readers_lock = threading.Lock()
        self.writes = GroupCommitter(self)

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the file, check it, apply pragmas and migrations.

        Raises StartupError when the file is not an SQLite database, is corrupt, or has a
        schema newer than this code.
        """
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.peewee.init(
            str(self.path),
            pragmas=self.pragmas(),
            # Migrations may wait longer, for another daemon migrating the same file.
            timeout=max(self.busy_timeout_ms, MIGRATION_BUSY_TIMEOUT_MS) / 1000,
        )
        models.database_proxy.initialize(self.peewee)
        try:
            self.peewee.connect(reuse_if_open=True)
            conn = self.peewee.connection()
            load_extensions(conn)
            mode = migrations.scalar(conn, "PRAGMA journal_mode")
            if str(mode).lower() != "wal":
                raise StartupError(f"{self.path}: could not switch the database to WAL mode")
            migrations.migrate(self.peewee, conn)
            with conn:  # rows another program added are noted but not yet indexed
                fulltext.index_pending(conn.cursor())
        except (apsw.NotADBError, apsw.CorruptError, pw.DatabaseError) as exc:
            # Peewee wraps errors raised while it applies the pragmas on connect.
            self.close()
            raise StartupError(f"{self.path} is not a usable SQLite database: {exc}") from exc
        except apsw.CantOpenError as exc:
            self.close()
            raise StartupError(f"cannot open database file {self.path}: {exc}") from exc
        except StartupError:
            self.close()
            raise
        conn.setbusytimeout(self.busy_timeout_ms)
        conn.set_update_hook(self.writes.count_change)
        self._conn = conn
        self.writes.revision = self._load_revision()
        self._reader = self._connect_reader()

    def _connect_reader(self) -> apsw.Connection:
        reader = apsw.Connection(str(self.path))
        load_extensions(reader)
        reader.setbusytimeout(self.busy_timeout_ms)
        for name, value in self.pragmas().items():
            if name != "journal_mode":  # a property of the file, already set by the writer
                reader.execute(f"PRAGMA {name} = {value}")
        reader.execute("PRAGMA query_only = 1")
        return reader

    def pragmas(self) -> dict[str, Any]:
        """Pragmas applied to every connection this daemon opens on the file."""
        return {
            "journal_mode": "wal",
            "synchronous": _SYNCHRONOUS[self.durability],
            "foreign_keys": 1,
            "temp_store": "memory",
            "cache_size": -64 * 1024,  # 64 MiB page cache
            # Reads map the file instead of copying each page with a read() call: ranking 200
            # search candidates (random rows) took 20 ms with read() calls here, 2 ms mapped.
            "mmap_size": 1024 * 1024 * 1024,
            # Checkpoints run in the Checkpointer's thread, never on a request's path.
            "wal_autocheckpoint": 0,
            # When a checkpoint has caught up, the next write rewinds the WAL and cuts the file
            # back to this size.
            "journal_size_limit": 64 * 1024 * 1024,
        }

    def close(self) -> None:
        """Commit what is pending, checkpoint the WAL into the main file, close the connections."""
        if self._conn is not None:
            self.writes.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        with self._thread_readers_lock:
            for reader in self._thread_readers:
                reader.close()
            self._thread_readers.clear()
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except apsw.Error as exc:  # closing anyway; the WAL is replayed on next open
                log.warning("final checkpoint failed: %s", exc)
            self._conn = None
        if not self.peewee.is_closed():
            self.peewee.close()

    @property
    def conn(self) -> apsw.Connection:
        """The writer connection (event loop thread only)."""
        if self._conn is None:
            raise Unavailable("the database is closed")
        return self._conn

    @property
    def reader(self) -> apsw.Connection:
        """The reader connection: sees committed data only (event loop thread only)."""
        if self._reader is None:
            raise Unavailable("the database is closed")
        return self._reader

    def thread_reader(self) -> apsw.Connection:
        """The calling thread's own reader connection, for reads run off the event loop.

        Opened on first use in each thread and closed with the database. (APSW releases the
        GIL while SQLite works, so a long search in a worker thread leaves the loop serving.)
        """
        reader: apsw.Connection | None = getattr(self._thread_local, "reader", None)
        if reader is None:
            if self._conn is None:
                raise Unavailable("the database is closed")
            reader = self._thread_local.reader = self._connect_reader()
            with self._thread_readers_lock:
                self._thread_readers.append(reader)
        return reader

    def query_plan(self, sql: str, params: dict[str, Any]) -> list[str]:
        """Return SQLite's plan of a query, one step per line (the tests check index use)."""
        return [str(row[3]) for row in self.reader.execute("EXPLAIN QUERY PLAN " + sql, params)]

    def _load_revision(self) -> int:
        return int(migrations.scalar(self.conn, 'SELECT max("revision") FROM "changes"') or 0)

    # -- transactions ----------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The last committed revision."""
        return self.writes.revision

    def write(self) -> contextlib.AbstractContextManager[WriteTxn]:
        """Open a write in the current batch (see GroupCommitter.write)."""
        return self.writes.write()

    # -- maintenance -----------------------------------------------------------------------

    def connect_aside(self) -> apsw.Connection:
        """Open another connection on the file, for work done outside the event loop thread."""
        conn = apsw.Connection(str(self.path))
        load_extensions(conn)
        conn.setbusytimeout(self.busy_timeout_ms)
        # Read the schema now: until a connection has read the file, it does not know that the
        # file is in WAL mode and checkpoints through it do nothing.
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        return conn


@contextmanager
def exclusive_use(path: pathlib.Path) -> Iterator[None]:
    """Hold the advisory lock that says one process owns the database file.

    The daemon holds it while it runs, and ``restore`` while it replaces the file, so that
    neither can start while the other works. Raises StartupError when another process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StartupError(
                f"{path} is in use by another jarvis-memory process (a daemon or a restore)"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Checkpointer:
    """Copies the WAL back into the database file from a thread of its own.

    PASSIVE checkpoints never wait for or block the writer, and APSW releases the GIL while
    SQLite copies pages, so the event loop keeps serving. (With SQLite's automatic checkpoints
    the commit that crosses the threshold pays for copying ~1000 pages: a 4-5 ms stall.)
    """

    def __init__(self, db: Database, interval_s: float) -> None:
        self._db = db
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)

    def start(self) -> None:
        """Start checkpointing every interval."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        conn = self._db.connect_aside()
        try:
            while not self._stop.wait(self._interval_s):
                try:
                    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                except apsw.Error as exc:
                    log.warning("checkpoint failed: %s", exc)
        finally:
            conn.close()


# Renders SQL for compile_sql at import time, before the real database is opened.
_DIALECT = APSWDatabase(None)


def compile_sql(query: pw.Query) -> str:
    """Render a Peewee query once into SQL with named parameters, for reuse on the APSW cursor.

    Parameters are written in the query as ``pw.SQL(":name")``; the query must not carry any
    literal values, so the SQL binds from one dict per call. Peewee builds a query in
    100-200 µs; executing the compiled SQL costs a few µs.
    """
    sql, params = _DIALECT.get_sql_context().sql(query).query()
    if params:
        raise ValueError(f"compile_sql: query has literal parameters {params!r}: {sql}")
    return str(sql)
