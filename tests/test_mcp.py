"""jarvis-memory-mcp, the MCP server over the SDK, driven by the MCP SDK's own client.

Every test runs against real processes: a daemon (the shared ``daemon`` fixture runs each
test on both backends; the tests that stop a daemon or turn auth on start their own on
SQLite) and the MCP server spawned over stdio or started with --http on a port of its choosing.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from jsonschema import Draft202012Validator
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from conftest import ROOT, START_TIMEOUT, Daemon
from jarvis_memory import Client

SERVER = [sys.executable, "-m", "jarvis_memory.mcp_server"]
SCRIPT = str(Path(sys.executable).with_name("jarvis-memory-mcp"))
HTTP_READY = re.compile(r"Uvicorn running on http://(\S+:\d+)")

REQUIRED = {
    "remember": ["content"],
    "recall": ["query"],
    "get_context": ["query"],
    "update_memory": ["id"],
    "forget": ["id"],
    "list_memories": [],
    "get_preferences": [],
    "set_preference": ["key", "value"],
}
READ_ONLY = {"recall", "get_context", "list_memories", "get_preferences"}


def run(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test)


@asynccontextmanager
async def stdio_session(
    log: Path, *args: str, command: list[str] = SERVER, env: dict[str, str] | None = None,
) -> AsyncIterator[ClientSession]:
    """An initialized session with a server spawned over stdio; its stderr goes to ``log``."""
    params = StdioServerParameters(command=command[0], args=[*command[1:], *args], env=env)
    with log.open("a") as errlog:
        async with (stdio_client(params, errlog=errlog) as (read, write),
                    ClientSession(read, write) as session):
            await session.initialize()
            yield session


@asynccontextmanager
async def http_session(url: str, header: str | None = None) -> AsyncIterator[ClientSession]:
    """An initialized session over Streamable HTTP, sending ``Authorization: header``."""
    headers = {"Authorization": header} if header else None
    async with (httpx2.AsyncClient(headers=headers) as http,
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write) as session):
        await session.initialize()
        yield session


class HttpServer:
    """`jarvis-memory-mcp --http 127.0.0.1:0`; the bound address is read from its log."""

    def __init__(self, *args: str) -> None:
        self.log: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [*SERVER, "--http", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        if not self._ready.wait(START_TIMEOUT) or not self.url:
            self.stop()
            raise RuntimeError("the MCP server did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.log.append(line)
                match = HTTP_READY.search(line)
                if match:
                    self.url = f"http://{match.group(1)}/mcp"
                    self._ready.set()
        self._ready.set()  # exited: wake the constructor

    def stop(self) -> bool:
        """SIGTERM and wait; returns whether the server shut down cleanly.

        Uvicorn shuts down, then re-raises the signal: -SIGTERM is its clean exit.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(START_TIMEOUT)
        self._drainer.join(START_TIMEOUT)
        log = "".join(self.log)
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in log


@pytest.fixture
def http_server(daemon: Daemon, namespace: str) -> Iterator[HttpServer]:
    server = HttpServer("--target", daemon.addr, "--namespace", namespace)
    yield server
    assert server.stop(), "".join(server.log)


def text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def ok(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured result (checking the text too)."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}({arguments}): {text(result)}"
    assert text(result)
    assert result.structured_content is not None
    return result.structured_content


async def error(session: ClientSession, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail; return the error's text."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, f"{tool}({arguments}) succeeded: {text(result)}"
    return text(result)


async def all_memories(session: ClientSession) -> list[dict[str, Any]]:
    """Every memory, following list_memories's pages."""
    memories: list[dict[str, Any]] = []
    token = ""
    while True:
        page = await ok(session, "list_memories", limit=100, page_token=token)
        memories += page["memories"]
        token = page["next_page_token"]
        if not token:
            return memories


def test_tools_have_schemas_and_annotations(daemon: Daemon, namespace: str,
                                            tmp_path: Path) -> None:
    async def test() -> None:
        async with stdio_session(tmp_path / "mcp.log", "--target", daemon.addr) as session:
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == set(REQUIRED)
        for name, tool in tools.items():
            schema = tool.input_schema
            Draft202012Validator.check_schema(schema)
            assert schema["type"] == "object"
            assert sorted(schema.get("required", [])) == sorted(REQUIRED[name]), name
            assert "namespace" not in schema["properties"], name
            assert tool.description and len(tool.description) > 20, name
            assert tool.output_schema is not None, name
            Draft202012Validator.check_schema(tool.output_schema)
            hints = tool.annotations
            assert hints is not None and hints.open_world_hint is False, name
            assert hints.read_only_hint is (name in READ_ONLY), name
        assert tools["forget"].annotations.destructive_hint is True  # type: ignore[union-attr]
        assert tools["forget"].annotations.idempotent_hint is True  # type: ignore[union-attr]
        assert tools["remember"].annotations.destructive_hint is False  # type: ignore[union-attr]
        assert tools["set_preference"].annotations.idempotent_hint is True  # type: ignore[union-attr]
        assert tools["remember"].input_schema["properties"]["category"]["default"] == "fact"
        assert tools["list_memories"].input_schema["properties"]["limit"]["maximum"] == 100

    run(test)


def test_every_tool_over_stdio(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    """The console script, configured by the environment alone."""
    env = {"JARVIS_MEMORY_ADDR": daemon.addr, "JARVIS_MEMORY_NAMESPACE": namespace}

    async def test() -> None:
        async with stdio_session(tmp_path / "mcp.log", command=[SCRIPT], env=env) as session:
            added = await ok(session, "remember", content="Alice drinks espresso after lunch",
                             subject="alice")
            memory = added["memory"]
            assert (memory["category"], memory["source"]) == ("fact", "user_explicit")
            assert added["deduplicated"] is False
            again = await ok(session, "remember", content="Alice drinks espresso after lunch")
            assert again["deduplicated"] is True and again["memory"]["id"] == memory["id"]
            await ok(session, "remember", content="Bob keeps his bike in the garage",
                     category="pattern", source="agent_inferred")

            hits = (await ok(session, "recall", query="espresso", limit=5))["hits"]
            assert [h["memory"]["id"] for h in hits] == [memory["id"]]
            nothing = await session.call_tool("recall", {"query": "zeppelin"})
            assert not nothing.is_error and "No memory matches" in text(nothing)

            await ok(session, "set_preference", key="ui.theme", value="dark")
            await ok(session, "set_preference", key="ui.units", value={"length": "metric"})
            await ok(session, "set_preference", key="voice", value=True)

            context = await ok(session, "get_context", query="espresso", max_tokens=200)
            assert len(context["text"]) <= 200 * 4
            assert "Alice drinks espresso after lunch" in context["text"]
            assert {s["name"] for s in context["sections"]}

            updated = await ok(session, "update_memory", id=memory["id"],
                               content="Alice drinks a double espresso after lunch")
            assert updated["memory"]["content"] == "Alice drinks a double espresso after lunch"
            stale = await ok(session, "update_memory", id=memory["id"], stale=True)
            assert stale["memory"]["stale"] is True

            first = await ok(session, "list_memories", limit=1)
            assert len(first["memories"]) == 1 and first["next_page_token"]
            second = await ok(session, "list_memories", limit=1,
                              page_token=first["next_page_token"])
            assert second["memories"][0]["id"] != first["memories"][0]["id"]
            assert len(await all_memories(session)) == 2

            prefs = (await ok(session, "get_preferences", prefix="ui."))["preferences"]
            assert {p["key"]: p["value"] for p in prefs} == {
                "ui.theme": "dark", "ui.units": {"length": "metric"}}
            paged = await ok(session, "get_preferences", limit=2)
            assert len(paged["preferences"]) == 2 and paged["next_page_token"]

            assert (await ok(session, "forget", id=memory["id"]))["deleted"] is True
            assert "NOT_FOUND" in await error(session, "forget", id=memory["id"])

        # The namespace came from the environment, as the daemon sees it.
        with Client(daemon.addr, namespace=namespace) as jm:
            assert [m.content for m in jm.iter_memories()] == ["Bob keeps his bike in the garage"]
            assert jm.get_preference("voice").value is True

    run(test)


def test_bad_arguments_are_tool_errors(daemon: Daemon, namespace: str, tmp_path: Path) -> None:
    async def test() -> None:
        async with stdio_session(tmp_path / "mcp.log", "--target", daemon.addr,
                                 "--namespace", namespace) as session:
            assert "id" in await error(session, "forget", id="not-a-number")
            assert "id" in await error(session, "forget", id=1.5)
            assert "content" in await error(session, "remember", content="")
            assert "category" in await error(session, "remember", content="x", category="gossip")
            assert "limit" in await error(session, "list_memories", limit=1000)
            assert "nothing to change" in await error(session, "update_memory", id=1)
            assert "NOT_FOUND" in await error(session, "update_memory", id=987654, stale=True)
            # The daemon's own checks come back with its message.
            assert "INVALID_ARGUMENT" in await error(session, "recall", query="   ")
            assert "INVALID_ARGUMENT" in await error(session, "list_memories",
                                                     page_token="garbage")
            assert await error(session, "no_such_tool")

            # Long contents are cut, with a marker, in what comes back.
            long = await ok(session, "remember", content="word " * 1000)
            assert long["memory"]["content_truncated"] is True
            assert long["memory"]["content"].endswith("more characters]")
            assert len(long["memory"]["content"]) < 2100

            # The server is still there.
            assert len((await ok(session, "list_memories"))["memories"]) == 1

    run(test)


def test_remember_can_replace_an_out_of_date_memory(daemon: Daemon, namespace: str,
                                                   tmp_path: Path) -> None:
    async def test() -> None:
        async with stdio_session(tmp_path / "mcp.log", "--target", daemon.addr,
                                 "--namespace", namespace) as session:
            old = (await ok(session, "remember", content="Works at Acme"))["memory"]
            new = (await ok(session, "remember", content="Works at Globex",
                            replaces=[old["id"]]))["memory"]
            hits = (await ok(session, "recall", query="works"))["hits"]
            assert [h["memory"]["id"] for h in hits] == [new["id"]]  # the old one is not recalled
            assert "already superseded" in await error(session, "remember", content="Works at X",
                                                       replaces=[old["id"]])
            assert "does not exist" in await error(session, "remember", content="Works at Y",
                                                   replaces=[10**12])

    run(test)
    with daemon.client(namespace=namespace) as jm:
        (replaced,) = [m for m in jm.list_memories(include_superseded=True)
                       if m.content == "Works at Acme"]
        assert replaced.superseded_by is not None


def test_daemon_down_then_back(tmp_path: Path, namespace: str) -> None:
    """A stopped daemon is a tool error; once it is back, the same MCP server works again."""
    first = Daemon(tmp_path / "jarvis.db").start()
    addr = first.addr
    again = Daemon(tmp_path / "jarvis.db", "--addr", addr)  # the last --addr wins

    async def test() -> None:
        async with stdio_session(tmp_path / "mcp.log", "--target", addr, "--namespace",
                                 namespace, "--timeout", "3") as session:
            await ok(session, "remember", content="The boiler is serviced in March")
            assert first.stop() == 0
            for tool, arguments in (("remember", {"content": "lost"}),
                                    ("recall", {"query": "boiler"}),
                                    ("list_memories", {})):
                message = await error(session, tool, **arguments)
                assert "unavailable" in message.lower(), message
            again.start()
            deadline = anyio.current_time() + 30
            while True:  # each failed call already waited out the SDK's retries
                result = await session.call_tool("recall", {"query": "boiler"})
                if not result.is_error or anyio.current_time() > deadline:
                    break
            assert not result.is_error, text(result)
            assert "The boiler is serviced in March" in text(result)
            await ok(session, "remember", content="The boiler was serviced today")

    try:
        run(test)
    finally:
        first.kill()
        again.kill()
    assert "Traceback" not in (tmp_path / "mcp.log").read_text()


def test_two_http_clients_remember_concurrently(daemon: Daemon, namespace: str,
                                                http_server: HttpServer) -> None:
    async def test() -> None:
        async def client(n: int) -> None:
            async with http_session(http_server.url) as session:
                for i in range(25):
                    await ok(session, "remember", content=f"client {n} fact number {i}")

        async with anyio.create_task_group() as group:
            group.start_soon(client, 1)
            group.start_soon(client, 2)
        async with http_session(http_server.url) as session:
            contents = {m["content"] for m in await all_memories(session)}
        assert contents == {f"client {n} fact number {i}" for n in (1, 2) for i in range(25)}

    run(test)


def create_token(db: Path, role: str, namespace: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "jarvis_memory_server", "token", "create", "--role", role,
         "--namespace", namespace, "--db", str(db)],
        capture_output=True, text=True, timeout=START_TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_credentials(tmp_path: Path, namespace: str) -> None:
    """Over HTTP the caller's bearer token is the daemon credential, on stdio the configured
    one: either way the daemon's roles and namespaces apply."""
    db = tmp_path / "jarvis.db"
    writer = create_token(db, "writer", namespace)
    reader = create_token(db, "reader", namespace)
    elsewhere = create_token(db, "writer", "someone-else")
    daemon = Daemon(db, "--auth-cache-ttl", "0").start()
    # Even a server holding a token of its own does not lend it to HTTP callers.
    server = HttpServer("--target", daemon.addr, "--namespace", namespace, "--token", writer)

    async def test() -> None:
        async with http_session(server.url, f"Bearer {writer}") as session:
            await ok(session, "remember", content="Secured fact")
        async with http_session(server.url, f"Bearer {reader}") as session:
            assert len((await ok(session, "list_memories"))["memories"]) == 1
            assert "PERMISSION_DENIED" in await error(session, "remember", content="nope")
        async with http_session(server.url, f"Bearer {elsewhere}") as session:
            assert "PERMISSION_DENIED" in await error(session, "list_memories")
        async with http_session(server.url) as session:
            assert "UNAUTHENTICATED" in await error(session, "list_memories")
        async with http_session(server.url, f"Basic {writer}") as session:
            assert "Bearer" in await error(session, "list_memories")
        # Over stdio the credential is the configured one.
        env = {"JARVIS_MEMORY_TOKEN": reader}
        async with stdio_session(tmp_path / "mcp.log", "--target", daemon.addr, "--namespace",
                                 namespace, env=env) as session:
            assert len((await ok(session, "list_memories"))["memories"]) == 1
            assert "PERMISSION_DENIED" in await error(session, "remember", content="nope")

    try:
        run(test)
    finally:
        assert server.stop(), "".join(server.log)
        assert daemon.stop() == 0
    for secret in (writer, reader, elsewhere):
        assert secret not in "".join(server.log)


def test_the_readme_configuration(daemon: Daemon, tmp_path: Path) -> None:
    """README's "mcpServers" entry, as a desktop client would launch it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from Claude Desktop", 1)[1].split("\n## ", 1)[0]
    block = section.split("```jsonc\n", 1)[1].split("```", 1)[0]
    config = json.loads("\n".join(line for line in block.splitlines()
                                  if not line.lstrip().startswith("//")))
    entry = config["jarvis-memory"]
    command = str(Path(sys.executable).with_name(entry["command"]))  # the venv's console script
    args = [daemon.addr if a == "127.0.0.1:50051" else a for a in entry["args"]]

    async def test() -> None:
        async with stdio_session(tmp_path / "mcp.log", *args, command=[command]) as session:
            tools = {tool.name for tool in (await session.list_tools()).tools}
            assert tools == set(REQUIRED)
            result = await session.call_tool("remember", {"content": "Configured from the README"})
            assert not result.is_error, result.content
    run(test)
    with daemon.client(namespace="alice") as jm:
        assert [m.content for m in jm.list_memories()] == ["Configured from the README"]
