"""Peewee models: the one description of the schema.

Times are integer microseconds since the Unix epoch (UTC): compact, sortable, and bound by
APSW without adapters. JSON documents are stored as TEXT. Enumerations are stored as their
lowercase names so that the file stays readable from any SQLite shell.
"""

from __future__ import annotations

from typing import ClassVar

import peewee as pw

# The models are bound to a real database at start-up (Database.open of sqlite or postgres).
database_proxy = pw.DatabaseProxy()


class AutoIncrementField(pw.AutoField):
    """An id never reused, even after the newest row is deleted.

    So that an id seen in the change feed always names one row: AUTOINCREMENT on SQLite, a
    sequence on PostgreSQL.
    """

    def ddl(self, ctx: pw.Context) -> pw.NodeList:
        """The column's DDL; AUTOINCREMENT on SQLite."""
        nodes = super().ddl(ctx)
        if ctx.state.field_types.get("AUTO") == "INTEGER":  # SQLite (PostgreSQL: BIGSERIAL)
            return pw.NodeList((nodes, pw.SQL("AUTOINCREMENT")))
        return nodes


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
    resource = pw.TextField(null=True)  # JSON of the row after the change; NULL for deletes

    class Meta:
        table_name = "changes"


class Memory(BaseModel):
    """A remembered fact, preference or pattern; unique per namespace by content hash."""

    CATEGORIES: ClassVar[tuple[str, ...]] = ("preference", "fact", "pattern")
    SOURCES: ClassVar[tuple[str, ...]] = ("user_explicit", "agent_inferred")

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
    # The lifecycle (migration 12): all NULL for a memory that is simply current, so a plain
    # insert writes nothing more, and the partial indexes below skip it.
    superseded_by = pw.BigIntegerField(null=True)
    superseded_at = pw.BigIntegerField(null=True)
    supersedes = pw.TextField(null=True)  # JSON array of the ids this memory replaced
    valid_from = pw.BigIntegerField(null=True)
    valid_to = pw.BigIntegerField(null=True)
    expires_at = pw.BigIntegerField(null=True)
    created_by = pw.TextField(null=True)  # the credential's name, when auth is on

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
# The expiry sweep's queue, across namespaces.
Memory.add_index(
    Memory.index(Memory.expires_at, name="memories_expires_at").where(
        Memory.expires_at.is_null(False))
)
# Whether a namespace has any memory that is not simply current: reads filter by the
# lifecycle only then (service/memories.py), so plain namespaces pay nothing for it.
Memory.add_index(
    Memory.index(Memory.namespace, name="memories_dated_namespace").where(
        Memory.superseded_by.is_null(False) | Memory.valid_from.is_null(False)
        | Memory.valid_to.is_null(False) | Memory.expires_at.is_null(False))
)


class MemoryHistory(BaseModel):
    """A version of a memory that a change replaced, and that change.

    ``version`` is the replaced memory (its row as a JSON array, as the change log stores
    rows); the other columns describe the change that replaced it. No foreign key: the
    versions of an expired memory outlive it (forgetting or deleting it removes them).
    """

    OPERATIONS: ClassVar[tuple[str, ...]] = ("update", "restate", "supersede", "expire")

    id = AutoIncrementField()
    namespace = pw.TextField()
    memory_id = pw.BigIntegerField()
    version = pw.TextField()
    operation = pw.TextField(
        constraints=[pw.Check("operation IN ('update', 'restate', 'supersede', 'expire')")])
    changed_fields = pw.TextField()  # JSON array of Memory field names
    credential = pw.TextField(null=True)
    revision = pw.BigIntegerField()
    changed_at = pw.BigIntegerField()

    class Meta:
        table_name = "memory_history"
        indexes = ((("memory_id", "id"), False),)


class Session(BaseModel):
    """A conversation: started, maybe ended; its messages and events point at it."""

    STATES: ClassVar[tuple[str, ...]] = ("active", "ended")
    TRIGGERS: ClassVar[tuple[str, ...]] = ("timeout", "explicit", "client_closed")

    id = AutoIncrementField()  # internal; clients name a session by (namespace, session_id)
    namespace = pw.TextField()
    session_id = pw.TextField()
    state = pw.TextField(constraints=[pw.Check("state IN ('active', 'ended')")])
    started_at = pw.BigIntegerField()
    ended_at = pw.BigIntegerField(null=True)
    end_trigger = pw.TextField(
        null=True, constraints=[pw.Check("end_trigger IN ('timeout', 'explicit', 'client_closed')")]
    )
    summary = pw.TextField(default="")
    last_activity_at = pw.BigIntegerField()
    message_count = pw.IntegerField(default=0)
    metadata = pw.TextField(null=True)
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "sessions"
        # ListSessions: (namespace[, state], started_at | last_activity_at), newest first; the
        # idle sweep: active sessions by last activity, across namespaces.
        indexes = (
            (("namespace", "session_id"), True),
            (("namespace", "started_at"), False),
            (("namespace", "last_activity_at"), False),
            (("namespace", "state", "started_at"), False),
            (("namespace", "state", "last_activity_at"), False),
            (("state", "last_activity_at"), False),
        )


class Message(BaseModel):
    """One message of a session, numbered 1, 2, 3, ... in append order."""

    ROLES: ClassVar[tuple[str, ...]] = ("user", "assistant", "system", "tool")

    id = AutoIncrementField()
    namespace = pw.TextField()
    # index=False: the (session, sequence) index below serves lookups by session.
    session = pw.ForeignKeyField(
        Session, column_name="session_ref", on_delete="CASCADE", index=False
    )
    sequence = pw.IntegerField()
    role = pw.TextField(constraints=[pw.Check("role IN ('user', 'assistant', 'system', 'tool')")])
    content = pw.TextField()
    model = pw.TextField(default="")
    tokens_used = pw.IntegerField(default=0)
    tool_calls = pw.TextField(null=True)
    created_at = pw.BigIntegerField()
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "messages"
        indexes = ((("session", "sequence"), True),)


class SessionEvent(BaseModel):
    """One entry of a session's log (session_start, topic_change, ...)."""

    id = AutoIncrementField()
    namespace = pw.TextField()
    session = pw.ForeignKeyField(
        Session, column_name="session_ref", on_delete="CASCADE", index=False
    )
    event_type = pw.TextField()
    data = pw.TextField(null=True)
    logged_at = pw.BigIntegerField()
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "session_events"
        # Per session in log order; per namespace and UTC day across sessions.
        indexes = (
            (("session", "id"), False),
            (("namespace", "logged_at"), False),
        )


class ApiToken(BaseModel):
    """An API token the daemon issued. Only a hash of its secret is kept."""

    ROLES: ClassVar[tuple[str, ...]] = ("reader", "writer", "admin")

    id = AutoIncrementField()
    token_id = pw.TextField(unique=True)  # the public part of the token, for list and revoke
    secret_sha256 = pw.BlobField()
    role = pw.TextField(constraints=[pw.Check("role IN ('reader', 'writer', 'admin')")])
    namespaces = pw.TextField()  # JSON list of names; ["*"] is every namespace
    label = pw.TextField(default="")
    created_at = pw.BigIntegerField()
    revoked_at = pw.BigIntegerField(null=True)

    class Meta:
        table_name = "api_tokens"


class Event(BaseModel):
    """Something a monitor, user or agent observed or did; resolvable."""

    TYPES: ClassVar[tuple[str, ...]] = ("alert", "action", "status", "metric")
    SOURCES: ClassVar[tuple[str, ...]] = ("monitor", "user", "agent", "system")

    id = AutoIncrementField()
    namespace = pw.TextField()
    occurred_at = pw.BigIntegerField()
    type = pw.TextField(constraints=[pw.Check("type IN ('alert', 'action', 'status', 'metric')")])
    # 1 info, 2 warning, 3 error, 4 critical: a number, so that "at least" is a comparison.
    severity = pw.SmallIntegerField(constraints=[pw.Check("severity BETWEEN 1 AND 4")])
    source = pw.TextField(
        constraints=[pw.Check("source IN ('monitor', 'user', 'agent', 'system')")]
    )
    node = pw.TextField(default="")
    summary = pw.TextField()
    details = pw.TextField(null=True)
    resolved = pw.BooleanField(default=False)
    resolved_at = pw.BigIntegerField(null=True)
    resolved_by = pw.TextField(default="")
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "events"
        # Newest first on (occurred_at, id); node has its own index, unresolved events (the
        # dashboard's question) a partial one; type, severity and source filter along them.
        indexes = (
            (("namespace", "occurred_at"), False),
            (("namespace", "node", "occurred_at"), False),
        )


Event.add_index(
    Event.index(Event.namespace, Event.occurred_at, name="events_unresolved_namespace_occurred_at")
    .where(Event.resolved == False)  # noqa: E712 - a SQL expression
)


class Snapshot(BaseModel):
    """A point-in-time JSON document of some kind."""

    id = AutoIncrementField()
    namespace = pw.TextField()
    kind = pw.TextField()
    taken_at = pw.BigIntegerField()
    data = pw.TextField()
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "snapshots"
        indexes = ((("namespace", "kind", "taken_at"), False), (("taken_at",), False))


class Preference(BaseModel):
    """A setting: key -> JSON value, unique per namespace."""

    id = AutoIncrementField()
    namespace = pw.TextField()
    key = pw.TextField()
    value = pw.TextField()
    created_at = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "preferences"
        indexes = ((("namespace", "key"), True),)


class StateEntry(BaseModel):
    """An agent's state: key -> JSON value with a version for compare-and-swap."""

    id = AutoIncrementField()
    namespace = pw.TextField()
    key = pw.TextField()
    value = pw.TextField()
    version = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()
    expires_at = pw.BigIntegerField(null=True)
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "state"
        indexes = ((("namespace", "key"), True),)


# The purge of expired entries reads only entries that have an expiry.
StateEntry.add_index(
    StateEntry.index(StateEntry.expires_at, name="state_expires_at")
    .where(StateEntry.expires_at.is_null(False))
)


RUN_STATUSES = ("started", "succeeded", "failed", "cancelled")
_RUN_STATUS_CHECK = pw.Check("status IN ('started', 'succeeded', 'failed', 'cancelled')")


class ToolCall(BaseModel):
    """An append-only audit row of a tool call.

    The two-row pattern: a call is a "started" row (parent NULL, payload = input) and, once it
    ends, a second row (parent = the started row, payload = output). Rows are never updated or
    deleted; triggers in the migrations make the database refuse it.
    """

    id = AutoIncrementField()
    namespace = pw.TextField()
    parent = pw.ForeignKeyField("self", null=True, column_name="parent_id", index=False)
    status = pw.TextField(constraints=[_RUN_STATUS_CHECK])
    tool = pw.TextField()
    payload = pw.TextField(null=True)
    error = pw.TextField(default="")
    duration_ms = pw.BigIntegerField(null=True)
    session_id = pw.TextField(default="")
    cycle_id = pw.BigIntegerField(null=True)
    created_at = pw.BigIntegerField()
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "tool_calls"


class PlanningCycle(BaseModel):
    """An append-only audit row of a planning cycle (the same two-row pattern)."""

    id = AutoIncrementField()
    namespace = pw.TextField()
    parent = pw.ForeignKeyField("self", null=True, column_name="parent_id", index=False)
    status = pw.TextField(constraints=[_RUN_STATUS_CHECK])
    payload = pw.TextField(null=True)  # goals on the started row, outcomes on the other
    created_at = pw.BigIntegerField()
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "planning_cycles"


class Decision(BaseModel):
    """An append-only record of a decision and its reasoning."""

    id = AutoIncrementField()
    namespace = pw.TextField()
    cycle_id = pw.BigIntegerField(null=True)
    reasoning = pw.TextField(null=True)
    decision = pw.TextField()
    created_at = pw.BigIntegerField()
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "decisions"
        # Oldest first by id: SQLite appends the rowid to each index.
        indexes = ((("namespace",), False), (("namespace", "cycle_id"), False))


def _two_row_indexes(model: type[ToolCall] | type[PlanningCycle], table: str) -> None:
    # At most one completion per started row; partial, so that it is never mistaken for an
    # index of the (many) started rows, whose parent is NULL.
    model.add_index(model.index(model.parent, unique=True, name=f"{table}_completion")
                    .where(model.parent.is_null(False)))


def _started_index(
    model: type[ToolCall] | type[PlanningCycle], *fields: pw.Field, name: str
) -> None:
    # Lists read started rows only (newest first), so their indexes leave completions out.
    model.add_index(model.index(*fields, name=name).where(model.parent.is_null()))


_two_row_indexes(ToolCall, "tool_calls")
_two_row_indexes(PlanningCycle, "planning_cycles")


_started_index(ToolCall, ToolCall.namespace, ToolCall.created_at,
               name="tool_calls_started_namespace_created_at")
_started_index(ToolCall, ToolCall.namespace, ToolCall.tool, ToolCall.created_at,
               name="tool_calls_started_namespace_tool_created_at")
_started_index(ToolCall, ToolCall.namespace, ToolCall.cycle_id, ToolCall.created_at,
               name="tool_calls_started_namespace_cycle_created_at")
_started_index(ToolCall, ToolCall.namespace, ToolCall.session_id, ToolCall.created_at,
               name="tool_calls_started_namespace_session_created_at")
_started_index(PlanningCycle, PlanningCycle.namespace, PlanningCycle.created_at,
               name="planning_cycles_started_namespace_created_at")

APPEND_ONLY: tuple[type[BaseModel], ...] = (ToolCall, PlanningCycle, Decision)


class CollectionDef(BaseModel):
    """The catalog of runtime collections; collection N's rows live in table collection_N."""

    id = AutoIncrementField()
    namespace = pw.TextField()
    name = pw.TextField()
    fields = pw.TextField()  # JSON list of {name, type, required, indexed, unique}
    created_at = pw.BigIntegerField()
    revision = pw.BigIntegerField()

    class Meta:
        table_name = "collections"
        indexes = ((("namespace", "name"), True),)


class EmbeddingSpace(BaseModel):
    """A namespace's embedding dimension, fixed by the first embedding stored in it."""

    namespace = pw.TextField(primary_key=True)
    dimension = pw.IntegerField()

    class Meta:
        table_name = "embedding_spaces"


class MemoryEmbedding(BaseModel):
    """A memory's client-computed embedding: float32 values, little-endian.

    The exact vectors, for ranking; a sign index per dimension (a sqlite-vec vec0 table,
    store/search.py) selects the candidates.
    """

    memory = pw.ForeignKeyField(
        Memory, primary_key=True, column_name="memory_id", on_delete="CASCADE"
    )
    vector = pw.BlobField()

    class Meta:
        table_name = "memory_embeddings"


class MessageEmbedding(BaseModel):
    """A message's client-computed embedding (as MemoryEmbedding)."""

    message = pw.ForeignKeyField(
        Message, primary_key=True, column_name="message_id", on_delete="CASCADE"
    )
    vector = pw.BlobField()

    class Meta:
        table_name = "message_embeddings"


class Setting(BaseModel):
    """A value the database keeps about itself.

    ``page_token_key``: 32 random bytes that sign page tokens (migration 11 makes it).
    """

    key = pw.TextField(primary_key=True)
    value = pw.BlobField()

    class Meta:
        table_name = "settings"


ALL_MODELS: tuple[type[BaseModel], ...] = (
    Change, Memory, MemoryHistory, Session, Message, SessionEvent, ApiToken, Event, Snapshot,
    Preference, StateEntry, ToolCall, PlanningCycle, Decision, CollectionDef, EmbeddingSpace,
    MemoryEmbedding, MessageEmbedding, Setting,
)
