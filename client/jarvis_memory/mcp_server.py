"""jarvis-memory-mcp: the daemon's memories and preferences as tools of an MCP server.

    jarvis-memory-mcp --target 127.0.0.1:50051 --namespace alice         # stdio
    jarvis-memory-mcp --target 127.0.0.1:50051 --http 127.0.0.1:8765    # Streamable HTTP, /mcp

The flags default to JARVIS_MEMORY_ADDR, JARVIS_MEMORY_NAMESPACE and JARVIS_MEMORY_TOKEN. Over
stdio every call goes with the configured token; over HTTP with the caller's own
``Authorization: Bearer <token>`` (none without one), so the daemon's roles and namespaces apply
to each caller and the server's own credential is never lent to whoever reaches the port. The
namespace is configuration, never a tool argument. The server talks to the daemon only through
the SDK; a daemon error, or the daemon being down, is a tool error, never a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from jarvis_memory._api import DEFAULT_TARGET, DEFAULT_TIMEOUT
from jarvis_memory.client import Client
from jarvis_memory.errors import JarvisMemoryError, Unavailable
from jarvis_memory.types import Context as JarvisContext
from jarvis_memory.types import Memory, MemoryHit, Preference

R = TypeVar("R")

MAX_LIMIT = 100  # the most items one call lists or finds
MAX_CONTENT_CHARS = 2000  # a memory's content beyond this is cut, with a marker
MAX_VALUE_CHARS = 2000  # a preference value whose JSON is longer is shown cut, as text
MAX_CONTEXT_TOKENS = 16000
MAX_CLIENTS = 64  # SDK clients kept open, one per credential (HTTP callers bring their own)

# The server outlives daemon restarts: reconnect within a second or two rather than after
# gRPC's default backoff of up to two minutes.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

CategoryName = Literal["fact", "preference", "pattern"]
SourceName = Literal["user_explicit", "agent_inferred"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


@dataclass(frozen=True, slots=True)
class Config:
    """Where the daemon is and who the server is on it."""

    target: str = DEFAULT_TARGET
    namespace: str = ""
    token: str | None = None  # stdio only: HTTP callers send their own
    timeout: float = DEFAULT_TIMEOUT
    http: bool = False


# -- results ----------------------------------------------------------------------------------


class MemoryOut(BaseModel):
    """A memory as the tools return it."""

    id: int
    content: str
    content_truncated: bool = Field(description="content was cut to stay within the limit")
    category: str
    source: str
    subject: str
    stale: bool
    created_at: datetime
    updated_at: datetime
    restated_count: int
    superseded_by: int | None = Field(
        default=None, description="the memory that replaced this one; none while current")
    expires_at: datetime | None = None


class RememberOut(BaseModel):
    """remember's result."""

    memory: MemoryOut
    deduplicated: bool = Field(description="the memory was already stored; it was restated")


class HitOut(BaseModel):
    """A memory found by recall."""

    memory: MemoryOut
    score: float
    snippet: str


class RecallOut(BaseModel):
    """recall's result."""

    hits: list[HitOut]


class SectionOut(BaseModel):
    """A section of an assembled context: its name and how many items it holds."""

    name: str
    items: int


class ContextOut(BaseModel):
    """get_context's result."""

    text: str
    sections: list[SectionOut]
    truncated: bool = Field(description="something was left out or cut to fit the budget")


class UpdateOut(BaseModel):
    """update_memory's result."""

    memory: MemoryOut


class ForgetOut(BaseModel):
    """forget's result."""

    id: int
    deleted: bool


class MemoryPageOut(BaseModel):
    """list_memories's result."""

    memories: list[MemoryOut]
    next_page_token: str = Field(description="pass as page_token for the next page; '' at the end")


class PreferenceOut(BaseModel):
    """A preference as the tools return it."""

    key: str
    value: Any = Field(description="the JSON value; its JSON text, cut, when value_truncated")
    value_truncated: bool
    updated_at: datetime


class PreferencePageOut(BaseModel):
    """get_preferences's result."""

    preferences: list[PreferenceOut]
    next_page_token: str = Field(description="pass as page_token for the next page; '' at the end")


class SetPreferenceOut(BaseModel):
    """set_preference's result."""

    preference: PreferenceOut


def _cap(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters plus a marker saying how much was left out."""
    if len(text) <= limit:
        return text, False
    return f"{text[:limit]}… [truncated: {len(text) - limit} more characters]", True


def _memory_out(memory: Memory) -> MemoryOut:
    content, truncated = _cap(memory.content, MAX_CONTENT_CHARS)
    return MemoryOut(
        id=memory.id, content=content, content_truncated=truncated, category=memory.category,
        source=memory.source, subject=memory.subject, stale=memory.stale,
        created_at=memory.created_at, updated_at=memory.updated_at,
        restated_count=memory.restated_count, superseded_by=memory.superseded_by,
        expires_at=memory.expires_at,
    )


def _preference_out(preference: Preference) -> PreferenceOut:
    encoded = json.dumps(preference.value, ensure_ascii=False)
    shown, truncated = _cap(encoded, MAX_VALUE_CHARS)
    return PreferenceOut(key=preference.key, value=shown if truncated else preference.value,
                         value_truncated=truncated, updated_at=preference.updated_at)


def _memory_line(memory: MemoryOut) -> str:
    subject = f" (subject: {memory.subject})" if memory.subject else ""
    stale = " [stale]" if memory.stale else ""
    return f"#{memory.id} [{memory.category}]{stale}{subject} {memory.content}"


def _preference_line(preference: PreferenceOut) -> str:
    value = preference.value if preference.value_truncated else json.dumps(
        preference.value, ensure_ascii=False)
    return f"{preference.key} = {value}"


def _result(text: str, out: BaseModel) -> CallToolResult:
    """A tool result: ``text`` for the model to read, ``out`` as the structured content."""
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=out.model_dump(mode="json"))


def _more(next_page_token: str) -> str:
    return f"\nMore: page_token={next_page_token!r}" if next_page_token else ""


# -- the server -------------------------------------------------------------------------------


class DaemonClients:
    """The SDK clients the tools call through: one per credential, opened on first use."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._clients: OrderedDict[str | None, Client] = OrderedDict()
        self._lock = threading.Lock()  # tools run in worker threads

    def client(self, token: str | None) -> Client:
        """The client that calls with ``token`` (None: without a credential)."""
        with self._lock:
            client = self._clients.get(token)
            if client is None:
                client = self._clients[token] = Client(
                    self.config.target, namespace=self.config.namespace, token=token,
                    timeout=self.config.timeout, options=CHANNEL_OPTIONS)
                if len(self._clients) > MAX_CLIENTS:
                    # The least recently used credential's calls in flight, if any, fail.
                    self._clients.popitem(last=False)[1].close()
            self._clients.move_to_end(token)
            return client

    def token(self, ctx: Context) -> str | None:
        """The credential of this call: the caller's over HTTP, the configured one on stdio."""
        if not self.config.http:
            return self.config.token
        header = (ctx.headers or {}).get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ToolError("the Authorization header must be 'Bearer <token>'")
        return token.strip()

    async def call(self, ctx: Context, call: Callable[[Client], R]) -> R:
        """Run a blocking SDK call off the event loop; daemon errors become tool errors."""
        try:
            client = self.client(self.token(ctx))  # a malformed token is InvalidArgument
            return await anyio.to_thread.run_sync(call, client)
        except Unavailable as exc:
            raise ToolError(
                f"the jarvis-memory daemon at {self.config.target} is unavailable "
                f"(UNAVAILABLE: {exc.message}); try again once it is back") from exc
        except JarvisMemoryError as exc:
            raise ToolError(str(exc)) from exc

    def close(self) -> None:
        """Close every client."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


INSTRUCTIONS = """\
Long-term memory of the user, kept by a jarvis-memory daemon. Use recall or get_context before \
answering questions that may depend on what you were told before; use remember for durable \
facts, preferences and patterns worth keeping across conversations (not for chit-chat); \
update_memory or forget when something stored turns out wrong. Preferences are key/value \
settings (get_preferences, set_preference)."""

Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")]
PageToken = Annotated[str, Field(description="next_page_token of the previous page; '' first")]
MemoryId = Annotated[int, Field(ge=1, description="the memory's id, as remember/recall gave it")]


def build_server(
    config: Config, log_level: LogLevel = "INFO"
) -> tuple[MCPServer[Any], DaemonClients]:
    """The MCP server and the daemon connection its tools use (close it when done)."""
    daemon = DaemonClients(config)
    server: MCPServer[Any] = MCPServer(
        "jarvis-memory", instructions=INSTRUCTIONS, log_level=log_level)
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=ToolAnnotations(
        title="Remember", read_only_hint=False, destructive_hint=False, idempotent_hint=False,
        open_world_hint=False))
    async def remember(
        ctx: Context,
        content: Annotated[str, Field(min_length=1, description="the memory, one self-contained "
                                      "statement, e.g. 'Prefers espresso after lunch'")],
        category: Annotated[CategoryName, Field(
            description="fact (default), preference or pattern (a recurring behaviour)")] = "fact",
        subject: Annotated[str, Field(description="who or what it is about (optional)")] = "",
        source: Annotated[SourceName, Field(
            description="user_explicit (default: the user said so) or agent_inferred "
                        "(you concluded it)")] = "user_explicit",
        replaces: Annotated[list[int], Field(
            max_length=100, description="ids of memories this one makes out of date (e.g. "
            "the old job when the user changed jobs): they stop being recalled, and their "
            "history is kept")] = [],  # noqa: B006 - pydantic copies defaults
    ) -> Annotated[CallToolResult, RememberOut]:
        """Store a memory. Storing the same content again restates it instead of duplicating."""
        memory = await daemon.call(ctx, lambda jm: jm.add_memory(
            content, category=category, source=source, subject=subject, supersedes=replaces))
        out = RememberOut(memory=_memory_out(memory), deduplicated=memory.deduplicated)
        verb = "Already remembered (restated)" if memory.deduplicated else "Remembered"
        return _result(f"{verb}: {_memory_line(out.memory)}", out)

    @server.tool(annotations=reads.model_copy(update={"title": "Recall"}))
    async def recall(
        ctx: Context,
        query: Annotated[str, Field(min_length=1, description="words to look for")],
        limit: Limit = 10,
    ) -> Annotated[CallToolResult, RecallOut]:
        """Search the memories by keyword (BM25 ranking), best match first."""
        hits: list[MemoryHit] = await daemon.call(
            ctx, lambda jm: jm.search_memories(query, limit=limit, mode="keyword"))
        out = RecallOut(hits=[
            HitOut(memory=_memory_out(h.memory), score=h.score,
                   snippet=_cap(h.snippet, MAX_CONTENT_CHARS)[0])
            for h in hits
        ])
        lines = [_memory_line(h.memory) for h in out.hits]
        return _result("\n".join(lines) if lines else f"No memory matches {query!r}.", out)

    @server.tool(annotations=reads.model_copy(update={"title": "Get context"}))
    async def get_context(
        ctx: Context,
        query: Annotated[str, Field(min_length=1, description="what the conversation is about")],
        max_tokens: Annotated[int, Field(ge=50, le=MAX_CONTEXT_TOKENS,
                                         description="the text's budget in tokens")] = 2000,
    ) -> Annotated[CallToolResult, ContextOut]:
        """Assemble what is known that bears on a query (memories, preferences) as one text.

        The text fits within max_tokens; put it in your context before answering.
        """
        def assemble(jm: Client) -> JarvisContext:
            return jm.assemble_context(query, max_tokens=max_tokens)

        assembled = await daemon.call(ctx, assemble)
        out = ContextOut(text=assembled.text, sections=[
            SectionOut(name=s.name, items=len(s.items)) for s in assembled.sections],
            truncated=assembled.truncated)
        return _result(out.text, out)

    @server.tool(annotations=ToolAnnotations(
        title="Update memory", read_only_hint=False, destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def update_memory(
        ctx: Context,
        id: MemoryId,
        content: Annotated[str | None, Field(min_length=1, description="new content")] = None,
        category: CategoryName | None = None,
        subject: Annotated[str | None, Field(description="new subject ('' clears it)")] = None,
        stale: Annotated[bool | None, Field(
            description="true marks it outdated without deleting it")] = None,
    ) -> Annotated[CallToolResult, UpdateOut]:
        """Change a memory's content, category, subject or staleness; the rest stays."""
        changes: dict[str, Any] = {
            name: value for name, value in (
                ("content", content), ("category", category), ("subject", subject),
                ("stale", stale))
            if value is not None
        }
        if not changes:
            raise ToolError("nothing to change: give content, category, subject or stale")
        memory = await daemon.call(ctx, lambda jm: jm.update_memory(id, **changes))
        out = UpdateOut(memory=_memory_out(memory))
        return _result(f"Updated: {_memory_line(out.memory)}", out)

    @server.tool(annotations=ToolAnnotations(
        title="Forget", read_only_hint=False, destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def forget(ctx: Context, id: MemoryId) -> Annotated[CallToolResult, ForgetOut]:
        """Delete a memory for good (update_memory with stale=true keeps it, marked outdated)."""
        await daemon.call(ctx, lambda jm: jm.delete_memory(id))
        return _result(f"Forgot memory #{id}.", ForgetOut(id=id, deleted=True))

    @server.tool(annotations=reads.model_copy(update={"title": "List memories"}))
    async def list_memories(
        ctx: Context, limit: Limit = 20, page_token: PageToken = "",
    ) -> Annotated[CallToolResult, MemoryPageOut]:
        """List the memories, newest first, one page at a time."""
        page = await daemon.call(
            ctx, lambda jm: jm.list_memories(page_size=limit, page_token=page_token))
        out = MemoryPageOut(memories=[_memory_out(m) for m in page],
                            next_page_token=page.next_page_token)
        lines = [_memory_line(m) for m in out.memories] or ["No memories."]
        return _result("\n".join(lines) + _more(out.next_page_token), out)

    @server.tool(annotations=reads.model_copy(update={"title": "Get preferences"}))
    async def get_preferences(
        ctx: Context,
        prefix: Annotated[str, Field(description="only keys starting with this ('' for all)")] = "",
        limit: Limit = 50, page_token: PageToken = "",
    ) -> Annotated[CallToolResult, PreferencePageOut]:
        """List the preferences (key/value settings) in key order, one page at a time."""
        page = await daemon.call(ctx, lambda jm: jm.list_preferences(
            prefix=prefix, page_size=limit, page_token=page_token))
        out = PreferencePageOut(preferences=[_preference_out(p) for p in page],
                                next_page_token=page.next_page_token)
        lines = [_preference_line(p) for p in out.preferences] or ["No preferences."]
        return _result("\n".join(lines) + _more(out.next_page_token), out)

    @server.tool(annotations=ToolAnnotations(
        title="Set preference", read_only_hint=False, destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def set_preference(
        ctx: Context,
        key: Annotated[str, Field(min_length=1, description="e.g. 'ui.theme'")],
        value: Annotated[Any, Field(description="any JSON value; replaces the key's value")],
    ) -> Annotated[CallToolResult, SetPreferenceOut]:
        """Create or replace a preference."""
        preference = await daemon.call(ctx, lambda jm: jm.set_preference(key, value))
        out = SetPreferenceOut(preference=_preference_out(preference))
        return _result(f"Set {_preference_line(out.preference)}", out)

    return server, daemon


# -- command line -----------------------------------------------------------------------------


def _host_port(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" ("[::1]:8765" for IPv6)."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's options, defaulting to the environment's."""
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="jarvis-memory-mcp",
        description="Serve a jarvis-memory daemon's memories and preferences over MCP "
                    "(stdio unless --http).")
    parser.add_argument("--target", default=env.get("JARVIS_MEMORY_ADDR", DEFAULT_TARGET),
                        help="the daemon's HOST:PORT (JARVIS_MEMORY_ADDR)")
    parser.add_argument("--namespace", default=env.get("JARVIS_MEMORY_NAMESPACE", ""),
                        help="the namespace every tool uses (JARVIS_MEMORY_NAMESPACE; "
                             "default: the daemon's default)")
    parser.add_argument("--token", default=env.get("JARVIS_MEMORY_TOKEN") or None,
                        help="the daemon credential on stdio (JARVIS_MEMORY_TOKEN; prefer the "
                             "variable, a flag shows in ps); over HTTP each caller's bearer "
                             "token is used instead")
    parser.add_argument("--http", metavar="HOST:PORT", type=_host_port,
                        help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds each daemon call may take, retries included")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the MCP server until stdin closes (stdio) or it is interrupted (HTTP)."""
    args = parse_args(argv)
    config = Config(target=args.target, namespace=args.namespace, token=args.token,
                    timeout=args.timeout, http=args.http is not None)
    server, daemon = build_server(config, args.log_level)
    try:
        if args.http is None:
            server.run("stdio")
        else:
            host, port = args.http
            server.run("streamable-http", host=host, port=port)
    finally:
        daemon.close()


if __name__ == "__main__":
    main()
