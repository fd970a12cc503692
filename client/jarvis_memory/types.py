"""Python-native results of the SDK (datetimes, dicts, lowercase enum names)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeAlias, TypeVar

T = TypeVar("T")

# The names the enum parameters take (numbers, and the upper-case protobuf names such as
# "MEMORY_CATEGORY_FACT", are accepted at run time too). A test checks them against proto/.
Category = Literal["preference", "fact", "pattern"]
MemorySourceName = Literal["user_explicit", "agent_inferred"]
# What a source argument takes: the names above, or "jarvis_inferred", an alias of
# "agent_inferred" (results always say "agent_inferred").
MemorySourceArg = Literal["user_explicit", "agent_inferred", "jarvis_inferred"]
Role = Literal["user", "assistant", "system", "tool"]
EndTrigger = Literal["timeout", "explicit", "client_closed"]
SessionStateName = Literal["active", "ended"]
SessionOrder = Literal["start_time", "last_activity"]
EventType = Literal["alert", "action", "status", "metric"]
Severity = Literal["info", "warning", "error", "critical"]
EventSourceName = Literal["monitor", "user", "agent", "system"]
RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
SearchMode = Literal["keyword", "vector", "hybrid"]
ContextSectionName = Literal["preferences", "memories", "messages", "events", "state"]
FieldType = Literal["string", "integer", "real", "boolean", "json", "timestamp"]
FilterOp = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "prefix", "is_null"]
ChangeKind = Literal["memory", "session", "message", "session_event", "event", "snapshot",
                     "preference", "state", "tool_call", "planning_cycle", "decision",
                     "collection", "row"]


class Page(list[T], Generic[T]):
    """One page of a List call: a list of items plus the token of the next page.

    ``next_page_token`` is "" on the last page.
    """

    next_page_token: str

    def __init__(self, items: list[T], next_page_token: str) -> None:
        super().__init__(items)
        self.next_page_token = next_page_token


@dataclass(frozen=True, slots=True)
class Memory:
    """A stored memory.

    ``category`` is "preference", "fact" or "pattern"; ``source`` is "user_explicit" or
    "agent_inferred". ``deduplicated`` is True when an add call found this memory already stored.

    ``superseded_by`` is the id of the memory that replaced this one (None while it is
    current), since ``superseded_at``; ``supersedes`` lists the ids this one replaced, in the
    order they were replaced. ``valid_from`` and ``valid_to`` bound when the fact holds in the
    world (None: unbounded); ``expires_at`` is when the memory expires (None: never).
    """

    id: int
    namespace: str
    content: str
    content_hash: str
    category: str
    source: str
    subject: str
    attributes: dict[str, Any] | None
    stale: bool
    created_at: datetime
    updated_at: datetime
    last_accessed_at: datetime | None
    restated_count: int
    revision: int
    superseded_by: int | None
    superseded_at: datetime | None
    supersedes: list[int]
    valid_from: datetime | None
    valid_to: datetime | None
    expires_at: datetime | None
    deduplicated: bool = False


@dataclass(frozen=True, slots=True)
class MemoryVersion:
    """One version of a memory (get_memory_history) and the change that made it.

    ``operation`` is "create", "update", "restate", "supersede" or "expire";
    ``changed_fields`` names the fields the change set (Memory's names; empty for "create"
    and "expire"); ``credential`` names the credential that made it when auth is on (None
    otherwise, and for changes the daemon made itself, such as an expiry).
    """

    memory: Memory
    revision: int
    time: datetime
    operation: str
    changed_fields: list[str]
    credential: str | None


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What forget_memories erased, or would erase with ``dry_run``: ids in ascending order."""

    count: int
    ids: list[int]
    dry_run: bool


@dataclass(frozen=True, slots=True)
class Session:
    """A conversation.

    ``state`` is "active" or "ended"; ``end_trigger`` is "timeout", "explicit" or
    "client_closed" once ended (None before); ``duration`` is set once ended.
    """

    id: str
    namespace: str
    state: str
    started_at: datetime
    ended_at: datetime | None
    end_trigger: str | None
    summary: str
    last_activity_at: datetime
    message_count: int
    duration: timedelta | None
    metadata: dict[str, Any] | None
    revision: int

    @property
    def active(self) -> bool:
        """Whether the session has not ended."""
        return self.state == "active"


@dataclass(frozen=True, slots=True)
class Message:
    """A message of a session; ``sequence`` is its position (1, 2, 3, ...)."""

    id: int
    namespace: str
    session_id: str
    sequence: int
    role: str
    content: str
    model: str
    tokens_used: int
    tool_calls: Any
    created_at: datetime
    revision: int


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """An entry of a session's log."""

    id: int
    namespace: str
    session_id: str
    event_type: str
    data: dict[str, Any] | None
    logged_at: datetime
    revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """A recorded event; enums are lowercase names ("alert", "warning", "monitor")."""

    id: int
    namespace: str
    occurred_at: datetime
    type: str
    severity: str
    source: str
    node: str
    summary: str
    details: dict[str, Any] | None
    resolved: bool
    resolved_at: datetime | None
    resolved_by: str
    revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stored JSON document of some kind."""

    id: int
    namespace: str
    kind: str
    taken_at: datetime
    data: dict[str, Any]
    revision: int


@dataclass(frozen=True, slots=True)
class Preference:
    """A setting; ``value`` is any JSON value."""

    namespace: str
    key: str
    value: Any
    created_at: datetime
    updated_at: datetime
    revision: int


@dataclass(frozen=True, slots=True)
class StateEntry:
    """An agent state entry; ``version`` is for compare-and-swap (put/delete_state)."""

    namespace: str
    key: str
    value: Any
    version: int
    updated_at: datetime
    expires_at: datetime | None
    revision: int


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call; ``status`` is "running" until it is "succeeded", "failed" or "cancelled"."""

    id: int
    namespace: str
    tool: str
    input: Any
    session_id: str
    cycle_id: int
    started_at: datetime
    status: str
    output: Any
    error: str
    duration_ms: int
    finished_at: datetime | None
    revision: int


@dataclass(frozen=True, slots=True)
class PlanningCycle:
    """A planning cycle; ``status`` as for ToolCall."""

    id: int
    namespace: str
    goals: Any
    started_at: datetime
    status: str
    outcomes: Any
    finished_at: datetime | None
    revision: int


@dataclass(frozen=True, slots=True)
class Decision:
    """A recorded decision and the reasoning behind it."""

    id: int
    namespace: str
    cycle_id: int
    reasoning: Any
    decision: str
    created_at: datetime
    revision: int


@dataclass(frozen=True, slots=True)
class Field:
    """A collection field: ``type`` is string, integer, real, boolean, json or timestamp."""

    name: str
    type: str
    required: bool = False
    indexed: bool = False
    unique: bool = False


@dataclass(frozen=True, slots=True)
class Collection:
    """A runtime collection's definition."""

    namespace: str
    name: str
    fields: list[Field]
    created_at: datetime
    revision: int


Resource: TypeAlias = (
    Memory | Session | Message | SessionEvent | Event | Snapshot | Preference | StateEntry
    | ToolCall | PlanningCycle | Decision | Collection | dict[str, Any]
)
"""What Change.resource holds: the value the matching get_* (or query_rows, for rows) returns."""


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change from the change feed.

    ``operation`` is "create", "update" or "delete"; ``key`` names the resource within its
    ``kind`` (an id, a key, or "collection/row id" for rows). ``resource`` is the resource as
    stored after the change, as the same value the matching get_* returns (a Memory for
    "memory", a StateEntry for "state", ...; for "row" the dict query_rows returns), and None
    for a delete. A daemon too old to send typed resources gives its database row as a dict.
    """

    revision: int
    namespace: str
    kind: str
    key: str
    operation: str
    time: datetime
    resource: Resource | None = None


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A memory found by search_memories.

    A higher ``score`` is better (comparable only within one result list); ``snippet`` marks
    matched terms as **term** ("" for hits found only by their embedding).
    """

    memory: Memory
    score: float
    snippet: str


@dataclass(frozen=True, slots=True)
class MessageHit:
    """A message found by search_messages (see MemoryHit)."""

    message: Message
    score: float
    snippet: str


@dataclass(frozen=True, slots=True)
class EventHit:
    """An event found by search_events (see MemoryHit)."""

    event: Event
    score: float
    snippet: str


@dataclass(frozen=True, slots=True)
class ContextItem:
    """One line of an assembled context.

    ``key`` names it (an id or a key); ``score`` is a memory's search score (0 otherwise).
    """

    key: str
    text: str
    tokens: int
    score: float


@dataclass(frozen=True, slots=True)
class ContextSection:
    """A section of an assembled context and the items it holds.

    ``omitted`` counts the candidates left out for the budget.
    """

    name: ContextSectionName
    items: list[ContextItem]
    omitted: int


@dataclass(frozen=True, slots=True)
class Context:
    """What assemble_context returns.

    ``text`` never exceeds the budget; ``tokens`` is its estimate; ``sections`` come in text
    order; ``truncated`` says whether anything was left out or cut.
    """

    text: str
    tokens: int
    sections: list[ContextSection]
    truncated: bool
    revision: int


@dataclass(frozen=True, slots=True)
class RowCount:
    """How many rows of one kind ("memories", "events", ...) a namespace holds."""

    kind: str
    namespace: str
    rows: int


@dataclass(frozen=True, slots=True)
class Stats:
    """The daemon's statistics (get_stats): row counts, file sizes, revision, uptime."""

    revision: int
    counts: list[RowCount]
    database_bytes: int
    wal_bytes: int
    uptime: timedelta
    commits: int
    committed_writes: int

    def rows(self, kind: str, namespace: str | None = None) -> int:
        """Rows of ``kind`` in ``namespace``, or in every namespace when it is None."""
        return sum(c.rows for c in self.counts
                   if c.kind == kind and namespace in (None, c.namespace))


@dataclass(frozen=True, slots=True)
class BackupResult:
    """A finished backup: the file written, its size, SHA-256 and the revision it holds."""

    path: str
    size: int
    sha256: str
    revision: int
