"""Memory rules: content normalisation and dedup, validation, pagination, transactions."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jarvis_memory_server.errors import InvalidArgument
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
    MemoryRow,
    MemoryStore,
)
from jarvis_memory_server.store.search import MEMORIES, dimension_of
from jarvis_memory_server.store.writes import WriteTxn

MAX_CONTENT_BYTES = 65536
MAX_SUBJECT_CHARS = 256
MAX_ATTRIBUTES_BYTES = 65536
MAX_BATCH = 1000

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
            if vector is not None:
                claim_dimension(self._search, txn, namespace, dimension_of(vector), "embedding")
            return self._add(txn, values, vector)

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
        with self._db.write() as txn:
            for dimension, i in dimensions.items():
                claim_dimension(self._search, txn, namespace, dimension, f"memories[{i}].embedding")
            return [self._add(txn, values, vector) for values, vector in batch]

    def _add(
        self, txn: WriteTxn, values: dict[str, Any], vector: bytes | None
    ) -> tuple[MemoryRow, bool]:
        row, deduplicated = self._store.upsert(txn, values)
        if vector is not None:
            self._search.put_embedding(txn, MEMORIES, row.namespace, row.id, vector)
        return row, deduplicated

    def update(self, namespace: str, memory_id: int, changes: dict[str, Any]) -> MemoryRow:
        """Change the named fields of a memory and return it.

        ``changes`` maps field names (content, category, source, subject, attributes, stale,
        embedding) to new values. New content without a new embedding removes the embedding
        (it described the old content); an empty embedding removes it too. Raises
        InvalidArgument, NotFound, or AlreadyExists when new content duplicates another memory.
        """
        check_id(memory_id, "memory")
        if not changes:
            raise InvalidArgument("update_mask", "must name at least one field")
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
            else:
                raise InvalidArgument(
                    "update_mask",
                    f"{name!r} cannot be changed; use any of {', '.join(UPDATABLE)}, embedding",
                )
        with self._db.write() as txn:
            new_space = vector is not None and check_dimension(
                self._search, txn, namespace, dimension_of(vector), "embedding"
            )
            # With no column to change (only the embedding), this still bumps updated_at and
            # the revision: the change is recorded, and the answer waits for its commit.
            row = self._store.update(txn, namespace, memory_id, columns, now_us())
            if row is None:
                raise not_found("memory", namespace, memory_id)
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
        with self._db.write() as txn:
            if not self._store.delete(txn, namespace, memory_id, now_us()):
                raise not_found("memory", namespace, memory_id)

    # -- reads ------------------------------------------------------------------------------

    def get(self, namespace: str, memory_id: int) -> MemoryRow:
        """Return one memory. Raises NotFound, or InvalidArgument for a non-positive id."""
        check_id(memory_id, "memory")
        row = self._store.get(namespace, memory_id)
        if row is None:
            raise not_found("memory", namespace, memory_id)
        return row

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
    ) -> tuple[list[MemoryRow], str]:
        """Return one page of memories newest first and the token of the next page ("" at the end).

        Pages are keyset-paginated on (created_at, id), so inserts between calls never shift a
        page.
        Raises InvalidArgument for a negative size or a token issued for other filters.
        """
        limit = page_size(size)
        filters = memory_filters(category=category, source=source, subject=subject,
                                 stale=stale, created_after_us=created_after_us,
                                 created_before_us=created_before_us)
        fingerprint = filter_fingerprint(namespace, filters)
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
        return {
            "namespace": namespace,
            "content": _content(memory.content, prefix + "content"),
            "content_hash": content_hash(memory.content),
            "category": choice(memory.category, CATEGORIES, prefix + "category"),
            "source": choice(memory.source, SOURCES, prefix + "source"),
            "subject": _subject(memory.subject, prefix + "subject"),
            "attributes": _attributes(memory.attributes, prefix + "attributes"),
            "now": now_us(),
        }, embedding_bytes(memory.embedding, prefix + "embedding")


def memory_filters(
    *,
    category: str | None = None,
    source: str | None = None,
    subject: str | None = None,
    stale: bool | None = None,
    created_after_us: int | None = None,
    created_before_us: int | None = None,
) -> dict[str, Any]:
    """The filters of ListMemories and SearchMemories, by store name; None means "any".

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
    return filters


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
