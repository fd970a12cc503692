"""Python-native results of the SDK (datetimes, dicts, lowercase enum names)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
