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
from jarvis_memory_server.store import failures, fulltext, migrations, models
from jarvis_memory_server.store.backend import Cursor, ThreadReaders
from jarvis_memory_server.store.fulltext import FTS_SUFFIX
from jarvis_memory_server.store.writes import GroupCommitter, WriteTxn, commit

log = logging.getLogger("jarvis_memory.store")

Durability = Literal["normal", "full"]

# synchronous=NORMAL in WAL mode: a commit is in the WAL file (the OS page cache) before the
# response is sent, so it survives the daemon being killed; only a power loss or kernel crash
# can drop the last commits. FULL adds an fsync per commit and survives those too.
_SYNCHRONOUS: dict[str, str] = {"normal": "NORMAL", "full": "FULL"}


MIGRATION_BUSY_TIMEOUT_MS = 30_000

KIB, MIB = 1024, 1024 * 1024
# --verify auto checks files up to this size at start-up (quick_check reads every page).
VERIFY_AUTO_BYTES = 64 * MIB
# How long a checkpoint that truncates the WAL may wait for readers and the write lock; writes
# wait for it meanwhile (on the event loop), so keep it well under --busy-timeout-ms.
TRUNCATE_BUSY_MS = 50


def load_extensions(conn: apsw.Connection) -> None:
    """Prepare a connection for this schema: sqlite-vec and the full-text tokenizer.

    sqlite-vec gives vec0 tables and vec_* functions (store/search.py); the tokenizer is
    store/fulltext.py's.
    """
    fulltext.register(conn)
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.enable_load_extension(False)


class Database:
    """The daemon's SQLite database: opened, migrated and owned by the event loop thread."""

    kind = "sqlite"
    begin_may_wait = False  # BEGIN IMMEDIATE waits at most --busy-timeout-ms (250 ms)
    read_executor = None  # reads run on the loop: a few µs each, no round trip

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "normal",
        busy_timeout_ms: int = 250,
        max_db_size: int = 0,
        max_wal_size: int = 256 * MIB,
        verify: str = "auto",
    ) -> None:
        self.path = pathlib.Path(path)
        self.durability = durability
        self.busy_timeout_ms = busy_timeout_ms
        self.max_db_size = max_db_size
        self.max_wal_size = max_wal_size
        self.verify = verify
        self.space: SpaceGuard | None = None
        # Set by the Checkpointer when the WAL outgrew max_wal_size under writes: the next
        # batch first checkpoints and rewinds it on the writer connection.
        self.rewind_wanted = False
        self._secure_delete = False  # on for a batch that erases (erasing())
        # Without a Checkpointer (the CLI's tools, bench preloads), write() bounds the WAL.
        self.checkpointer_running = False
        self.peewee = APSWDatabase(None)
        self._conn: apsw.Connection | None = None
        self._reader: apsw.Connection | None = None
        self._thread_readers = ThreadReaders(self._connect_reader, apsw.Connection.close)
        self.writes = GroupCommitter(self)

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the file, check it, apply pragmas and migrations.

        Raises StartupError when the file cannot be created or written, is not an SQLite
        database, is corrupt, or has a schema newer (or a version lower) than this code knows.
        """
        check_location(self.path)
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
            version = migrations.schema_version(conn)
            if version < 0:
                raise StartupError(
                    f"{self.path} has schema version {version} (PRAGMA user_version), which no "
                    "jarvis-memory writes: it is not a jarvis-memory database"
                )
            self._verify(conn)
            migrations.migrate(self.peewee, conn)
            with conn:  # rows another program added are noted but not yet indexed
                fulltext.index_pending(conn.cursor())
            conn.setbusytimeout(self.busy_timeout_ms)
            conn.set_update_hook(self.writes.count_change)
            self._conn = conn
            self.writes.revision = self._load_revision()
            self._reader = self._connect_reader()
            self.space = SpaceGuard(self.path, conn, self.max_db_size)
            self.space.check()
        except BaseException as exc:
            self.close()
            if isinstance(exc, StartupError):
                raise
            problem = _open_problem(self.path, exc)
            if problem is None:
                raise
            raise StartupError(problem) from exc

    def _verify(self, conn: apsw.Connection) -> None:
        """Run PRAGMA quick_check as --verify asks; raise StartupError for a corrupt file."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size == 0 or self.verify == "never" or (
            self.verify == "auto" and size > VERIFY_AUTO_BYTES
        ):
            return
        started = time.perf_counter()
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(10)")]
        if problems != ["ok"]:
            raise StartupError(
                f"DATA_LOSS: {self.path} is corrupt (quick_check: {'; '.join(problems)}); "
                "restore it from a backup (jarvis-memory restore)"
            )
        log.debug("quick_check of %s (%.0f MiB) passed in %.0f ms", self.path, size / MIB,
                 (time.perf_counter() - started) * 1000)

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
            # back to this size (the Checkpointer truncates it to nothing when writes pause).
            "journal_size_limit": min(64 * MIB, self.max_wal_size),
        }

    def close(self) -> None:
        """Commit what is pending, checkpoint the WAL into the main file, close the connections."""
        if self._conn is not None:
            self.writes.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._thread_readers.close()
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except apsw.Error as exc:  # closing anyway; the WAL is replayed on next open
                log.warning("final checkpoint failed: %s", exc)
            self._conn = None
        if not self.peewee.is_closed():
            self.peewee.close()

    @property
    def describe(self) -> str:
        """The file's path (for logs and messages)."""
        return str(self.path)

    @property
    def is_open(self) -> bool:
        """Whether open() succeeded and close() has not run."""
        return self._conn is not None

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
        if self._conn is None:
            raise Unavailable("the database is closed")
        return self._thread_readers.get()

    def query_plan(self, sql: str, params: dict[str, Any]) -> list[str]:
        """Return SQLite's plan of a query, one step per line (the tests check index use)."""
        return [str(row[3]) for row in self.reader.execute("EXPLAIN QUERY PLAN " + sql, params)]

    def _load_revision(self) -> int:
        return int(migrations.scalar(self.conn, 'SELECT max("revision") FROM "changes"') or 0)

    # -- transactions ----------------------------------------------------------------------

    def begin(self, cursor: Cursor) -> int:
        """Open a batch: take the write lock now, so that its statements never wait for it."""
        if self._secure_delete:  # the erasing batch before this one has ended
            cursor.execute("PRAGMA secure_delete = 0")
            self._secure_delete = False
        cursor.execute("BEGIN IMMEDIATE")
        return self.writes.revision

    def commit_batch(self, txn: WriteTxn, to_index: set[str]) -> None:
        """Index the batch's new rows for full-text search (store/fulltext.py), then COMMIT."""
        commit(txn.cursor, to_index)

    def batch_usable(self) -> bool:
        """Always: a failed SQLite statement undoes itself and leaves the transaction open."""
        return True

    @contextlib.contextmanager
    def erasing(self) -> Iterator[None]:
        """Overwrite deleted content with zeros until the batch ends (on the writer).

        Until it ends, not only meanwhile: FTS5 writes its index changes out later in the
        batch, up to its commit. Only for erasures: always on, it made batched inserts a
        quarter slower (the pages full-text indexing frees as it merges were zeroed too).
        """
        if not self._secure_delete:
            self.conn.execute("PRAGMA secure_delete = 1")
            self._secure_delete = True
        yield

    @property
    def revision(self) -> int:
        """The last committed revision."""
        return self.writes.revision

    def write(self) -> contextlib.AbstractContextManager[WriteTxn]:
        """Open a write in the current batch (see GroupCommitter.write).

        A write that opens a batch first lets the SpaceGuard look at the room left (near the
        limits, every write does), and rewinds the WAL if the Checkpointer asked for it or
        the disk is nearly full: a WAL that kept growing there could take the room the
        checkpoint needs to copy it back, and nothing could be written any more.
        """
        conn, space = self._conn, self.space
        if conn is not None and space is not None and not self.writes.commit_running:
            if conn.getautocommit():  # no batch open: this write begins one
                space.check_due()
                if space.disk_low and self.wal_bytes() > 0:
                    self._checkpoint_wal(conn, truncate=True)
                    space.check()
                elif self.rewind_wanted or (
                    not self.checkpointer_running and self.wal_bytes() > self.max_wal_size
                ):
                    self._checkpoint_wal(conn, truncate=False)
            elif space.near:
                space.check()
        return self.writes.write()

    def wal_bytes(self) -> int:
        """The size of the WAL file (0 when there is none)."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _checkpoint_wal(self, conn: apsw.Connection, *, truncate: bool) -> None:
        """Checkpoint the whole WAL and rewind it, between two batches, on the writer.

        The writer is idle (no batch open, no commit running), so only readers can hold this
        up, for at most TRUNCATE_BUSY_MS; writes wait meanwhile. RESTART leaves the file's
        length to the next commit, which cuts it to journal_size_limit in the commit thread
        (measured: 20-90 ms of pause at 300 MB of WAL under ingest, against 120-340 ms for
        TRUNCATE); TRUNCATE empties it at once, for when the disk needs the room.
        """
        self.rewind_wanted = False
        size, started = self.wal_bytes(), time.perf_counter()
        conn.setbusytimeout(TRUNCATE_BUSY_MS)
        try:
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE if truncate
                                else apsw.SQLITE_CHECKPOINT_RESTART)
        except apsw.BusyError:
            log.info("the WAL (%.0f MiB) could not be checkpointed whole: a reader holds an "
                     "older snapshot (a backup?); retrying later", size / MIB)
            return
        except apsw.Error as exc:
            log.warning("checkpoint to rewind the WAL failed: %s", exc)
            return
        finally:
            conn.setbusytimeout(self.busy_timeout_ms)
        if truncate:
            log.debug("disk nearly full: truncated the WAL (%.1f MiB) in %.1f ms", size / MIB,
                      (time.perf_counter() - started) * 1000)
        else:
            log.info("the WAL reached %.0f MiB (--max-wal-size %.0f MiB): checkpointed and "
                     "rewound it in %.1f ms, writes paused meanwhile", size / MIB,
                     self.max_wal_size / MIB, (time.perf_counter() - started) * 1000)

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


def check_location(path: pathlib.Path) -> None:
    """Create the database's folder; raise StartupError when the file cannot live there."""
    folder = path.parent
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise StartupError(f"cannot create {path}: {parent} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the folder of {path}: {exc.strerror}") from exc
    if path.is_dir():
        raise StartupError(f"{path} is a folder, not a database file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError(
            f"cannot write in {folder}: the daemon creates {path.name} and its -wal and -shm "
            "files there"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StartupError(f"cannot read and write {path}: check its permissions")


def _open_problem(path: pathlib.Path, exc: BaseException) -> str | None:
    """One line saying why the database could not be opened (None: not a file problem)."""
    # Peewee wraps the errors raised while it applies the pragmas on connect.
    cause = (exc.__cause__ or exc.__context__) if isinstance(exc, pw.DatabaseError) else exc
    if isinstance(cause, apsw.CorruptError):
        return (f"DATA_LOSS: {path} is corrupt ({cause}); restore it from a backup "
                "(jarvis-memory restore)")
    if isinstance(cause, apsw.NotADBError):
        return f"{path} is not a usable SQLite database: {cause}"
    if isinstance(cause, apsw.FullError):
        return f"cannot open {path}: the disk is full ({cause})"
    if isinstance(cause, apsw.Error | OSError):
        return f"cannot open database file {path}: {cause}"
    if isinstance(exc, pw.DatabaseError):
        return f"{path} is not a usable SQLite database: {cause or exc}"
    return None


@contextmanager
def exclusive_use(path: pathlib.Path) -> Iterator[None]:
    """Hold the advisory lock that says one process owns the database file.

    The daemon holds it while it runs, and ``restore`` while it replaces the file, so that
    neither can start while the other works. Raises StartupError when another process holds it
    or the lock file cannot be created.
    """
    check_location(path)
    try:
        lock = open(f"{path}.lock", "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StartupError(f"cannot create {path}.lock: {exc.strerror}") from exc
    with lock:
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
    """Copies the WAL back into the database file from a thread of its own, and bounds it.

    Every interval a PASSIVE checkpoint copies what it can: it never waits for or blocks the
    writer, and APSW releases the GIL while SQLite copies pages, so the event loop keeps
    serving. (With SQLite's automatic checkpoints the commit that crosses the threshold pays
    for copying ~1000 pages: a 4-5 ms stall.) A PASSIVE checkpoint never rewinds the WAL, and
    under sustained writes SQLite never gets a moment to do it itself, so the file would grow
    without end (1.5 GB in 30 s of AddMemories here). Hence: when writes paused for an
    interval, a TRUNCATE checkpoint here empties the file; when the file outgrew max_wal_size
    while writes go on, the next write batch first checkpoints and rewinds it on the writer
    connection (Database.write), pausing writes for as long as that takes. (And while the disk
    is nearly full, every batch first truncates it: see SpaceGuard.)
    """

    def __init__(self, db: Database, interval_s: float) -> None:
        self._db = db
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)

    def start(self) -> None:
        """Start checkpointing every interval."""
        self._db.checkpointer_running = True
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._db.checkpointer_running = False

    def _run(self) -> None:
        conn = self._db.connect_aside()
        conn.setbusytimeout(TRUNCATE_BUSY_MS)
        commits = -1
        try:
            while not self._stop.wait(self._interval_s):
                try:
                    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                except apsw.BusyError:
                    continue  # the writer is checkpointing the WAL itself
                except apsw.Error as exc:
                    log.warning("checkpoint failed: %s", exc)
                    continue
                idle, commits = commits == self._db.writes.commits, self._db.writes.commits
                size = self._db.wal_bytes()
                if size == 0:
                    continue
                if idle:
                    self._truncate(conn, size)
                elif size > self._db.max_wal_size:
                    self._db.rewind_wanted = True
        finally:
            conn.close()

    def _truncate(self, conn: apsw.Connection, size: int) -> None:
        started = time.perf_counter()
        try:
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.BusyError:
            return  # a write or a long reader came along: next time
        except apsw.Error as exc:
            log.warning("checkpoint failed: %s", exc)
            return
        log.debug("writes paused: truncated the WAL (%.1f MiB) in %.1f ms", size / MIB,
                  (time.perf_counter() - started) * 1000)


# Once it refuses new data, the SpaceGuard keeps this much room for deletes and the WAL: 1/32
# of the --max-db-size or of the file system, between 256 KiB and 64 MiB.
def space_reserve(basis: int) -> int:
    """The room kept free for deletes below a limit of ``basis`` bytes."""
    return min(64 * MIB, max(256 * KIB, basis // 32))


# Left free on the disk beyond what the SpaceGuard counts: WAL headers, -shm growth.
_DISK_MARGIN = 256 * KIB
# With plenty of room (ROOMY bytes more than the reserve) the room left is looked at no more
# often than this: a look costs three PRAGMAs and two stat calls (~20 µs, 7% of a lone
# AddMemory), and no write rate seen here (~30 MB/s with the WAL) gets through ROOMY in that
# time. Closer to a limit, every batch looks.
SPACE_CHECK_INTERVAL_S = 0.05
ROOMY = 64 * MIB
_MAX_PAGE_COUNT = 0xFFFFFFFE


def _adds_rows(table: str | None) -> bool:
    """Whether an INSERT into ``table`` adds data (not a change record or an index entry)."""
    return table is not None and not (
        table == "changes" or table.startswith("sqlite_") or FTS_SUFFIX in table
        or "_vector_" in table
    )


def _refuse_new_rows(action: int, table: str | None, *_: str | None) -> int:
    """Authorizer while the SpaceGuard refuses: no statement may insert rows of data."""
    if action == apsw.SQLITE_INSERT and _adds_rows(table):
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


class SpaceGuard:
    """Refuses writes that add data before the database reaches --max-db-size or fills the disk.

    Deletes and updates keep working, so that a full database can be emptied through the API,
    and the daemon's own checkpoints always find the room they need. Two mechanisms:

    - while the room left is under the reserve (space_reserve), an SQLite authorizer on the
      writer connection denies every statement that inserts rows of data (change records and
      index entries excepted, so a delete still logs its change): such a write fails before it
      changed anything, with RESOURCE_EXHAUSTED (store/failures.py). Deletes put pages on the
      freelist; new rows reuse them, so writes resume by themselves once deletes (or an
      operator freeing disk space) made room again;
    - ``PRAGMA max_page_count`` caps the file hard, at --max-db-size and at what the free disk
      space can hold: each page the file grows by is written to the WAL first and into the file
      at the next checkpoint, so it needs twice its size. Beyond the cap a statement fails with
      SQLITE_FULL before anything reaches the disk, so the WAL is never the one to fill it and
      the checkpoint that copies it back always has room.
    """

    def __init__(self, path: pathlib.Path, conn: apsw.Connection, max_db_size: int) -> None:
        self._path = path
        self._conn = conn
        self.page_size = int(migrations.scalar(conn, "PRAGMA page_size"))
        self.max_db_size = max_db_size
        self._limit_pages = max_db_size // self.page_size
        self._db_reserve = space_reserve(max_db_size)
        stat = os.statvfs(path.parent)
        self._disk_reserve = space_reserve(stat.f_blocks * stat.f_frsize)
        self._cap = 0
        self.refusing: str | None = None  # the reason while new rows are refused
        self.near = True  # close to a limit: check before every write, not every batch
        self.disk_low = False  # every batch first truncates the WAL (Database.write)
        self._next_check = 0.0  # check_due's next look (time.monotonic), while roomy
        self.roomy = False
        self._refuse(None, stat.f_bavail * stat.f_frsize)

    def check_due(self) -> None:
        """check() before a batch: every SPACE_CHECK_INTERVAL_S while roomy, else every time."""
        now = time.monotonic()
        if not self.roomy or now >= self._next_check:
            self._next_check = now + SPACE_CHECK_INTERVAL_S
            self.check()

    def check(self) -> None:
        """Look at the room left; refuse or accept new rows, and move the hard cap."""
        conn, page = self._conn, self.page_size
        try:
            pages = int(migrations.scalar(conn, "PRAGMA page_count"))
            free_pages = int(migrations.scalar(conn, "PRAGMA freelist_count"))
            stat = os.statvfs(self._path.parent)
            file_bytes = os.stat(self._path).st_size
        except (apsw.Error, OSError) as exc:
            log.warning("could not measure the room left: %s", exc)
            return
        disk_free = stat.f_bavail * stat.f_frsize
        # Pages the next checkpoint adds to the file, already written to the WAL.
        disk_room = disk_free - max(0, pages * page - file_bytes) - _DISK_MARGIN
        cap = pages + max(0, disk_room) // (2 * page + 24)
        if self._limit_pages:
            cap = min(cap, self._limit_pages)
        cap = min(cap, _MAX_PAGE_COUNT)
        if cap != self._cap:
            self._cap = int(migrations.scalar(conn, f"PRAGMA max_page_count = {cap}"))
        disk_headroom = free_pages * page + disk_room // 2
        # Once refusing, accept again only with 1.5 times the reserve: no flapping at the edge.
        factor = 1.0 if self.refusing is None else 1.5
        refusing = None
        if disk_headroom < factor * self._disk_reserve:
            refusing = "DISK_FULL"
        headroom = disk_headroom - self._disk_reserve
        if self._limit_pages:
            db_headroom = (self._limit_pages - pages + free_pages) * page
            if db_headroom < factor * self._db_reserve:
                refusing = "DB_SIZE_LIMIT"
            headroom = min(headroom, db_headroom - self._db_reserve)
        self.disk_low = disk_room < 4 * self._disk_reserve
        self.near = headroom < 4 * max(self._disk_reserve, self._db_reserve)
        self.roomy = headroom > ROOMY + 4 * max(self._disk_reserve, self._db_reserve)
        if refusing != self.refusing:
            self._refuse(refusing, disk_free)

    def _refuse(self, reason: str | None, disk_free: int) -> None:
        if reason == "DB_SIZE_LIMIT" or (reason is None and self.max_db_size):
            # (With no reason: what a write beyond the hard cap is told.)
            message = (f"the database has reached --max-db-size ({self.max_db_size} bytes): "
                       "delete data to make room")
        else:
            message = (f"the disk holding the database is nearly full ({disk_free} bytes "
                       "free): delete data or free disk space")
        failures.set_space_refusal(
            message, reason or ("DB_SIZE_LIMIT" if self.max_db_size else "DISK_FULL"))
        if (reason is None) != (self.refusing is None):
            # Setting an authorizer re-prepares every statement, so it is decided anew.
            self._conn.authorizer = None if reason is None else _refuse_new_rows
            if reason is None:
                log.info("writes that add data are accepted again")
            else:
                log.warning("refusing writes that add data: %s", message)
        self.refusing = reason
