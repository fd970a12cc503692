"""The SQLite file: APSW connection, pragmas, transactions, checkpoints.

Concurrency design: the daemon serves every request on one asyncio event loop thread, and that
thread owns the one read-write connection. Requests therefore never contend for SQLite locks,
each write is a short ``BEGIN IMMEDIATE`` transaction committed before its response is sent,
and reads see every acknowledged write. Work that must not block the loop (backups, bulk
maintenance) opens its own connection in another thread; WAL mode keeps those readers and the
writer out of each other's way.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import apsw
import peewee as pw
from playhouse.apsw_ext import APSWDatabase

from jarvis_memory_server.errors import DataLoss, ResourceExhausted, StartupError, Unavailable
from jarvis_memory_server.store import migrations, models

log = logging.getLogger("jarvis_memory.store")

Durability = Literal["normal", "full"]

# synchronous=NORMAL in WAL mode: a commit is in the WAL file (the OS page cache) before the
# response is sent, so it survives the daemon being killed; only a power loss or kernel crash
# can drop the last commits. FULL adds an fsync per commit and survives those too.
_SYNCHRONOUS: dict[str, str] = {"normal": "NORMAL", "full": "FULL"}


def now_us() -> int:
    """Return the current time in microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000


class WriteTxn:
    """An open write transaction; assigns revisions and records them in the change log."""

    __slots__ = ("cursor", "revision")

    def __init__(self, cursor: apsw.Cursor, revision: int) -> None:
        self.cursor = cursor
        self.revision = revision

    @property
    def next_revision(self) -> int:
        """The revision the next recorded change will get."""
        return self.revision + 1

    def record(self, namespace: str, kind: str, key: str, operation: str, at_us: int) -> int:
        """Log one change of a resource in this transaction; return its revision."""
        self.revision += 1
        self.cursor.execute(
            _INSERT_CHANGE,
            {"revision": self.revision, "namespace": namespace, "kind": kind,
             "key": key, "operation": operation, "created_at": at_us},
        )
        return self.revision


_INSERT_CHANGE = (
    'INSERT INTO "changes" ("revision", "namespace", "kind", "key", "operation", "created_at") '
    "VALUES (:revision, :namespace, :kind, :key, :operation, :created_at)"
)


class Database:
    """The daemon's SQLite database: opened, migrated and owned by the event loop thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "normal",
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.path = pathlib.Path(path)
        self.durability = durability
        self.busy_timeout_ms = busy_timeout_ms
        self.peewee = APSWDatabase(None)
        self._conn: apsw.Connection | None = None
        self.revision = 0

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
            timeout=self.busy_timeout_ms / 1000,
        )
        models.database_proxy.initialize(self.peewee)
        try:
            self.peewee.connect(reuse_if_open=True)
            conn = self.peewee.connection()
            mode = migrations.scalar(conn, "PRAGMA journal_mode")
            if str(mode).lower() != "wal":
                raise StartupError(f"{self.path}: could not switch the database to WAL mode")
            migrations.migrate(self.peewee, conn)
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
        self._conn = conn
        self.revision = self._load_revision()

    def pragmas(self) -> dict[str, Any]:
        """Pragmas applied to every connection this daemon opens on the file."""
        return {
            "journal_mode": "wal",
            "synchronous": _SYNCHRONOUS[self.durability],
            "foreign_keys": 1,
            "temp_store": "memory",
            "cache_size": -64 * 1024,  # 64 MiB page cache
            "wal_autocheckpoint": 1000,
        }

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close the connection."""
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
        """The read-write connection (event loop thread only)."""
        if self._conn is None:
            raise Unavailable("the database is closed")
        return self._conn

    def _load_revision(self) -> int:
        return int(migrations.scalar(self.conn, 'SELECT max("revision") FROM "changes"') or 0)

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        """Run the body in one IMMEDIATE transaction; commit on success, roll back on error.

        The revision counter only advances once the commit has succeeded.
        """
        cursor = self.conn.cursor()
        try:
            with storage_errors():
                cursor.execute("BEGIN IMMEDIATE")
                txn = WriteTxn(cursor, self.revision)
                yield txn
                cursor.execute("COMMIT")
        except BaseException:
            if not self.conn.getautocommit():
                cursor.execute("ROLLBACK")
            raise
        self.revision = txn.revision

    # -- maintenance -----------------------------------------------------------------------

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL back into the database file and truncate it; return (log, copied) pages."""
        with storage_errors():
            row = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return (int(row[1]), int(row[2])) if row else (0, 0)


@contextmanager
def storage_errors() -> Iterator[None]:
    """Translate SQLite's operational failures into the daemon's named errors."""
    try:
        yield
    except (apsw.BusyError, apsw.LockedError) as exc:
        raise Unavailable(f"the database is busy, retry later ({exc})") from exc
    except apsw.FullError as exc:
        raise ResourceExhausted(f"the disk is full ({exc})", reason="DISK_FULL") from exc
    except apsw.CorruptError as exc:
        raise DataLoss(f"the database file is corrupt ({exc})") from exc


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
