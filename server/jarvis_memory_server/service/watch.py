"""The change feed: replay from the log, then live changes from the commits, with no gap.

A watcher registers before it replays, so that every batch committed from then on reaches
it; the replay reads the log up to what is committed; the live part skips what the replay
already sent. Committing appends each batch once per watcher (a shared list, never copied),
without waiting: a watcher that lets more than ``buffer`` changes pile up loses its backlog
(memory stays bounded, writers never wait) and is ended with RESOURCE_EXHAUSTED naming the
revision to resume from.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from jarvis_memory_server.errors import InvalidArgument, OutOfRange, ResourceExhausted
from jarvis_memory_server.service.common import ServiceBase
from jarvis_memory_server.store.backend import Database
from jarvis_memory_server.store.changes import ChangeStore
from jarvis_memory_server.store.writes import ChangeRow

# The kinds of resources whose changes the log records (Change.kind).
KINDS = ("memory", "session", "message", "session_event", "event", "snapshot", "preference",
         "state", "tool_call", "planning_cycle", "decision", "collection", "row")
REPLAY_PAGE = 1000
COMPACT_BATCH = 10_000
# One message carries at most this many changes, or about this much resource text.
MAX_BATCH_CHANGES = 256
MAX_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(eq=False)
class _Watcher:
    namespace: str
    kinds: frozenset[str]
    # The committed batches not yet sent, shared with the other watchers (never copied):
    # publishing costs one append per watcher, whatever the batch size.
    batches: deque[list[ChangeRow]] = field(default_factory=deque)
    pending: int = 0  # changes in ``batches``
    overflowed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class WatchService(ServiceBase):
    """Streams committed changes to watchers; compacts the log."""

    def __init__(
        self, db: Database, *, buffer: int = 10_000, retention: int = 1_000_000,
        coalesce_s: float = 0.02,
    ) -> None:
        super().__init__(db)
        self._store = ChangeStore(db)
        self._watchers: set[_Watcher] = set()
        self.buffer = buffer
        self.retention = retention
        # Sending costs the event loop ~40 µs a message per watcher: waiting a little after a
        # wake-up lets a busy feed go out as one message of many changes instead of many
        # (measured with 16 watchers: writes at 0.24 of the rate without watchers when every
        # change was a message, 0.63 with 5 ms, 0.78 with 20 ms).
        self.coalesce_s = coalesce_s
        db.writes.on_commit = self._publish

    def _publish(self, changes: list[ChangeRow]) -> None:
        for watcher in self._watchers:
            if watcher.overflowed:
                continue
            watcher.pending += len(changes)
            if watcher.pending > self.buffer:
                watcher.overflowed = True
                watcher.batches.clear()  # drop the backlog: bounded memory
            else:
                watcher.batches.append(changes)
            watcher.wake.set()

    async def watch(
        self, namespace: str, kinds: tuple[str, ...], start_revision: int
    ) -> AsyncIterator[list[ChangeRow]]:
        """Yield batches of the changes of a namespace from ``start_revision`` (0: from now) on.

        Batches are never empty and in revision order. Raises InvalidArgument, OutOfRange (a
        compacted start), ResourceExhausted (fell behind).
        """
        if start_revision < 0:
            raise InvalidArgument("start_revision", "must not be negative")
        for i, kind in enumerate(kinds):
            if kind not in KINDS:
                raise InvalidArgument(f"kinds[{i}]", f"{kind[:64]!r} is not a kind of change: "
                                      f"use {', '.join(KINDS)}")
        watcher = _Watcher(namespace, frozenset(kinds))
        self._watchers.add(watcher)
        try:
            last = self._db.revision if start_revision == 0 else start_revision - 1
            if start_revision:
                oldest = self._store.oldest()
                if oldest is not None and start_revision < oldest:
                    raise OutOfRange(
                        f"revision {start_revision} was compacted; the oldest available is "
                        f"{oldest}", reason="REVISION_COMPACTED", oldest_revision=str(oldest))
                while True:  # replay what the log holds
                    page = self._store.page(namespace, kinds, last, REPLAY_PAGE)
                    for batch in _batches(page):
                        yield batch
                        last = batch[-1].revision
                    if len(page) < REPLAY_PAGE:
                        break
            while True:  # live
                while not watcher.batches and not watcher.overflowed:
                    watcher.wake.clear()
                    await watcher.wake.wait()
                    if self.coalesce_s:
                        await asyncio.sleep(self.coalesce_s)
                if watcher.overflowed:
                    raise ResourceExhausted(
                        f"the watcher fell more than {self.buffer} changes behind; resume "
                        f"from revision {last + 1}", reason="WATCHER_TOO_SLOW",
                        resume_revision=str(last + 1))
                pending: list[ChangeRow] = []
                while watcher.batches:
                    for change in watcher.batches.popleft():
                        # Another namespace or kind, or already sent by the replay: skip.
                        if (change.revision > last and change.namespace == namespace
                                and (not watcher.kinds or change.kind in watcher.kinds)):
                            pending.append(change)
                watcher.pending = 0
                for batch in _batches(pending):
                    yield batch
                    last = batch[-1].revision
        finally:
            self._watchers.discard(watcher)

    def watcher_lag(self) -> tuple[int, int]:
        """(watchers connected, changes the slowest has not been sent yet), for the metrics.

        Safe from another thread: the set is copied in one step (C code under the GIL), and
        the counts are plain reads. A watcher that overflowed counts as one past the buffer.
        """
        watchers = tuple(self._watchers)
        behind = max((self.buffer + 1 if w.overflowed else w.pending for w in watchers),
                     default=0)
        return len(watchers), behind

    def compact(self) -> int:
        """Drop changes beyond the newest ``retention``; return how many (a batch at most)."""
        # Revisions have no gaps: this deletes exactly one batch when the log is long enough, so
        # the sweep, which repeats while a round fills a batch, catches up.
        oldest = self._store.oldest() or 1
        upto = min(self._db.revision - self.retention, oldest + COMPACT_BATCH - 1)
        if upto <= 0:
            return 0
        with self._db.write() as txn:
            return self._store.compact(txn, upto)


def _batches(changes: list[ChangeRow]) -> list[list[ChangeRow]]:
    """Split changes into messages of at most MAX_BATCH_CHANGES / about MAX_BATCH_BYTES."""
    batches: list[list[ChangeRow]] = []
    current: list[ChangeRow] = []
    size = 0
    for change in changes:
        weight = 100 + len(change.resource or "")
        if current and (len(current) >= MAX_BATCH_CHANGES or size + weight > MAX_BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(change)
        size += weight
    if current:
        batches.append(current)
    return batches
