"""The write path: group commit on the writer connection, with COMMIT off the event loop.

Every write request runs its statements on the event loop thread, inside the batch transaction
that is open at that moment (the first write opens it with ``BEGIN IMMEDIATE``). At the end of
the loop iteration the batch is handed to a commit thread, which indexes the batch's new rows
for full-text search (store/fulltext.py) and runs ``COMMIT`` while the loop keeps serving: APSW
releases the GIL inside SQLite, so the commit's page writes overlap with the next requests'
gRPC work on the other core. Writes that arrive while a commit runs wait for it
(``writable()``) and then join the next batch together; the busier the daemon, the larger the
batches. A commit writes every b-tree page the batch touched (about ten per memory), so one
commit for many writes is where SQLite's write throughput is.

A request is answered only after the batch holding its writes committed (the transport awaits
``pending_commit()``): an acknowledged write is in the WAL and survives a crash of the daemon.
Reads go to a separate connection that sees committed data only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import apsw

from jarvis_memory_server.errors import BatchRolledBack, JarvisError
from jarvis_memory_server.store.failures import storage_errors, translate_error
from jarvis_memory_server.store.fulltext import FTS_SUFFIX, PENDING_SUFFIX, index_pending

if TYPE_CHECKING:
    from jarvis_memory_server.store.backend import Cursor, Database

log = logging.getLogger("jarvis_memory.store")

# Bound by position from a ChangeRow: the columns are its fields, in order.
_INSERT_CHANGE = (
    'INSERT INTO "changes" ("revision", "namespace", "kind", "key", "operation", "created_at", '
    '"resource") VALUES (?, ?, ?, ?, ?, ?, ?)'
)


# bytes (a content hash) become hex; everything else in a row is JSON already.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=bytes.hex)


def resource_json(row: tuple[Any, ...] | None) -> str | None:
    """A stored row (a NamedTuple) as the JSON text a change carries.

    The text is an array of the row's fields in order: no names, which is cheaper to write, and
    the change's kind says which NamedTuple it is.
    """
    return None if row is None else _ENCODER.encode(row)


class ChangeRow(NamedTuple):
    """One committed change, as the change log stores it.

    resource is the row after the change as resource_json wrote it (None for a delete); logs
    written before rows were stored by position hold a JSON object instead.
    """

    revision: int
    namespace: str
    kind: str
    key: str
    operation: str
    created_at: int
    resource: str | None = None


class WriteTxn:
    """The open batch transaction: its cursor, its revisions and its changes.

    The changes are published to watchers once the batch commits.
    """

    __slots__ = ("base", "changes", "cursor", "revision")

    def __init__(self, cursor: Cursor, revision: int) -> None:
        self.cursor = cursor
        self.base = revision  # the last revision committed before this batch
        self.revision = revision
        self.changes: list[ChangeRow] = []

    @property
    def next_revision(self) -> int:
        """The revision the next recorded change will get."""
        return self.revision + 1

    def record(
        self, namespace: str, kind: str, key: str, operation: str, at_us: int,
        resource: tuple[Any, ...] | None = None,
    ) -> int:
        """Log one change of a resource (its stored row, None for a delete); return its revision."""
        self.revision += 1
        change = ChangeRow(self.revision, namespace, kind, key, operation, at_us,
                           resource_json(resource))
        self.cursor.execute(_INSERT_CHANGE, change)
        self.changes.append(change)
        return self.revision

    def record_many(
        self, namespace: str, kind: str, keys: list[str], operation: str, at_us: int,
        resources: Sequence[tuple[Any, ...]] | None = None,
    ) -> int:
        """Log one change per key (a bulk write); return the last revision."""
        first = self.revision + 1
        self.revision += len(keys)
        rows: Sequence[tuple[Any, ...] | None] = [None] * len(keys)
        if resources:
            rows = resources
        changes = [ChangeRow(first + i, namespace, kind, key, operation, at_us, resource_json(row))
                   for i, (key, row) in enumerate(zip(keys, rows, strict=True))]
        self.cursor.executemany(_INSERT_CHANGE, changes)
        self.changes += changes
        return self.revision


def is_index_table(table: str) -> bool:
    """Whether a table belongs to a full-text or vector index (store/search.py)."""
    return FTS_SUFFIX in table or "_vector_signs_" in table


def commit(cursor: Cursor, to_index: set[str]) -> None:
    """Finish an SQLite transaction: index the tables' new rows (store/fulltext.py), COMMIT."""
    index_pending(cursor, sorted(to_index))  # type: ignore[arg-type] # SQLite's cursor
    cursor.execute("COMMIT")


# Changes of every namespace after a revision: what other daemons committed (follow()).
_CHANGES_AFTER = (
    'SELECT "revision", "namespace", "kind", "key", "operation", "created_at", "resource" '
    'FROM "changes" WHERE "revision" > :after ORDER BY "revision" LIMIT :limit'
)
FOLLOW_PAGE = 1000


@dataclass
class _Batch:
    txn: WriteTxn
    committed: asyncio.Future[None] | None  # None: no event loop, commit inline
    writes: int = 0
    opened_at: float = 0.0
    commit_started: float = 0.0  # perf_counter() at its hand-off to COMMIT (with on_batch)
    # Tables with rows waiting to be indexed for full-text search (seen by count_change).
    to_index: set[str] = field(default_factory=set)


T = TypeVar("T")
# A write whose batch another write's failure rolled back runs again, this many times at most.
MAX_RUNS = 3

# A batch waits for the loop to run out of other work, within these bounds.
MAX_BATCH_DELAY_S = 0.002
MAX_BATCH_WRITES = 2000


def _loop_busy(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether callbacks other than ours are ready to run (asyncio's default loop only)."""
    ready = getattr(loop, "_ready", None)
    return bool(ready)


@dataclass(frozen=True)
class PendingCommit:
    """What a request that wrote must wait for before answering, and its last revision."""

    committed: asyncio.Future[None]
    revision: int


# Set by write() for the request being handled, read by the transport right after the
# (synchronous) handler returns, so it always belongs to the current call.
_pending: ContextVar[PendingCommit | None] = ContextVar("jarvis_memory_pending", default=None)


def pending_commit() -> PendingCommit | None:
    """Return and clear the commit the current request's writes wait on (None: no writes)."""
    pending = _pending.get()
    if pending is not None:
        _pending.set(None)
    return pending


@dataclass
class GroupCommitter:
    """Batches the writes of the writer connection into shared transactions."""

    db: Database
    revision: int = 0  # the last committed revision
    commits: int = 0  # batches committed, and the writes they held
    committed_writes: int = 0
    _batch: _Batch | None = None
    _committing: asyncio.Future[None] | None = None  # set while the commit thread runs
    _opening: asyncio.Future[None] | None = None  # set while the commit thread opens a batch
    _thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="commit")
    )
    # Called with each committed batch's changes, in commit order (the watch broadcaster).
    on_commit: Callable[[list[ChangeRow]], None] | None = None
    # Called with each committed batch's writes and commit time in seconds (the metrics).
    on_batch: Callable[[int, float], None] | None = None
    # Rows of the schema's own tables changed on the writer connection (count_change).
    changed_rows: int = 0

    def count_change(self, op: int, _db: str, table: str, _rowid: int) -> None:
        """The writer connection's update hook: count a changed row of a table of ours.

        Rows of index tables are not counted: FTS5 keeps its updates in memory and writes them
        out whenever a later statement opens a savepoint, so the rows it writes during one
        write may stem from an earlier write of the batch. (SQLite's total_changes() counts
        those too, which is why it is not used.) A row noted for indexing marks its table for
        the batch's commit, which indexes the noted rows.
        """
        if not is_index_table(table):
            self.changed_rows += 1
        elif (op == apsw.SQLITE_INSERT and table.endswith(PENDING_SUFFIX)
              and self._batch is not None):
            self._batch.to_index.add(table.removesuffix(PENDING_SUFFIX))

    @property
    def commit_running(self) -> bool:
        """Whether a batch is being committed in the commit thread right now."""
        return self._committing is not None

    async def writable(self) -> None:
        """Wait until the writer connection is free (no COMMIT running in the commit thread).

        Where opening a batch may wait (PostgreSQL: for the write lock another daemon holds),
        the batch is opened here, in the commit thread, so that the loop goes on serving.
        """
        while self._committing is not None or self._opening is not None:
            await asyncio.shield(self._committing or self._opening)  # type: ignore[arg-type]
        if self._batch is not None or not self.db.begin_may_wait:
            return
        loop = asyncio.get_running_loop()
        opening = self._opening = loop.create_future()
        try:
            cursor, base = await loop.run_in_executor(self._thread, self._open)
            self._open_batch(cursor, base)
        finally:
            self._opening = None
            opening.set_result(None)

    async def run(self, body: Callable[[], T]) -> tuple[T, int | None]:
        """Run a synchronous body that writes (through write()) and wait for its commit.

        Returns the body's result and the revision of its last change (None: it changed
        nothing). When another write's failure rolled the batch back, the body was undone and
        never acknowledged, so it runs again in the next batch: one caller's failure never
        fails another caller's write.
        """
        for run in range(1, MAX_RUNS + 1):
            await self.writable()
            pending_commit()  # clear: a failed body must not leave its state to this one
            result = body()
            pending = pending_commit()
            if pending is None:
                return result, None
            try:
                await pending.committed
            except BatchRolledBack:
                if run == MAX_RUNS:
                    raise
                log.info("running a write again: another write rolled back its batch")
                continue
            return result, pending.revision
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        """Run the body as one atomic unit of the current batch.

        A body may raise a JarvisError only before it has changed any row (validate and check
        first; a statement that fails, such as a unique violation, undoes itself): the batch
        then carries on without it. Any other failure, or one after rows changed, rolls the
        whole batch back and fails every write in it, so nothing half-done is ever committed.
        (Per-write SAVEPOINTs would isolate failures too, but cost more than the write itself
        on batches of hundreds.)

        Inside an event loop the caller must first await ``writable()`` and, before answering,
        ``pending_commit()``; without a loop the batch commits before write() returns.
        """
        if self._committing is not None:
            raise RuntimeError("write() while a commit runs: await writable() first")
        batch = self._batch or self._begin()
        batch.writes += 1
        txn = batch.txn
        start, changes_before = txn.revision, self.changed_rows
        try:
            with storage_errors():
                yield txn
        except BaseException as exc:
            if not (isinstance(exc, JarvisError) and self.changed_rows == changes_before
                    and self.db.batch_usable()):
                self._abort(batch, exc)
            elif batch.committed is None:
                self._commit_inline()
            raise
        if batch.committed is None:
            self._commit_inline()
        elif txn.revision != start or self.changed_rows != changes_before:
            # (Rows changed with no change recorded: a compaction, which must wait too.)
            _pending.set(PendingCommit(batch.committed, txn.revision))

    def _open(self) -> tuple[Cursor, int]:
        cursor = self.db.conn.cursor()
        with storage_errors():
            return cursor, self.db.begin(cursor)

    def _begin(self) -> _Batch:
        return self._open_batch(*self._open())

    def _open_batch(self, cursor: Cursor, base: int) -> _Batch:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            committed = None
        else:
            committed = loop.create_future()
            # Writes handled later in this loop iteration join the batch before it commits.
            loop.call_soon(self._start_commit, loop)
        self._batch = _Batch(WriteTxn(cursor, base), committed)
        if committed is not None:
            self._batch.opened_at = loop.time()
        return self._batch

    def _start_commit(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._batch
        if batch is None:  # aborted meanwhile
            return
        if (_loop_busy(loop) and batch.writes < MAX_BATCH_WRITES
                and loop.time() - batch.opened_at < MAX_BATCH_DELAY_S):
            # Other requests are being handled: let them join before paying for a commit.
            loop.call_soon(self._start_commit, loop)
            return
        if batch.writes <= 1:
            # A lone write: the daemon is not busy, and a thread hand-off would only add latency.
            self._commit_inline()
            return
        self._batch = None
        self._committing = loop.create_future()
        if self.on_batch is not None:
            batch.commit_started = time.perf_counter()
        done = loop.run_in_executor(self._thread, self.db.commit_batch, batch.txn, batch.to_index)
        done.add_done_callback(lambda outcome: self._finish_commit(batch, outcome))

    def _finish_commit(self, batch: _Batch, outcome: asyncio.Future[Any]) -> None:
        committing, self._committing = self._committing, None
        error = outcome.exception()
        if error is None:
            self._committed(batch)
        else:
            self._failed(batch, error)
        if committing is not None:
            committing.set_result(None)  # waiting writers may go on

    def _commit_inline(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        try:
            if self.on_batch is not None:
                batch.commit_started = time.perf_counter()
            self.db.commit_batch(batch.txn, batch.to_index)
        except (apsw.Error, JarvisError) as exc:
            self._failed(batch, exc)
            if batch.committed is None:
                raise
            return
        self._committed(batch)

    def _committed(self, batch: _Batch) -> None:
        self.commits += 1
        self.committed_writes += batch.writes
        if self.on_batch is not None:
            self.on_batch(batch.writes, time.perf_counter() - batch.commit_started)
        if batch.txn.base != self.revision:
            # Other daemons committed changes before this batch (PostgreSQL): publish theirs
            # and ours in revision order, from the log.
            self.follow()
        elif batch.txn.changes:
            self.revision = batch.txn.revision
            if self.on_commit is not None:
                self.on_commit(batch.txn.changes)
        if batch.committed is not None:
            batch.committed.set_result(None)

    def follow(self) -> None:
        """Publish the changes committed after the last one this daemon knows, in order.

        On PostgreSQL other daemons commit too, and each commit's notification (or a batch of
        this daemon that found a newer revision) brings this daemon up to date: revisions
        are given out under one lock and committed in order (postgres.py), so everything up
        to the newest visible revision is there, with no gap.
        """
        while True:
            with storage_errors():
                rows = [ChangeRow._make(r) for r in self.db.reader.execute(
                    _CHANGES_AFTER, {"after": self.revision, "limit": FOLLOW_PAGE})]
            if not rows:
                return
            self.revision = rows[-1].revision
            if self.on_commit is not None:
                self.on_commit(rows)
            if len(rows) < FOLLOW_PAGE:
                return

    def _failed(self, batch: _Batch, error: BaseException) -> None:
        log.error("commit of a batch of %d writes failed, rolled back: %r", batch.writes, error)
        if not self.db.conn.getautocommit():
            batch.txn.cursor.execute("ROLLBACK")
        if batch.committed is not None:
            batch.committed.set_exception(translate_error(error))
            batch.committed.exception()  # its waiters re-raise it; nobody else should

    def _abort(self, batch: _Batch, cause: BaseException) -> None:
        """Roll back the whole batch; its other writes get BatchRolledBack.

        The transport runs those again (transport/rpc.py), so only the write that failed fails.
        """
        log.error("a write failed after changing rows; rolling back its batch: %r", cause)
        self._batch = None
        if not self.db.conn.getautocommit():
            batch.txn.cursor.execute("ROLLBACK")
        if batch.committed is not None:
            batch.committed.set_exception(
                BatchRolledBack("the write batch was rolled back because of another write; retry")
            )
            batch.committed.exception()

    def close(self) -> None:
        """Commit what is open and stop the commit thread (call once no request is running)."""
        if self._batch is not None:
            self._batch.committed = None  # nobody waits any more: commit inline
            self._commit_inline()
        self._thread.shutdown(wait=True)
