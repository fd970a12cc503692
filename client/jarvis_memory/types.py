"""Python-native results of the SDK (datetimes, dicts, lowercase enum names)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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
    deduplicated: bool = False


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


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change from the change feed.

    ``operation`` is "create", "update" or "delete"; ``key`` names the resource within its
    ``kind``; ``resource`` is the resource as stored after the change (its database row:
    times in µs since the epoch, enums as lowercase names), None for a delete.
    """

    revision: int
    namespace: str
    kind: str
    key: str
    operation: str
    time: datetime
    resource: dict[str, Any] | None = None


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
