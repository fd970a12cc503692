"""Context assembly: what an assistant should know now, as sections and text within a budget.

Tokens are estimated with no tokenizer to download: ceil(UTF-8 bytes / 4) per line of text,
its newline included (about what BPE tokenizers give for English; a line's estimate is an
upper bound of its share of the text's). The budget is filled in section order, and within a
section in its own order, until the first item that does not fit: it and everything after it
are left out (and counted), so a tight budget drops state first, then events, older
messages, weaker memories, preferences last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from jarvis_memory_server.errors import InvalidArgument, NotFound
from jarvis_memory_server.service.common import ServiceBase
from jarvis_memory_server.service.events import EventFilter, EventService
from jarvis_memory_server.service.memories import MemoryRow, MemoryService, memory_filters
from jarvis_memory_server.service.preferences import PreferenceService
from jarvis_memory_server.service.search import SearchService
from jarvis_memory_server.service.sessions import SessionService
from jarvis_memory_server.service.state import StateService
from jarvis_memory_server.store.backend import Database
from jarvis_memory_server.store.search import MEMORIES

SECTIONS = ("preferences", "memories", "messages", "events", "state")
HEADINGS = {"preferences": "Preferences", "memories": "Relevant memories",
            "messages": "Recent messages", "events": "Unresolved events", "state": "State"}
DEFAULT_MAX_TOKENS = 1500
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 16, 100_000
MAX_STATE_KEYS = 50
# Candidates read per section: more than a large budget shows, few enough to stay fast.
CANDIDATES = {"preferences": 100, "memories": 30, "messages": 30, "events": 30}
SEVERITY_NAMES = {1: "info", 2: "warning", 3: "error", 4: "critical"}
ELLIPSIS = "…"


def estimate_tokens(line: str) -> int:
    """The tokens a line of context costs, its newline included."""
    return (len(line.encode()) + 1 + 3) // 4


def cut(text: str, max_bytes: int) -> str:
    """``text`` on one line, cut to at most ``max_bytes`` UTF-8 bytes (ending with "…")."""
    text = " ".join(text.split())
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    keep = max(0, max_bytes - len(ELLIPSIS.encode()))
    return data[:keep].decode(errors="ignore").rstrip() + ELLIPSIS


@dataclass(frozen=True)
class ContextItem:
    """One line of the context: what it names, its text, its cost, a memory's score."""

    key: str
    text: str
    tokens: int
    score: float = 0.0


@dataclass
class ContextPart:
    """A section: its items in the text, and how many candidates were left out."""

    name: str
    items: list[ContextItem] = field(default_factory=list)
    omitted: int = 0


@dataclass(frozen=True)
class Context:
    """An assembled context."""

    text: str
    tokens: int
    parts: list[ContextPart]
    truncated: bool


@dataclass(frozen=True)
class _Candidate:
    key: str
    text: str
    score: float = 0.0


class ContextService(ServiceBase):
    """Reads the other services' data, read-only, into a context."""

    def __init__(
        self, db: Database, *, search: SearchService, memories: MemoryService,
        preferences: PreferenceService, sessions: SessionService, events: EventService,
        state: StateService,
    ) -> None:
        super().__init__(db)
        self._search = search
        self._memories = memories
        self._preferences = preferences
        self._sessions = sessions
        self._events = events
        self._state = state

    async def assemble(
        self, namespace: str, query: str, *, session_id: str = "", max_tokens: int = 0,
        sections: Sequence[str] = (), state_keys: Sequence[str] = (),
        embedding: Sequence[float] = (),
    ) -> Context:
        """Assemble the context. Raises InvalidArgument, NotFound (an unknown session)."""
        budget = max_tokens or DEFAULT_MAX_TOKENS
        if not MIN_MAX_TOKENS <= budget <= MAX_MAX_TOKENS:
            raise InvalidArgument("max_tokens", f"must be between {MIN_MAX_TOKENS} and "
                                  f"{MAX_MAX_TOKENS} (0 means {DEFAULT_MAX_TOKENS})")
        for i, name in enumerate(sections):
            if name not in SECTIONS:
                raise InvalidArgument(f"sections[{i}]", f"{name[:64]!r} is not a section: use "
                                      f"{', '.join(SECTIONS)}")
        if len(state_keys) > MAX_STATE_KEYS:
            raise InvalidArgument("state_keys", f"holds {len(state_keys)} keys; at most "
                                  f"{MAX_STATE_KEYS}")
        wanted = {name for name in SECTIONS if not sections or name in sections}
        candidates: dict[str, list[_Candidate]] = {}
        if "preferences" in wanted:
            candidates["preferences"] = self._preference_lines(namespace)
        if "memories" in wanted:
            candidates["memories"] = await self._memory_lines(namespace, query, embedding)
        if "messages" in wanted and session_id:
            candidates["messages"] = self._message_lines(namespace, session_id)
        if "events" in wanted:
            candidates["events"] = self._event_lines(namespace)
        if "state" in wanted:
            candidates["state"] = self._state_lines(namespace, state_keys)
        return _fill(candidates, budget)

    # -- the sections' candidates, in the order the budget takes them ----------------------

    def _preference_lines(self, namespace: str) -> list[_Candidate]:
        rows, _ = self._preferences.list_page(namespace, size=CANDIDATES["preferences"])
        return [_Candidate(r.key, f"{r.key}: {r.value}") for r in rows]

    async def _memory_lines(
        self, namespace: str, query: str, embedding: Sequence[float]
    ) -> list[_Candidate]:
        if not query.strip() and not embedding:
            return []
        mode = ("hybrid" if query.strip() else "vector") if embedding else "keyword"
        request = self._search.request(
            namespace, query, mode=mode, embedding=embedding,
            # What is true now: current memories only (not stale, superseded or expired).
            filters=self._memories.read_filters(namespace, memory_filters(stale=False)),
            limit=CANDIDATES["memories"])
        hits = await self._search.run(MEMORIES, request)
        lines = []
        for hit in hits:
            m = MemoryRow._make(hit.row)
            about = f"{m.category}, {m.subject}" if m.subject else m.category
            lines.append(_Candidate(str(m.id), f"{m.content} ({about})", hit.score))
        return lines

    def _message_lines(self, namespace: str, session_id: str) -> list[_Candidate]:
        rows = self._sessions.recent_messages(namespace, session_id, CANDIDATES["messages"])
        return [_Candidate(str(r.sequence), f"{r.role}: {r.content}") for r in rows]

    def _event_lines(self, namespace: str) -> list[_Candidate]:
        rows, _ = self._events.list_page(namespace, EventFilter(resolved=False),
                                         size=CANDIDATES["events"])
        rows.sort(key=lambda r: (-r.severity, -r.occurred_at, -r.id))  # most severe first
        return [_Candidate(str(r.id), f"[{SEVERITY_NAMES.get(r.severity, r.severity)}] "
                                      f"{r.node + ': ' if r.node else ''}{r.summary}")
                for r in rows]

    def _state_lines(self, namespace: str, keys: Sequence[str]) -> list[_Candidate]:
        lines = []
        for key in dict.fromkeys(keys):  # once each, in the order asked
            try:
                entry = self._state.get(namespace, key)
            except NotFound:
                continue  # missing or expired: nothing to know
            lines.append(_Candidate(key, f"{key}: {entry.value}"))
        return lines


def _fill(candidates: dict[str, list[_Candidate]], budget: int) -> Context:
    """Take candidates into the budget in section order; render the text."""
    remaining = budget
    max_bytes = budget  # a quarter of the budget, in bytes at 4 bytes a token
    parts: list[ContextPart] = []
    truncated = full = False
    for name in SECTIONS:
        lines = candidates.get(name)
        if not lines:
            continue
        heading = estimate_tokens(f"## {HEADINGS[name]}")
        part = ContextPart(name)
        for line in lines:
            text = cut(line.text, max_bytes)
            tokens = estimate_tokens(f"- {text}")
            cost = tokens + (0 if part.items else heading)
            # The first item that does not fit ends the filling: a later, smaller one never
            # takes the room of one that comes before it.
            full |= cost > remaining
            if full:
                part.omitted += 1
                continue
            truncated |= text != " ".join(line.text.split())
            remaining -= cost
            part.items.append(ContextItem(line.key, text, tokens, line.score))
        if name == "messages":
            part.items.reverse()  # chosen newest first, read oldest first
        truncated |= part.omitted > 0
        if part.items or part.omitted:  # (nothing fitted: the caller learns what was left out)
            parts.append(part)
    text = "\n".join(
        f"## {HEADINGS[p.name]}\n" + "\n".join(f"- {i.text}" for i in p.items)
        for p in parts if p.items)
    return Context(text, budget - remaining, parts, truncated)

