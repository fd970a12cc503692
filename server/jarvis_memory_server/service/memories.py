"""Memory rules: content normalisation and dedup, validation, pagination, transactions.

The lifecycle. A memory may supersede others, hold only for a while (valid_from, valid_to:
the client's statement of when the fact holds in the world) and expire (expires_at). A read
sees the current memories: not superseded, valid now, not expired. Such conditions are
applied only in namespaces that hold a memory with a lifecycle column set (one probe of a
partial index), so a namespace of plain memories reads exactly as fast as before. Every
change to a memory but its creation and a plain restatement keeps the version it replaced
(memory_history), with what changed and who changed it.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jarvis_memory_server.errors import FailedPrecondition, InvalidArgument
from jarvis_memory_server.service.auth import CALLER
from jarvis_memory_server.service.common import (
    ServiceBase,
    check_id,
    choice,
    filter_fingerprint,
    json_object,
    not_found,
    page_size,
)
from jarvis_memory_server.service.search import (
    check_dimension,
    claim_dimension,
    embedding_bytes,
)
from jarvis_memory_server.store.backend import Database, now_us, search_store
from jarvis_memory_server.store.memories import (
    CATEGORIES,
    SOURCES,
    UPDATABLE,
    HistoryRow,
    MemoryRow,
    MemoryStore,
)
from jarvis_memory_server.store.search import MEMORIES, dimension_of
from jarvis_memory_server.store.writes import WriteTxn

MAX_CONTENT_BYTES = 65536
MAX_SUBJECT_CHARS = 256
MAX_ATTRIBUTES_BYTES = 65536
MAX_BATCH = 1000
MAX_SUPERSEDES = 100
MAX_TTL_US = 100 * 366 * 86_400 * 1_000_000
MAX_FORGET_IDS = 1000
# Memories erased per transaction by ForgetMemories, and purged per expiry sweep round:
# other writers wait at most for one such transaction.
ERASE_BATCH = 200

# Fields of Memory that a change can set, as the history names them (changed_fields).
VERSIONED = ("content", "category", "source", "subject", "attributes", "stale",
             "superseded_by", "superseded_at", "supersedes", "valid_from", "valid_to",
             "expires_at")

__all__ = [
    "UPDATABLE", "MemoryRow", "MemoryService", "NewMemory", "memory_filters", "normalize_content",
]


def normalize_content(content: str) -> str:
    """Normalise content for dedup: NFC, trimmed, inner white space collapsed, case-folded."""
    collapsed = " ".join(unicodedata.normalize("NFC", content).split())
    # Case folding can produce decomposed sequences; normalise once more so equal text hashes equal.
    return unicodedata.normalize("NFC", collapsed.casefold())


def content_hash(content: str) -> bytes:
    """SHA-256 of the normalised content: the dedup key, unique per namespace."""
    return hashlib.sha256(normalize_content(content).encode()).digest()


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A memory to add; category and source are the lowercase names (e.g. "preference")."""

    content: str
    category: str
    source: str
    subject: str = ""
    attributes: dict[str, Any] | None = None
    embedding: Sequence[float] = ()
    supersedes: Sequence[int] = ()
    valid_from: int | None = None  # µs since the epoch
    valid_to: int | None = None
    ttl_us: int | None = None
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a memory and the change that made it (GetMemoryHistory)."""

    memory: MemoryRow
    revision: int
    time: int
    operation: str  # create, update, restate, supersede, expire
    changed_fields: list[str] = field(default_factory=list)
    credential: str | None = None


class MemoryService(ServiceBase):
    """Adds, reads, lists, changes and deletes memories."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._store = MemoryStore(db)
        self._search = search_store(db)

    # -- writes -----------------------------------------------------------------------------

    def add(self, namespace: str, memory: NewMemory) -> tuple[MemoryRow, bool]:
        """Store a memory or restate the existing one; return (memory, deduplicated).

        Raises InvalidArgument for empty or oversized fields and unknown categories or sources.
        """
        values, vector = self._validated(namespace, memory, "")
        with self._db.write() as txn:
            replaced = self._check_supersedes(txn, values, "supersedes")
            if vector is not None:
                claim_dimension(self._search, txn, namespace, dimension_of(vector), "embedding")
            return self._add(txn, values, vector, replaced)

    def add_many(self, namespace: str, memories: list[NewMemory]) -> list[tuple[MemoryRow, bool]]:
        """Add a batch in one transaction: all or nothing; dedup applies inside the batch too.

        Raises InvalidArgument naming the first bad memory (memories[i].field).
        """
        if not memories:
            raise InvalidArgument("memories", "must hold at least one memory")
        if len(memories) > MAX_BATCH:
            raise InvalidArgument(
                "memories", f"holds {len(memories)} memories; at most {MAX_BATCH} per call"
            )
        batch = [self._validated(namespace, m, f"memories[{i}].") for i, m in enumerate(memories)]
        dimensions = {len(m.embedding): i for i, m in enumerate(memories) if m.embedding}
        if len(dimensions) > 1:
            (first, _), (other, i) = sorted(dimensions.items(), key=lambda d: d[1])[:2]
            raise InvalidArgument(
                f"memories[{i}].embedding",
                f"has {other} values, but an earlier memory of the batch has {first}",
                reason="EMBEDDING_DIMENSION_MISMATCH",
            )
        named: dict[int, int] = {}
        for i, (values, _) in enumerate(batch):
            for memory_id in values["supersedes_ids"]:
                if memory_id in named:
                    raise InvalidArgument(
                        f"memories[{i}].supersedes",
                        f"names memory {memory_id}, which memories[{named[memory_id]}] "
                        "supersedes already")
                named[memory_id] = i
        with self._db.write() as txn:
            replaced = [self._check_supersedes(txn, values, f"memories[{i}].supersedes")
                        for i, (values, _) in enumerate(batch)]
            for dimension, i in dimensions.items():
                claim_dimension(self._search, txn, namespace, dimension, f"memories[{i}].embedding")
            return [self._add(txn, values, vector, old)
                    for (values, vector), old in zip(batch, replaced, strict=True)]

    def _add(
        self, txn: WriteTxn, values: dict[str, Any], vector: bytes | None,
        replaced: list[MemoryRow],
    ) -> tuple[MemoryRow, bool]:
        added = self._store.upsert_plain(txn, values)
        if added is None:  # the content exists, and restating it changes more than a count
            added = self._restate(txn, values)
        row, deduplicated = added
        if replaced:
            self._supersede(txn, row.id, replaced, values["now"])
        if vector is not None:
            self._search.put_embedding(txn, MEMORIES, row.namespace, row.id, vector)
        return row, deduplicated

    def _restate(self, txn: WriteTxn, values: dict[str, Any]) -> tuple[MemoryRow, bool]:
        """Restate a stale, superseded or expired memory, or one given a new lifecycle."""
        now = values["now"]
        old = self._store.by_hash(txn, values["namespace"], values["content_hash"])
        assert old is not None  # the insert found it
        if old.expires_at is not None and old.expires_at <= now:
            # Expired, not yet purged: it is gone for readers, so this is a new memory.
            self._expire(txn, old, now)
            added = self._store.upsert_plain(txn, values)
            assert added is not None
            return added
        given = values["given"]
        valid_to = old.valid_to
        if old.superseded_at is not None and valid_to == old.superseded_at:
            valid_to = None  # ended by the supersession this restatement undoes
        lifecycle = {
            "valid_from": values["valid_from"] if "valid_from" in given else old.valid_from,
            "valid_to": values["valid_to"] if "valid_to" in given else valid_to,
            "expires_at": values["expires_at"] if "expires_at" in given else old.expires_at,
            "supersedes": _merged(old.supersedes, values["supersedes_ids"]),
            "now": now,
        }
        row = self._store.restate(txn, old.id, lifecycle)
        self._keep(txn, old, row, "restate")
        return row, True

    def _keep(
        self, txn: WriteTxn, old: MemoryRow, new: MemoryRow, operation: str,
        extra: Sequence[str] = (),
    ) -> None:
        """Keep the version a change replaced, when it changed a field (or ``extra`` ones)."""
        changed = [name for name in VERSIONED
                   if getattr(old, name) != getattr(new, name)] + list(extra)
        if changed:
            self._store.add_history(txn, old, operation, changed, CALLER.get(), new.revision,
                                    new.updated_at)

    def _check_supersedes(
        self, txn: WriteTxn, values: dict[str, Any], field: str,
        superseding: MemoryRow | None = None,
    ) -> list[MemoryRow]:
        """The memories a write supersedes, checked before it changes anything.

        Each must exist (unexpired) in the namespace, be current, and not be the writing
        memory itself; a superseded memory supersedes nothing (so no chain loops).
        """
        ids: list[int] = values["supersedes_ids"]
        if not ids:
            return []
        namespace, now = values["namespace"], values["now"]
        if superseding is None:  # an add: the memory it restates, if any
            superseding = self._store.by_hash(txn, namespace, values["content_hash"])
            if superseding is not None and superseding.expires_at is not None \
                    and superseding.expires_at <= now:
                superseding = None
        elif superseding.superseded_by is not None:
            raise FailedPrecondition(
                f"memory {superseding.id} is superseded by memory {superseding.superseded_by}; "
                "a superseded memory cannot supersede others", reason="MEMORY_SUPERSEDED")
        found = []
        for i, memory_id in enumerate(ids):
            if superseding is not None and memory_id == superseding.id:
                raise InvalidArgument(f"{field}[{i}]", "names the memory itself")
            old = self._store.get_for_write(txn, namespace, memory_id)
            if old is None or (old.expires_at is not None and old.expires_at <= now):
                raise not_found("memory", namespace, memory_id)
            if old.superseded_by is not None:
                raise FailedPrecondition(
                    f"{field}[{i}]: memory {memory_id} is already superseded by memory "
                    f"{old.superseded_by}", reason="MEMORY_SUPERSEDED")
            found.append(old)
        return found

    def _supersede(self, txn: WriteTxn, by: int, replaced: list[MemoryRow], now: int) -> None:
        for old in replaced:
            row = self._store.supersede(txn, old.id, by, now)
            self._keep(txn, old, row, "supersede")

    def _expire(self, txn: WriteTxn, row: MemoryRow, now: int) -> None:
        """Purge an expired memory, keeping its last version in the history."""
        revision = self._store.delete(txn, row.namespace, row.id, now, keep_history=True)
        if revision is not None:
            self._store.add_history(txn, row, "expire", (), None, revision, now)

    def purge_expired(self, limit: int = ERASE_BATCH) -> int:
        """Purge up to ``limit`` expired memories of any namespace (the daemon's sweep)."""
        if not self._store.any_expired(now_us()):
            return 0  # no write batch opened for nothing
        with self._db.write() as txn:
            now = now_us()
            rows = self._store.expired(txn, now, limit)
            for row in rows:
                self._expire(txn, row, now)
            return len(rows)

    def update(self, namespace: str, memory_id: int, changes: dict[str, Any]) -> MemoryRow:
        """Change the named fields of a memory and return it.

        ``changes`` maps field names (content, category, source, subject, attributes, stale,
        embedding) to new values. New content without a new embedding removes the embedding
        (it described the old content); an empty embedding removes it too. Raises
        InvalidArgument, NotFound, or AlreadyExists when new content duplicates another memory.
        """
        check_id(memory_id, "memory")
        supersedes = _supersedes(changes.pop("supersedes", ()), "supersedes")
        if not changes and not supersedes:
            raise InvalidArgument("update_mask", "must name at least one field")
        now = now_us()
        columns: dict[str, Any] = {}
        vector = None
        for name, value in changes.items():
            if name == "embedding":
                vector = embedding_bytes(value, "embedding")
            elif name == "content":
                columns["content"] = _content(value, "content")
                columns["content_hash"] = content_hash(value)
            elif name == "category":
                columns["category"] = choice(value, CATEGORIES, "category")
            elif name == "source":
                columns["source"] = choice(value, SOURCES, "source")
            elif name == "subject":
                columns["subject"] = _subject(value, "subject")
            elif name == "attributes":
                columns["attributes"] = _attributes(value, "attributes")
            elif name == "stale":
                columns["stale"] = int(bool(value))
            elif name in ("valid_from", "valid_to", "expires_at"):
                columns[name] = value
            elif name == "ttl":
                columns["expires_at"] = None if value is None else now + _ttl(value, "ttl")
            else:
                raise InvalidArgument(
                    "update_mask",
                    f"{name!r} cannot be changed; use any of {', '.join(UPDATABLE)}, embedding, "
                    "ttl",
                )
        if "expires_at" in changes and "ttl" in changes:
            raise InvalidArgument("update_mask", "names both ttl and expires_at; give one")
        if columns.get("expires_at") is not None and columns["expires_at"] <= now:
            raise InvalidArgument("expires_at", "must be in the future")
        with self._db.write() as txn:
            old = self._store.get_for_write(txn, namespace, memory_id)
            if old is None or (old.expires_at is not None and old.expires_at <= now):
                raise not_found("memory", namespace, memory_id)
            _check_validity(columns.get("valid_from", old.valid_from),
                            columns.get("valid_to", old.valid_to))
            replaced = self._check_supersedes(
                txn, {"supersedes_ids": supersedes, "namespace": namespace, "now": now},
                "supersedes", superseding=old)
            if replaced:
                columns["supersedes"] = _merged(old.supersedes, supersedes)
            new_space = vector is not None and check_dimension(
                self._search, txn, namespace, dimension_of(vector), "embedding"
            )
            # With no column to change (only the embedding), this still bumps updated_at and
            # the revision: the change is recorded, and the answer waits for its commit.
            row = self._store.update(txn, namespace, memory_id, columns, now)
            if row is None:
                raise not_found("memory", namespace, memory_id)
            self._keep(txn, old, row, "update",
                       ["embedding"] if vector is not None or "embedding" in changes else [])
            self._supersede(txn, row.id, replaced, now)
            if vector is not None:
                if new_space:
                    self._search.fix_dimension(txn, namespace, dimension_of(vector))
                self._search.put_embedding(txn, MEMORIES, namespace, memory_id, vector)
            elif "embedding" in changes or "content" in columns:
                self._search.delete_embedding(txn, MEMORIES, memory_id)
            return row

    def delete(self, namespace: str, memory_id: int) -> None:
        """Delete a memory. Raises NotFound when there is none with this id in the namespace."""
        check_id(memory_id, "memory")
        with self._db.write() as txn, self._db.erasing():
            if self._store.delete(txn, namespace, memory_id, now_us()) is None:
                raise not_found("memory", namespace, memory_id)

    # -- forgetting -------------------------------------------------------------------------

    def forget_targets(
        self, namespace: str, filters: dict[str, Any], ids: Sequence[int]
    ) -> list[int]:
        """The ids of every memory matching, superseded or expired too, ascending.

        Reads on the calling thread's reader: call it off the event loop. Raises
        InvalidArgument when no filter is given.
        """
        if not filters and not ids:
            raise InvalidArgument(
                "filters", "at least one filter (ids, category, source, subject, stale, "
                "created_after, created_before) is required")
        if len(ids) > MAX_FORGET_IDS:
            raise InvalidArgument("ids", f"holds {len(ids)} ids; at most {MAX_FORGET_IDS}")
        for i, memory_id in enumerate(ids):
            if memory_id <= 0:
                raise InvalidArgument(f"ids[{i}]", f"must be a positive id (got {memory_id})")
        if ids:
            filters = {**filters, "ids": sorted(set(ids))}
        return self._store.ids(namespace, filters)

    def logged_changes(
        self, namespace: str, ids: Sequence[int], after: int
    ) -> dict[int, list[int]]:
        """The revisions of the logged changes to these memories after a revision, by id."""
        found: dict[int, list[int]] = {}
        for revision, key in self._store.changes_of(
                self._db.thread_reader(), namespace, {str(i) for i in ids}, after):
            found.setdefault(int(key), []).append(revision)
        return found

    def erase(
        self, namespace: str, ids: Sequence[int], revisions: Sequence[int], scanned: int
    ) -> list[int]:
        """Erase memories, their history and what logged changes said of them, in one write.

        ``revisions`` are their changes logged up to ``scanned``; those logged since are
        found here. Returns the ids that existed. ForgetMemories calls it per ERASE_BATCH.
        """
        with self._db.write() as txn:
            now = now_us()
            keys = {str(i) for i in ids}
            since = [r for r, _ in self._store.changes_of(txn.cursor, namespace, keys, scanned)]
            erased = []
            with self._db.erasing():
                self._store.redact(txn, [*revisions, *since])
                for memory_id in ids:
                    self._store.delete_history(txn, namespace, memory_id)
                    if self._store.delete(txn, namespace, memory_id, now) is not None:
                        erased.append(memory_id)
            return erased

    # -- reads ------------------------------------------------------------------------------

    def get(self, namespace: str, memory_id: int) -> MemoryRow:
        """Return one memory. Raises NotFound, or InvalidArgument for a non-positive id."""
        check_id(memory_id, "memory")
        row = self._store.get(namespace, memory_id, now_us())
        if row is None:
            raise not_found("memory", namespace, memory_id)
        return row

    def history_page(
        self, namespace: str, memory_id: int, *, size: int = 0, token: str = ""
    ) -> tuple[list[Version], str]:
        """One page of a memory's versions, oldest first, and the next page's token.

        Raises NotFound when the memory neither exists nor has kept versions.
        """
        check_id(memory_id, "memory")
        limit = page_size(size)
        fingerprint = filter_fingerprint(namespace, {"history": memory_id})
        after = self._pages.decode_cursor(token, fingerprint)[1] if token else 0
        before, rows = self._store.history(namespace, memory_id, after, limit)
        current = None
        if len(rows) < limit:  # the last page: the memory as it is now ends it
            current = self._store.get(namespace, memory_id, now_us())
        if not rows and before is None and current is None:
            raise not_found("memory", namespace, memory_id)
        versions = []
        made_by = before
        for row in rows:
            versions.append(_version(row.version, made_by))
            made_by = row
        if len(rows) == limit:  # the memory as it is now comes on the next page
            return versions, self._pages.encode({"at": 0, "id": rows[-1].id}, fingerprint)
        if current is not None:
            versions.append(_version(current, made_by))
        elif made_by is not None and made_by.operation == "expire":
            versions.append(Version(made_by.version, made_by.revision, made_by.changed_at,
                                    "expire", [], None))
        return versions, ""

    def read_filters(self, namespace: str, filters: dict[str, Any]) -> dict[str, Any]:
        """List and search filters with the lifecycle's conditions in place.

        ``filters`` as memory_filters() made them: include_superseded and as_of become the
        store's conditions, applied (but for as_of) only where the namespace has a memory
        that is not simply current.
        """
        filters = dict(filters)
        include = filters.pop("include_superseded", False)
        as_of = filters.get("as_of")
        if not self._store.has_dated(namespace):
            return filters
        now = now_us()
        filters["unexpired"] = now
        if as_of is None and not include:
            filters["current"] = now
        return filters

    def list_page(
        self,
        namespace: str,
        *,
        size: int = 0,
        token: str = "",
        category: str | None = None,
        source: str | None = None,
        subject: str | None = None,
        stale: bool | None = None,
        created_after_us: int | None = None,
        created_before_us: int | None = None,
        include_superseded: bool = False,
        as_of_us: int | None = None,
    ) -> tuple[list[MemoryRow], str]:
        """Return one page of memories newest first and the token of the next page ("" at the end).

        Pages are keyset-paginated on (created_at, id), so inserts between calls never shift a
        page.
        Raises InvalidArgument for a negative size or a token issued for other filters.
        """
        limit = page_size(size)
        filters = memory_filters(category=category, source=source, subject=subject,
                                 stale=stale, created_after_us=created_after_us,
                                 created_before_us=created_before_us,
                                 include_superseded=include_superseded, as_of_us=as_of_us)
        fingerprint = filter_fingerprint(namespace, filters)
        filters = self.read_filters(namespace, filters)
        if token:
            filters["cursor_at"], filters["cursor_id"] = self._pages.decode_cursor(
                token, fingerprint)
        # One row more than asked tells whether another page follows.
        rows = self._store.page(namespace, filters, limit + 1)
        return self._pages.finish_page(
            rows, limit, fingerprint, lambda r: {"at": r.created_at, "id": r.id})

    # -- validation -------------------------------------------------------------------------

    @staticmethod
    def _validated(
        namespace: str, memory: NewMemory, prefix: str
    ) -> tuple[dict[str, Any], bytes | None]:
        now = now_us()
        values = {
            "namespace": namespace,
            "content": _content(memory.content, prefix + "content"),
            "content_hash": content_hash(memory.content),
            "category": choice(memory.category, CATEGORIES, prefix + "category"),
            "source": choice(memory.source, SOURCES, prefix + "source"),
            "subject": _subject(memory.subject, prefix + "subject"),
            "attributes": _attributes(memory.attributes, prefix + "attributes"),
            "created_by": CALLER.get(),
            "now": now,
            **_PLAIN,
        }
        if memory.supersedes or memory.valid_from is not None or memory.valid_to is not None \
                or memory.ttl_us is not None or memory.expires_at is not None:
            values.update(_lifecycle(memory, prefix, now))
        return values, embedding_bytes(memory.embedding, prefix + "embedding")


# The lifecycle values of a memory added without any (most are).
_PLAIN: dict[str, Any] = {"supersedes_ids": [], "supersedes": None, "valid_from": None,
                          "valid_to": None, "expires_at": None, "given": frozenset(),
                          "plain": 1}


def _lifecycle(memory: NewMemory, prefix: str, now: int) -> dict[str, Any]:
    """The lifecycle values of a new memory, checked."""
    supersedes = _supersedes(memory.supersedes, prefix + "supersedes")
    expires_at = memory.expires_at
    if memory.ttl_us is not None:
        if expires_at is not None:
            raise InvalidArgument(prefix + "ttl", "and expires_at are both set; give one")
        expires_at = now + _ttl(memory.ttl_us, prefix + "ttl")
    elif expires_at is not None and expires_at <= now:
        raise InvalidArgument(prefix + "expires_at", "must be in the future")
    _check_validity(memory.valid_from, memory.valid_to, prefix)
    # The lifecycle fields the request sets (a restatement keeps the others).
    given = {name for name, value in (("valid_from", memory.valid_from),
                                      ("valid_to", memory.valid_to),
                                      ("expires_at", expires_at)) if value is not None}
    return {
        "supersedes_ids": supersedes,
        "supersedes": json.dumps(supersedes) if supersedes else None,
        "valid_from": memory.valid_from,
        "valid_to": memory.valid_to,
        "expires_at": expires_at,
        "given": given,
        # A restatement is done by the one upsert only when it changes nothing else.
        "plain": 0 if given or supersedes else 1,
    }


def memory_filters(
    *,
    category: str | None = None,
    source: str | None = None,
    subject: str | None = None,
    stale: bool | None = None,
    created_after_us: int | None = None,
    created_before_us: int | None = None,
    include_superseded: bool = False,
    as_of_us: int | None = None,
) -> dict[str, Any]:
    """The filters of ListMemories and SearchMemories, by store name; None means "any".

    include_superseded and as_of are turned into conditions by MemoryService.read_filters.
    Raises InvalidArgument for an unknown category or source.
    """
    filters: dict[str, Any] = {}
    if category is not None:
        filters["category"] = choice(category, CATEGORIES, "category")
    if source is not None:
        filters["source"] = choice(source, SOURCES, "source")
    if subject is not None:
        filters["subject"] = subject
    if stale is not None:
        filters["stale"] = stale
    if created_after_us is not None:
        filters["created_after"] = created_after_us
    if created_before_us is not None:
        filters["created_before"] = created_before_us
    if include_superseded:
        filters["include_superseded"] = True
    if as_of_us is not None:
        filters["as_of"] = as_of_us
    return filters


def _version(memory: MemoryRow, made_by: HistoryRow | None) -> Version:
    """A version, made by the change of the history row before it (None: its creation)."""
    if made_by is None:
        return Version(memory, memory.revision, memory.created_at, "create", [],
                       memory.created_by)
    return Version(memory, made_by.revision, made_by.changed_at, made_by.operation,
                   made_by.changed_fields, made_by.credential)


def _merged(supersedes: str | None, ids: Sequence[int]) -> str | None:
    """A memory's supersedes list (JSON) with more ids appended."""
    merged = json.loads(supersedes) if supersedes else []
    merged += [i for i in ids if i not in merged]
    return json.dumps(merged) if merged else None


def _supersedes(ids: Sequence[int], field: str) -> list[int]:
    if len(ids) > MAX_SUPERSEDES:
        raise InvalidArgument(field, f"holds {len(ids)} ids; at most {MAX_SUPERSEDES}")
    for i, memory_id in enumerate(ids):
        if memory_id <= 0:
            raise InvalidArgument(f"{field}[{i}]", f"must be a positive id (got {memory_id})")
    if len(set(ids)) != len(ids):
        raise InvalidArgument(field, "names a memory twice")
    return list(ids)


def _ttl(ttl_us: int, field: str) -> int:
    if ttl_us <= 0:
        raise InvalidArgument(field, f"must be positive (got {ttl_us / 1e6:g} s)")
    if ttl_us > MAX_TTL_US:
        raise InvalidArgument(field, "must be at most 100 years")
    return ttl_us


def _check_validity(valid_from: int | None, valid_to: int | None, prefix: str = "") -> None:
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        raise InvalidArgument(prefix + "valid_to", "must be after valid_from")


def _content(content: str, field: str) -> str:
    if not content.strip():
        raise InvalidArgument(field, "is required and must not be only white space")
    size = len(content.encode())
    if size > MAX_CONTENT_BYTES:
        raise InvalidArgument(field, f"is {size} bytes; at most {MAX_CONTENT_BYTES} are allowed")
    return content


def _subject(subject: str, field: str) -> str:
    if len(subject) > MAX_SUBJECT_CHARS:
        raise InvalidArgument(
            field, f"is {len(subject)} characters; at most {MAX_SUBJECT_CHARS} are allowed"
        )
    return subject


def _attributes(attributes: dict[str, Any] | None, field: str) -> str | None:
    return json_object(attributes, field, MAX_ATTRIBUTES_BYTES)
