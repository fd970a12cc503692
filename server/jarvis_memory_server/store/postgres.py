"""PostgreSQL: the same schema and store on a server that any number of daemons share.

The store's SQL is written once (Peewee, rendered by backend.compile_sql) and runs here
through ``PgConnection``, which gives a psycopg connection the shape of APSW's: named
``:name`` and ``?`` parameters, ``changes()``, ``getautocommit()``, and constraint failures
raised as ``apsw.ConstraintError``, the class the store already catches. The schema is made
from the same Peewee models, with booleans as SMALLINT and integers as BIGINT so that values
read back exactly as on SQLite.

Many daemons, one order of changes: every write batch takes one transaction-scoped advisory
lock before it reads the newest revision, and holds it until it commits. Revisions are thus
given out and committed in one order across the fleet, with no gap (a sequence would hand out
numbers before commit: revision 11 could be visible while 10 is still in flight, and a feed
reading "after the last seen" would skip 10 forever). Each commit NOTIFYs the others, whose
listener thread wakes their loop to publish the new changes to their watchers (writes.follow).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Any, NoReturn, ParamSpec, TypeVar

import apsw
import peewee as pw
import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from jarvis_memory_server.errors import (
    InvalidArgument,
    ResourceExhausted,
    StartupError,
    Unavailable,
)
from jarvis_memory_server.store import migrations, models, pgsearch
from jarvis_memory_server.store.backend import Cursor, ThreadReaders
from jarvis_memory_server.store.writes import GroupCommitter, WriteTxn

log = logging.getLogger("jarvis_memory.store")

# The advisory lock every write batch holds from its first statement to its commit (the
# digits spell "jmem"), and the one that serialises daemons migrating the same database.
WRITE_LOCK = 0x6A6D656D
MIGRATION_LOCK = WRITE_LOCK + 1
CHANNEL = "jarvis_memory_changes"
SCHEMA_TABLE = "jarvis_memory_schema"

# Seconds a connection attempt may take before the database counts as unreachable.
CONNECT_TIMEOUT_S = 5
# How long the listener waits before connecting again after losing the server.
LISTEN_RETRY_S = 0.5

# Peewee's PostgreSQL types, changed where the store relies on SQLite's: booleans are the
# integers 0 and 1, every integer is 64 bits, ids come from a 64-bit sequence, and text
# compares by code point (as on SQLite, whatever the server's locale: lists ordered by a key or
# a name come in the same order on both).
FIELD_TYPES = {"BOOL": "SMALLINT", "INT": "BIGINT", "AUTO": "BIGSERIAL", "TEXT": 'TEXT COLLATE "C"'}

_APPEND_ONLY_FUNCTION = (
    "CREATE FUNCTION jarvis_memory_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME "
    "USING ERRCODE = 'restrict_violation'; END $$"
)


# -- SQL in psycopg's dialect ------------------------------------------------------------------

_PARAMETERS = re.compile(
    r"""('(?:[^']|'')*')|("(?:[^"]|"")*")|(::)|:([A-Za-z_][A-Za-z0-9_]*)|(\?)|(%)"""
)


def _rewrite(match: re.Match[str]) -> str:
    literal, identifier, cast, name, question, _ = match.groups()
    if literal is not None or identifier is not None:
        return match.group(0).replace("%", "%%")
    if cast is not None:
        return cast
    if name is not None:
        return f"%({name})s"
    if question is not None:
        return "%s"
    return "%%"


@lru_cache(maxsize=4096)
def pyformat(sql: str) -> str:
    """The SQL with APSW's parameters (``:name``, ``?``) in psycopg's (``%(name)s``, ``%s``)."""
    return _PARAMETERS.sub(_rewrite, sql)


def translate(exc: psycopg.Error) -> BaseException:
    """The error the store expects for a PostgreSQL failure (APSW's class or a named error)."""
    if isinstance(exc, psycopg.errors.IntegrityError):
        return apsw.ConstraintError(str(exc.diag.message_primary or exc))
    if isinstance(exc, psycopg.errors.DataError):
        message = str(exc.diag.message_primary or exc)
        if "0x00" in message:
            message = "text cannot hold the NUL character (U+0000) on PostgreSQL"
        return InvalidArgument("request", f"a value cannot be stored: {message}")
    if isinstance(exc, psycopg.errors.DiskFull | psycopg.errors.OutOfMemory):
        return ResourceExhausted(f"PostgreSQL is out of room: {exc}", reason="DISK_FULL")
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return Unavailable("the database is busy: another writer held the write lock for "
                           "longer than --busy-timeout-ms; retry later")
    if isinstance(exc, psycopg.errors.ProgrammingError | psycopg.errors.InternalError) and not (
        isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.QueryCanceled)
    ):
        return exc  # a bug of ours: INTERNAL
    # Connection lost, server shutting down, lock timeouts, deadlocks, serialisation failures.
    return Unavailable(f"PostgreSQL is unavailable, retry later ({_first_line(exc)})")


def _raise(exc: psycopg.Error) -> NoReturn:
    """Raise what translate() makes of a failure (itself when it is a bug of ours)."""
    translated = translate(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().split("\n", 1)[0]


# -- APSW's shape on a psycopg connection -----------------------------------------------------


class PgCursor:
    """A cursor of a PgConnection (see Cursor in backend.py)."""

    __slots__ = ("_cursor", "_owner")

    def __init__(self, owner: PgConnection) -> None:
        self._owner = owner
        self._cursor: psycopg.Cursor[Any] | None = None

    def _live(self) -> psycopg.Cursor[Any]:
        raw = self._owner.raw()
        if self._cursor is None or self._cursor.connection is not raw:
            self._cursor = raw.cursor()
        return self._cursor

    def execute(self, statements: str, bindings: Any = None, /) -> PgCursor:
        """Run statements with their parameters; return this cursor."""
        cursor = self._live()
        try:
            if bindings is None:
                cursor.execute(statements.encode())  # as it is: no parameters to rewrite
            else:
                cursor.execute(pyformat(statements), bindings)
        except psycopg.Error as exc:
            _raise(exc)
        self._owner.counted(cursor)
        return self

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any], /) -> PgCursor:
        """Run one statement once per set of parameters; return this cursor."""
        cursor = self._live()
        try:
            cursor.executemany(pyformat(statements), list(sequenceofbindings))
        except psycopg.Error as exc:
            _raise(exc)
        self._owner.counted(cursor)
        return self

    def fetchone(self) -> Any:
        """The next row, or None."""
        cursor = self._live()
        return cursor.fetchone() if cursor.pgresult is not None and cursor.description else None

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        cursor = self._live()
        return cursor.fetchall() if cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows."""
        cursor = self._live()
        return iter(cursor.fetchall() if cursor.description else [])


class PgConnection:
    """One PostgreSQL connection with APSW's interface; connects again after losing the server.

    In autocommit mode: the GroupCommitter opens and commits its transactions itself.
    """

    def __init__(
        self, url: str, *, on_rows: Any = None, name: str = "", settings: str = ""
    ) -> None:
        self._url = url
        self._settings = settings  # SET statements run on every new connection
        self._raw: psycopg.Connection[Any] | None = None
        self._default: PgCursor | None = None
        self._last_changes = 0
        self._on_rows = on_rows  # called with the count of rows each statement changed
        self._name = name

    def raw(self) -> psycopg.Connection[Any]:
        """The live psycopg connection, opened again if the server dropped it."""
        raw = self._raw
        if raw is None or raw.closed:
            raw = connect(self._url, self._name)
            if self._settings:
                raw.execute(self._settings.encode())
            self._raw = raw
        return raw

    def counted(self, cursor: psycopg.Cursor[Any]) -> None:
        """Note how many rows the cursor's last statement changed."""
        status = cursor.statusmessage or ""
        if status.startswith(("INSERT", "UPDATE", "DELETE")):
            self._last_changes = max(cursor.rowcount, 0)
            if self._on_rows is not None and self._last_changes:
                self._on_rows(self._last_changes)

    def cursor(self) -> PgCursor:
        """A new cursor on this connection."""
        return PgCursor(self)

    def execute(self, statements: str, bindings: Any = None, /) -> PgCursor:
        """Run statements with their parameters; return this cursor."""
        if self._default is None:
            self._default = PgCursor(self)
        return self._default.execute(statements, bindings)

    def changes(self) -> int:
        """Rows changed by the last INSERT, UPDATE or DELETE."""
        return self._last_changes

    def getautocommit(self) -> bool:
        """Whether no transaction is open (a dropped connection has none)."""
        raw = self._raw
        return raw is None or raw.closed or raw.info.transaction_status == TransactionStatus.IDLE

    def status(self) -> TransactionStatus:
        """The transaction's state (UNKNOWN without a live connection)."""
        raw = self._raw
        return TransactionStatus.UNKNOWN if raw is None or raw.closed else (
            raw.info.transaction_status)

    def close(self) -> None:
        """Commit what is pending and close every connection."""
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def connect(url: str, name: str = "") -> psycopg.Connection[Any]:
    """Open a connection in autocommit mode; raise Unavailable when the server cannot be reached."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                               application_name=f"jarvis-memory{' ' + name if name else ''}")
    except psycopg.Error as exc:
        raise Unavailable(
            f"PostgreSQL at {redact(url)} is unreachable ({_first_line(exc)})") from exc


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://<unparsable URL>"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "")
    port = f":{parts['port']}" if parts.get("port") else ""
    where = host if host and not host.startswith("/") else ""
    socket = f"?host={host}" if host.startswith("/") else ""
    return f"postgresql://{user}{where}{port}/{parts.get('dbname', '')}{socket}"


# -- the schema --------------------------------------------------------------------------------


def schema_statements() -> list[str]:
    """DDL of the whole schema on PostgreSQL, from the Peewee models (models.py)."""
    dialect = pw.PostgresqlDatabase(None, field_types=FIELD_TYPES)
    statements: list[str] = []
    with _bound(dialect):
        for model in models.ALL_MODELS:
            schema = model._schema  # type: ignore[attr-defined]
            statements.append(_ddl(schema._create_table(safe=False)))
            statements.extend(_ddl(ctx) for ctx in schema._create_indexes(safe=False))
    statements.append(_APPEND_ONLY_FUNCTION)
    for model in models.APPEND_ONLY:
        table = model._meta.table_name
        statements.append(
            f'CREATE TRIGGER "{table}_append_only" BEFORE UPDATE OR DELETE ON "{table}" '
            "FOR EACH ROW EXECUTE FUNCTION jarvis_memory_append_only()")
    statements.extend(pgsearch.schema_statements())
    return statements


class _bound(AbstractContextManager[None]):
    """Bind the models to a Peewee database for rendering DDL, then back to what they had."""

    def __init__(self, dialect: pw.Database) -> None:
        self._dialect = dialect
        self._before = models.database_proxy.obj

    def __enter__(self) -> None:
        models.database_proxy.initialize(self._dialect)

    def __exit__(self, *_: object) -> None:
        models.database_proxy.initialize(self._before)


def _ddl(ctx: pw.Context) -> str:
    sql, params = ctx.query()
    if params:
        raise ValueError(f"DDL with parameters: {sql} {params}")
    return str(sql)


def migrate(conn: PgConnection) -> None:
    """Create the schema in an empty database, or check the version of an existing one.

    One daemon at a time (an advisory lock), in one transaction: PostgreSQL's DDL is
    transactional, so a daemon killed half-way leaves nothing behind.
    """
    conn.execute("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK,))
    try:
        exists = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_name = ?", (SCHEMA_TABLE,)).fetchone()[0]
        if exists:
            version = conn.execute(f'SELECT max("version") FROM "{SCHEMA_TABLE}"').fetchone()[0]
            if version is None or int(version) < 1:
                raise StartupError(f"{SCHEMA_TABLE} holds no version: not a jarvis-memory schema")
            if int(version) > migrations.LATEST_VERSION:
                raise StartupError(
                    f"the database schema is version {version}, newer than this daemon "
                    f"supports ({migrations.LATEST_VERSION}); upgrade jarvis-memory to open it")
            for step in migrations.MIGRATIONS[int(version):]:
                _apply(conn, step.version, step.postgres)
            return
        others = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = "
            "current_schema()").fetchone()[0]
        if others:
            raise StartupError(
                "the database's schema holds tables but no jarvis-memory schema version; it is "
                "not a jarvis-memory database (use an empty database or schema)")
        started = time.perf_counter()
        _apply(conn, migrations.LATEST_VERSION, (
            *schema_statements(),
            f'CREATE TABLE "{SCHEMA_TABLE}" ("version" INTEGER NOT NULL)',
            f'INSERT INTO "{SCHEMA_TABLE}" ("version") VALUES (0)',
        ), ("INSERT INTO \"settings\" (\"key\", \"value\") VALUES (?, ?)",
            ("page_token_key", secrets.token_bytes(32))))
        log.info("created the schema (version %d) in %.1f ms", migrations.LATEST_VERSION,
                 (time.perf_counter() - started) * 1000)
    finally:
        if conn.status() == TransactionStatus.IDLE:
            conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK,))


def _apply(
    conn: PgConnection, version: int, statements: Iterable[str],
    *bound: tuple[str, tuple[Any, ...]],
) -> None:
    """Run one migration's statements and record its version, in one transaction."""
    cursor = conn.cursor()
    cursor.execute("BEGIN")
    try:
        for statement in statements:
            cursor.execute(statement)
        for statement, params in bound:
            cursor.execute(statement, params)
        cursor.execute(f'UPDATE "{SCHEMA_TABLE}" SET "version" = ?', (version,))
        cursor.execute("COMMIT")
    except BaseException:
        if not conn.getautocommit():
            cursor.execute("ROLLBACK")
        raise


# -- the database ------------------------------------------------------------------------------


P = ParamSpec("P")
T = TypeVar("T")


class ReadPool(ThreadPoolExecutor):
    """The read threads, counting the reads submitted and not finished (running or queued).

    Used instead of a plain pool only when the metrics report the pool's use.
    """

    def __init__(self, workers: int) -> None:
        super().__init__(workers, thread_name_prefix="pg-read")
        self._count = threading.Lock()
        self.busy = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn`` in a read thread, counted until it ends."""
        with self._count:
            self.busy += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        with self._count:
            self.busy -= 1


class PostgresDatabase:
    """The daemon's PostgreSQL database (see backend.Database): shared with other daemons."""

    kind = "postgresql"
    begin_may_wait = True  # for the write lock, which other daemons' batches hold

    def __init__(
        self, url: str, *, busy_timeout_ms: int = 10_000, pool_size: int = 8
    ) -> None:
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms
        # Read handlers run in these threads, each with a connection of its own (opened on
        # first use): with the writer, the reader and the listener, at most pool_size + 3
        # connections (and the search threads' own).
        self.pool_size = pool_size
        self.read_executor: ThreadPoolExecutor | None = None
        self.count_reads = False  # a ReadPool, which counts the reads in it (the metrics)
        self._loop_thread: int | None = None
        self.writes = GroupCommitter(self)
        self._conn: PgConnection | None = None
        self._reader: PgConnection | None = None
        self._thread_readers = ThreadReaders(
            lambda: PgConnection(self.url, name="reader", settings=self._settings),
            PgConnection.close)
        self._listener: Listener | None = None

    @property
    def describe(self) -> str:
        """The URL without its password (for logs and messages)."""
        return redact(self.url)

    @property
    def _settings(self) -> str:
        # A statement waits this long for a lock (the write lock, or a table a collection's
        # change holds) before it fails with UNAVAILABLE.
        return f"SET lock_timeout = {int(self.busy_timeout_ms)}"

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, create or check the schema, and start following other daemons' commits.

        Raises StartupError when the server cannot be reached or the schema is not ours.
        """
        try:
            conninfo_to_dict(self.url)
        except psycopg.Error as exc:
            raise StartupError(f"--db: not a usable PostgreSQL URL ({_first_line(exc)})") from exc
        try:
            # A batch waits this long for the write lock before the write is UNAVAILABLE.
            migration = PgConnection(self.url, name="migration")
            try:
                migrate(migration)
            finally:
                migration.close()
            self._conn = PgConnection(self.url, on_rows=self._count_rows, name="writer",
                                      settings=self._settings)
            self._conn.raw()
            self._reader = PgConnection(self.url, name="reader", settings=self._settings)
            self.writes.revision = self._newest_revision(self._reader)
            self._loop_thread = threading.get_ident()
        except Unavailable as exc:
            self.close()
            raise StartupError(exc.message) from exc
        except BaseException:
            self.close()
            raise
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the command line's tools: nobody to publish changes to
        self._listener = Listener(self, loop)
        self._listener.start()
        self.read_executor = (ReadPool(self.pool_size) if self.count_reads else
                              ThreadPoolExecutor(self.pool_size, thread_name_prefix="pg-read"))

    def close(self) -> None:
        """Commit what is pending and close every connection."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self.read_executor is not None:
            self.read_executor.shutdown(wait=True)
            self.read_executor = None
        if self._conn is not None:
            try:
                self.writes.close()
            finally:
                self._conn.close()
                self._conn = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._thread_readers.close()

    @property
    def is_open(self) -> bool:
        """Whether open() succeeded and close() has not run."""
        return self._conn is not None

    @property
    def conn(self) -> PgConnection:
        """The writer connection (event loop and commit thread)."""
        if self._conn is None:
            raise Unavailable("the database is closed")
        return self._conn

    @property
    def reader(self) -> PgConnection:
        """The loop's reader; in another thread (a read handler's), that thread's own."""
        if self._reader is None:
            raise Unavailable("the database is closed")
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            return self.thread_reader()
        return self._reader

    def thread_reader(self) -> PgConnection:
        """The calling thread's own reader connection, opened on first use."""
        if self._conn is None:
            raise Unavailable("the database is closed")
        return self._thread_readers.get()

    def query_plan(self, sql: str, params: dict[str, Any]) -> list[str]:
        """PostgreSQL's plan for a query (EXPLAIN), one line per step."""
        return [str(row[0]) for row in self.reader.execute("EXPLAIN " + sql, params)]

    @staticmethod
    def _newest_revision(conn: PgConnection) -> int:
        return int(conn.execute('SELECT coalesce(max("revision"), 0) FROM "changes"')
                   .fetchone()[0])

    @property
    def revision(self) -> int:
        """The last committed revision this daemon knows of."""
        return self.writes.revision

    # -- transactions ------------------------------------------------------------------------

    def write(self) -> AbstractContextManager[WriteTxn]:
        """Open a write in the current batch (see GroupCommitter.write)."""
        return self.writes.write()

    def begin(self, cursor: Cursor) -> int:
        """Open a batch under the fleet's write lock; return the newest committed revision.

        The lock is taken before the revision is read (a statement of its own: in READ
        COMMITTED each statement sees what was committed when it started), so the batch
        continues exactly where the previous holder's commit ended.
        """
        try:
            cursor.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
            return int(cursor.execute('SELECT coalesce(max("revision"), 0) FROM "changes"')
                       .fetchone()[0])
        except BaseException:
            if not self.conn.getautocommit():  # no batch was opened: leave none behind
                cursor.execute("ROLLBACK")
            raise

    def commit_batch(self, txn: WriteTxn, to_index: set[str]) -> None:
        """Commit, telling the other daemons (their listeners) the batch's last revision."""
        del to_index  # SQLite's full-text bookkeeping
        if txn.changes:
            txn.cursor.execute(f"NOTIFY {CHANNEL}, '{txn.revision}'; COMMIT")
        else:
            txn.cursor.execute("COMMIT")

    def batch_usable(self) -> bool:
        """Whether no statement of the open batch failed (one that did aborts it)."""
        return self.conn.status() == TransactionStatus.INTRANS

    @contextlib.contextmanager
    def erasing(self) -> Iterator[None]:
        """Nothing to switch here.

        Deleted rows stay in their pages until (auto)VACUUM reclaims them, which is
        PostgreSQL's to schedule (see the README on forgetting).
        """
        yield

    def _count_rows(self, count: int) -> None:
        self.writes.changed_rows += count


class Listener:
    """Wakes the daemon's loop when another daemon committed (LISTEN/NOTIFY), in a thread.

    The loop then reads the new changes from the log and publishes them (writes.follow). After
    losing the server it connects again and catches up, since notifications sent meanwhile
    were lost.
    """

    def __init__(self, db: PostgresDatabase, loop: asyncio.AbstractEventLoop) -> None:
        self._db = db
        self._loop = loop
        self._stop = threading.Event()
        self._wanted = False  # a follow() is scheduled on the loop and has not run yet
        self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)

    def start(self) -> None:
        """Start listening in a thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = connect(self._db.url, "listener")
            except Unavailable as exc:
                log.debug("listener: %s", exc.message)
                self._stop.wait(LISTEN_RETRY_S)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake()  # whatever was committed while nobody listened
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if int(note.payload or 0) > self._db.writes.revision:
                                self._wake()
            except psycopg.Error as exc:
                log.warning("lost the PostgreSQL notifications (%s); connecting again",
                            _first_line(exc))
                self._stop.wait(LISTEN_RETRY_S)

    def _wake(self) -> None:
        if self._wanted:
            return
        self._wanted = True
        try:
            self._loop.call_soon_threadsafe(self._follow)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            self._stop.set()

    def _follow(self) -> None:
        self._wanted = False
        try:
            self._db.writes.follow()
        except Unavailable as exc:
            log.warning("could not read other daemons' changes: %s", exc.message)
