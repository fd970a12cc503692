"""Peewee models: the one description of the schema.

Times are integer microseconds since the Unix epoch (UTC): compact, sortable, and bound by
APSW without adapters. JSON documents are stored as TEXT. Enumerations are stored as their
lowercase names so that the file stays readable from any SQLite shell.
"""

from __future__ import annotations

from typing import ClassVar

import peewee as pw
from playhouse.sqlite_ext import AutoIncrementField

# The models are bound to a real database at start-up (sqlite.Database.open).
database_proxy = pw.DatabaseProxy()


class BaseModel(pw.Model):
    """Base of every model: binds to the daemon's database."""

    class Meta:
        database = database_proxy
        legacy_table_names = False


class Change(BaseModel):
    """One committed change of any resource: the change feed and the revision counter.

    ``revision`` is assigned by the single writer (current + 1), so it increases strictly in
    commit order. Compaction must always keep the newest row: the daemon restores its revision
    counter from it at start-up.
    """

    revision = pw.BigIntegerField(primary_key=True)
    namespace = pw.TextField()
    kind = pw.TextField()
    key = pw.TextField()
    operation = pw.TextField(constraints=[pw.Check("operation IN ('create', 'update', 'delete')")])
    created_at = pw.BigIntegerField()

    class Meta:
        table_name = "changes"


class Memory(BaseModel):
    """A remembered fact, preference or pattern; unique per namespace by content hash."""

    CATEGORIES: ClassVar[tuple[str, ...]] = ("preference", "fact", "pattern")
    SOURCES: ClassVar[tuple[str, ...]] = ("user_explicit", "agent_inferred")

    # AUTOINCREMENT: an id is never reused, even after the newest memory is deleted, so that
    # an id seen in the change feed always names one memory. (A PostgreSQL port uses a sequence.)
    id = AutoIncrementField()
    namespace = pw.TextField()
    content = pw.TextField()
    content_hash = pw.BlobField()
    category = pw.TextField(constraints=[pw.Check("category IN ('preference', 'fact', 'pattern')")])
    source = pw.TextField(constraints=[pw.Check("source IN ('user_explicit', 'agent_inferred')")])
    subject = pw.TextField(default="")
    attributes = pw.TextField(null=True)
    stale = pw.BooleanField(default=False)
    created_at = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()
    last_accessed_at = pw.BigIntegerField(null=True)
    restated_count = pw.IntegerField(default=0)
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "memories"
        # Lists are newest first: ORDER BY created_at DESC, id DESC. Each index below is
        # (namespace, [filter column,] created_at) and SQLite appends the rowid, so a list is
        # read in order with no sort, and the keyset cursor is an index range. Each index also
        # costs every insert a b-tree page write (about 8 µs a commit), so only filters that
        # can be selective get one: source (two values) is filtered along the created_at
        # index, and stale memories, the rare case, have a partial index of their own.
        indexes = (
            (("namespace", "content_hash"), True),
            (("namespace", "created_at"), False),
            (("namespace", "category", "created_at"), False),
            (("namespace", "subject", "created_at"), False),
        )


Memory.add_index(
    Memory.index(
        Memory.namespace, Memory.created_at, name="memories_stale_namespace_created_at"
    ).where(Memory.stale == True)  # noqa: E712 - a SQL expression, not a comparison
)


ALL_MODELS: tuple[type[BaseModel], ...] = (Change, Memory)
