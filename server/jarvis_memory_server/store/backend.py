"""What the store needs of a database, and the one place where the backend is chosen.

Two backends implement it: ``sqlite.Database``, an embedded file (the default), and
``postgres.Database``, a PostgreSQL server that any number of daemons share. The store modules
run the same SQL on either through the small interface below, which is APSW's: an APSW
connection is one as it is, and postgres.py gives a psycopg connection that shape. Writes go
through a GroupCommitter (writes.py) on both.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import peewee as pw
from playhouse.apsw_ext import APSWDatabase

if TYPE_CHECKING:
    from jarvis_memory_server.store.search import SearchIndex
    from jarvis_memory_server.store.sqlite import Database as SQLiteDatabase
    from jarvis_memory_server.store.writes import GroupCommitter, WriteTxn

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    """A cursor: runs statements with named (``:name``) or positional (``?``) parameters."""

    def execute(self, statements: str, bindings: Any = None, /) -> Cursor:
        """Run statements with their parameters; return this cursor."""
        ...

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any], /) -> Cursor:
        """Run one statement once per set of parameters; return this cursor."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        ...

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows."""
        ...


class Connection(Protocol):
    """A connection: statements run on it directly or through its cursors."""

    def cursor(self) -> Cursor:
        """A new cursor on this connection."""
        ...

    def execute(self, statements: str, bindings: Any = None, /) -> Cursor:
        """Run statements with their parameters; return this cursor."""
        ...

    def changes(self) -> int:
        """Rows changed by the last INSERT, UPDATE or DELETE."""
        ...

    def getautocommit(self) -> bool:
        """Whether no transaction is open."""
        ...


class Database(Protocol):
    """A database the daemon serves from: opened and migrated, with its write path."""

    kind: str  # "sqlite" or "postgresql"
    writes: GroupCommitter
    # Whether begin() may wait long (for a lock other processes hold): then the write path
    # opens batches off the event loop.
    begin_may_wait: bool
    @property
    def read_executor(self) -> Executor | None:
        """Where the transport runs synchronous read handlers.

        None: on the event loop, for reads that take microseconds (SQLite); else a pool whose
        threads have readers of their own (PostgreSQL, where each read waits for the server).
        """
        ...

    def open(self) -> None:
        """Open (create or check) the database, ready to serve."""
        ...

    def close(self) -> None:
        """Commit what is pending and close every connection."""
        ...

    @property
    def is_open(self) -> bool:
        """Whether open() succeeded and close() has not run."""
        ...

    @property
    def describe(self) -> str:
        """Where the data is, for logs and messages (a path, or a URL without its password)."""
        ...

    @property
    def conn(self) -> Connection:
        """The writer connection (event loop thread only)."""
        ...

    @property
    def reader(self) -> Connection:
        """A connection that sees committed data only (event loop thread only)."""
        ...

    def thread_reader(self) -> Connection:
        """The calling thread's own reader, for reads run off the event loop."""
        ...

    @property
    def revision(self) -> int:
        """The last committed revision this daemon knows of."""
        ...

    def write(self) -> contextlib.AbstractContextManager[WriteTxn]:
        """Open a write in the current batch (see GroupCommitter.write)."""
        ...

    def query_plan(self, sql: str, params: dict[str, Any]) -> list[str]:
        """The database's plan for a query, one step per line."""
        ...

    # -- the write path's hooks (GroupCommitter) -------------------------------------------

    def begin(self, cursor: Cursor) -> int:
        """Open a batch transaction on the writer; return the last committed revision."""
        ...

    def commit_batch(self, txn: WriteTxn, to_index: set[str]) -> None:
        """Commit a batch transaction (in the commit thread, or inline)."""
        ...

    def batch_usable(self) -> bool:
        """Whether the open batch can go on after a statement of it failed."""
        ...

    def erasing(self) -> contextlib.AbstractContextManager[None]:
        """Within it, deleted content is overwritten on the writer connection (forgetting)."""
        ...


C = TypeVar("C")


class ThreadReaders(Generic[C]):
    """Each thread's own reader connection, opened on first use; all closed together."""

    def __init__(self, connect: Callable[[], C], close: Callable[[C], None]) -> None:
        self._connect = connect
        self._close = close
        self._local = threading.local()
        self._all: list[C] = []
        self._lock = threading.Lock()

    def get(self) -> C:
        """The calling thread's reader."""
        reader: C | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = self._connect()
            with self._lock:
                self._all.append(reader)
        return reader

    def close(self) -> None:
        """Close every thread's reader (once no thread uses them)."""
        with self._lock:
            for reader in self._all:
                self._close(reader)
            self._all.clear()
        self._local = threading.local()


def is_postgres(target: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database (a URL) rather than an SQLite file."""
    return target.startswith(POSTGRES_SCHEMES)


def make_database(target: str, **options: Any) -> Database:
    """The Database ``--db`` names, not yet opened: a PostgreSQL URL or an SQLite file path.

    ``options`` are the backend's own (durability, busy_timeout_ms, pool_size, ...); each
    backend takes the ones that apply to it.
    """
    backend: Callable[..., Database]
    if is_postgres(target):
        from jarvis_memory_server.store.postgres import PostgresDatabase as backend
    else:
        from jarvis_memory_server.store.sqlite import Database as backend
    accepted = inspect.signature(backend).parameters
    return backend(target, **{k: v for k, v in options.items() if k in accepted})


class SearchStore(Protocol):
    """The full-text indexes and embeddings of a database (search.py, pgsearch.py).

    Rows are tuples of the index's row type; scores grow with relevance.
    """

    def tokenize(self, text: str) -> list[tuple[int, int, str]]:
        """(start byte, end byte, stemmed token) of each word, as the indexes split text."""
        ...

    def follow_growth(self, index: SearchIndex) -> None:
        """Drop an index's cached statistics once its table grew past what they knew."""
        ...

    def doc_frequency(self, index: SearchIndex, namespace: str, token: str, prefix: bool) -> int:
        """How many of a namespace's rows hold the token (or a token it prefixes)."""
        ...

    def namespace_statistics(self, index: SearchIndex, namespace: str) -> tuple[int, float]:
        """A namespace's rows in an index and their mean length in tokens."""
        ...

    def keyword(
        self, index: SearchIndex, namespace: str, match: str, filters: dict[str, Any], *,
        newest: int | None, limit: int,
    ) -> list[tuple[tuple[Any, ...], float]]:
        """Up to ``limit`` (row, score) matching an FTS5 expression of quoted terms."""
        ...

    def rows(
        self, index: SearchIndex, namespace: str, ids: Sequence[int]
    ) -> dict[int, tuple[Any, ...]]:
        """A namespace's rows by id."""
        ...

    def dimension(self, conn: Connection | Cursor, namespace: str) -> int | None:
        """The namespace's embedding dimension (None before its first embedding)."""
        ...

    def read_dimension(self, namespace: str) -> int | None:
        """dimension() on the calling thread's reader."""
        ...

    def fix_dimension(self, txn: WriteTxn, namespace: str, dimension: int) -> None:
        """Record a namespace's first embedding dimension."""
        ...

    def put_embedding(
        self, txn: WriteTxn, index: SearchIndex, namespace: str, row_id: int, vector: bytes
    ) -> None:
        """Store or replace a row's embedding (float32 values)."""
        ...

    def delete_embedding(self, txn: WriteTxn, index: SearchIndex, row_id: int) -> None:
        """Remove a row's embedding, if it has one."""
        ...

    def nearest_candidates(
        self, index: SearchIndex, namespace: str, vector: bytes, k: int
    ) -> list[int]:
        """Ids of about the ``k`` rows nearest a vector, to rank exactly."""
        ...

    def nearest(
        self, index: SearchIndex, namespace: str, vector: bytes, filters: dict[str, Any], *,
        among: Sequence[int] | None, limit: int,
    ) -> list[tuple[tuple[Any, ...], float]]:
        """Up to ``limit`` (row, cosine similarity) by exact distance, among ids or all."""
        ...


def search_store(db: Database) -> SearchStore:
    """The search store of a database's backend: FTS5 and sqlite-vec, or tsvector and pgvector."""
    if db.kind == "postgresql":
        from jarvis_memory_server.store import pgsearch

        return pgsearch.SearchStore(db)
    from jarvis_memory_server.store import search

    return search.SearchStore(cast("SQLiteDatabase", db))


def now_us() -> int:
    """Return the current time in microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000


# The dialect compile_sql renders in. Its SQL runs on both backends: postgres.py rewrites the
# parameters into psycopg's style, and the schema on PostgreSQL is made so that the rest reads
# the same (booleans are small integers there too, integers are 64 bits).
_DIALECT = APSWDatabase(None)


def compile_sql(query: pw.Query) -> str:
    """Render a Peewee query once into SQL with named parameters, for reuse on a cursor.

    Parameters are written in the query as ``pw.SQL(":name")``; the query must not carry any
    literal values, so the SQL binds from one dict per call. Peewee builds a query in
    100-200 µs; executing the compiled SQL costs a few µs.
    """
    sql, params = _DIALECT.get_sql_context().sql(query).query()
    if params:
        raise ValueError(f"compile_sql: query has literal parameters {params!r}: {sql}")
    return str(sql)
