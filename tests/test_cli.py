"""The data command line (`jarvis-memory get|put|list|search|delete|watch|stats|health`), run as
the console script against a real daemon; and `token create` switching auth on."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon

BIN = Path(sys.executable).with_name("jarvis-memory")
# The tests' own environment, without any JARVIS_MEMORY_* the shell running them may have.
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("JARVIS_MEMORY_")}
UTC_TIME = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env={**BASE_ENV, "COLUMNS": "100", **(env or {})})


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def one_error_line(result: subprocess.CompletedProcess[str], command: str, status: str) -> str:
    """Check that a failed command wrote one line `jarvis-memory <command>: <STATUS>: ...`."""
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"jarvis-memory {command}: {status}: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


class Cli:
    """`jarvis-memory` aimed at one daemon and namespace (through the environment)."""

    def __init__(self, addr: str, namespace: str, **env: str) -> None:
        self.env = {"JARVIS_MEMORY_ADDR": addr, "JARVIS_MEMORY_NAMESPACE": namespace, **env}

    def __call__(self, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
        return run(*args, env={**self.env, **(env or {})})

    def ok(self, *args: str) -> str:
        """Stdout of a command that must succeed (and write nothing on stderr)."""
        result = self(*args)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)
        return result.stdout

    def json(self, *args: str) -> list[dict[str, Any]]:
        """The JSON Lines a command writes with -o json."""
        return [json.loads(line) for line in self.ok(*args, "-o", "json").splitlines()]

    def one(self, *args: str) -> dict[str, Any]:
        """The single JSON object a command writes with -o json."""
        items = self.json(*args)
        assert len(items) == 1, items
        return items[0]

    def all(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Independent commands, run side by side (each is a process of its own)."""
        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(lambda args: self(*args), commands))


@pytest.fixture
def cli(daemon: Daemon, namespace: str) -> Cli:
    return Cli(daemon.addr, namespace)


def test_memories_put_get_list_search_delete(cli: Cli, daemon: Daemon, namespace: str) -> None:
    table = cli.ok("put", "memory", "Prefers espresso", "--category", "preference",
                   "--source", "user_explicit")
    header, row = table.splitlines()
    assert header.split() == ["ID", "CATEGORY", "SOURCE", "SUBJECT", "CREATED", "CONTENT"]
    assert "preference" in row and "user_explicit" in row and row.endswith("Prefers espresso")
    first = int(row.split()[0])
    second = cli.one("put", "memories", "The coffee machine on floor 2 is broken",
                     "--category", "fact", "--subject", "office", "--attributes", '{"a": 1}')
    assert second["category"] == "fact" and second["attributes"] == {"a": 1}
    assert second["source"] == "user_explicit"  # the default: a person typed it
    with daemon.client(namespace=namespace) as jm:
        stored = jm.get_memory(second["id"])
    assert stored.attributes == {"a": 1} and stored.subject == "office"
    assert datetime.fromisoformat(second["created_at"]) == stored.created_at
    assert second["created_at"].endswith("Z")

    shown, one, facts, everything, hits = cli.all(
        ("get", "memory", str(first)),
        ("get", "memory", str(first), "-o", "json"),
        ("list", "memories", "--category", "fact", "-o", "json"),
        ("list", "memories"),
        ("search", "coffee", "--limit", "5", "-o", "json"),
    )
    assert shown.returncode == 0, shown.stderr
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in shown.stdout.splitlines()
                  if re.match(r"\w+:\s+\S", line))
    assert fields["id"] == str(first) and fields["content"] == "Prefers espresso"
    assert fields["namespace"] == namespace and UTC_TIME.fullmatch(fields["created_at"])
    assert len(one.stdout.splitlines()) == 1 and json.loads(one.stdout)["id"] == first
    assert [json.loads(line)["id"] for line in facts.stdout.splitlines()] == [second["id"]]
    lines = everything.stdout.splitlines()
    assert lines[0].split()[0] == "ID" and len(lines) == 3  # the header, newest first
    assert "The coffee machine" in lines[1] and "Prefers espresso" in lines[2]
    assert UTC_TIME.search(lines[1])
    [hit] = [json.loads(line) for line in hits.stdout.splitlines()]
    assert hit["memory"]["id"] == second["id"] and hit["score"] > 0
    assert "**" in hit["snippet"]

    assert cli.ok("delete", "memory", str(first)) == f"deleted memory {first}\n"
    gone = cli("get", "memory", str(first))
    assert gone.returncode == 3
    line = one_error_line(gone, "get", "NOT_FOUND")
    assert line == (f"jarvis-memory get: NOT_FOUND: memory {first} does not exist in "
                    f"namespace {namespace!r}")
    again = cli("delete", "memory", str(first))
    assert again.returncode == 3
    one_error_line(again, "delete", "NOT_FOUND")


def test_sessions_and_messages(cli: Cli) -> None:
    session = cli.one("put", "session", "s-1", "--metadata", '{"user": "ann"}')
    assert session["id"] == "s-1" and session["metadata"] == {"user": "ann"}
    cli.ok("put", "message", "s-1", "Could I get a latte?")
    reply = cli.one("put", "message", "s-1", "Coming right up", "--role", "assistant")
    assert reply["role"] == "assistant" and reply["sequence"] == 2
    listed, table, sessions, shown, hits = cli.all(
        ("list", "messages", "s-1", "-o", "json"),
        ("list", "messages", "s-1"),
        ("list", "sessions", "--state", "active", "-o", "json"),
        ("get", "session", "s-1"),
        ("search", "latte", "--kind", "messages", "-o", "json"),
    )
    messages = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(m["sequence"], m["role"], m["content"]) for m in messages] == [
        (1, "user", "Could I get a latte?"), (2, "assistant", "Coming right up")]
    assert table.stdout.splitlines()[0].split() == ["SEQ", "ID", "ROLE", "CREATED", "CONTENT"]
    assert "Coming right up" in table.stdout
    [found] = [json.loads(line) for line in sessions.stdout.splitlines()]
    assert found["id"] == "s-1" and found["message_count"] == 2
    assert re.search(r"^message_count:\s+2$", shown.stdout, re.M)
    [hit] = [json.loads(line) for line in hits.stdout.splitlines()]
    assert hit["message"]["content"] == "Could I get a latte?"
    ended = cli("put", "message", "no-such-session", "hello")
    assert ended.returncode == 3
    one_error_line(ended, "put", "NOT_FOUND")


def test_events(cli: Cli) -> None:
    event = cli.one("put", "event", "disk almost full on node-3", "--type", "alert",
                    "--severity", "warning", "--source", "monitor", "--node", "node-3",
                    "--details", '{"used_pct": 93}')
    assert event["details"] == {"used_pct": 93} and event["resolved"] is False
    listed, shown, hits = cli.all(
        ("list", "events", "--unresolved", "--type", "alert"),
        ("get", "event", str(event["id"]), "-o", "json"),
        ("search", "disk", "--kind", "events"),
    )
    assert listed.stdout.splitlines()[0].split()[:4] == ["ID", "OCCURRED", "TYPE", "SEVERITY"]
    assert "disk almost full on node-3" in listed.stdout and "warning" in listed.stdout
    assert json.loads(shown.stdout) == event
    assert "disk almost full" in hits.stdout and hits.stdout.startswith("SCORE")


def test_preferences_and_state(cli: Cli) -> None:
    cli.ok("put", "preference", "theme", '"dark"')
    cli.ok("put", "preferences", "limits", '{"cups": [1, 2.5], "decaf": false}')
    state = cli.one("put", "state", "plan", '{"step": 1}')
    assert state["version"] == 1
    assert cli.one("put", "state", "plan", "2", "--expected-version", "1")["value"] == 2
    prefs, one, table, entry = cli.all(
        ("list", "preferences", "-o", "json"),
        ("get", "preference", "limits", "-o", "json"),
        ("list", "preferences"),
        ("get", "state", "plan", "-o", "json"),
    )
    assert {p["key"]: p["value"] for p in map(json.loads, prefs.stdout.splitlines())} == {
        "limits": {"cups": [1, 2.5], "decaf": False}, "theme": "dark"}
    assert json.loads(one.stdout)["value"] == {"cups": [1, 2.5], "decaf": False}
    assert '"dark"' in table.stdout and table.stdout.startswith("KEY")
    assert json.loads(entry.stdout)["version"] == 2

    conflict = cli("put", "state", "plan", "3", "--expected-version", "1")
    assert conflict.returncode == 1
    one_error_line(conflict, "put", "ABORTED")
    not_json = cli("put", "preference", "theme", "dark")  # the text dark is not JSON
    assert not_json.returncode == 2 and not_json.stdout == ""
    assert not_json.stderr.count("\n") == 1 and "Traceback" not in not_json.stderr
    assert "argument VALUE: not valid JSON: 'dark'" in not_json.stderr
    assert "'\"dark\"'" in not_json.stderr  # the hint: how to give the text

    assert cli.ok("delete", "state", "plan") == "deleted state plan\n"
    assert cli.json("delete", "preference", "theme") == [{"deleted": "preference",
                                                          "key": "theme"}]
    for kind, key in (("state", "plan"), ("preference", "theme")):
        missing = cli("get", kind, key)
        assert missing.returncode == 3
        one_error_line(missing, "get", "NOT_FOUND")


def test_rows_of_a_collection(cli: Cli, daemon: Daemon, namespace: str) -> None:
    with daemon.client(namespace=namespace) as jm:
        jm.create_collection("trades", fields=[
            ("symbol", "string", {"required": True, "indexed": True}), ("qty", "integer"),
            ("at", "timestamp"), ("meta", "json")])
    [eth] = cli.json("put", "row", "trades",
                     '{"symbol": "ETH", "qty": 3, "at": "2025-01-02T03:04:05Z", '
                     '"meta": {"tags": ["x"]}}')
    assert list(eth) == ["id", "symbol", "qty", "at", "meta"]  # the collection's order
    assert eth["at"] == "2025-01-02T03:04:05Z" and eth["meta"] == {"tags": ["x"]}
    two = cli.json("put", "rows", "trades", '{"symbol": "BTC", "qty": 1}',
                   '{"symbol": "SOL", "qty": 7}')
    assert [r["symbol"] for r in two] == ["BTC", "SOL"]
    big, btc, biggest, table, one, defined = cli.all(
        ("list", "rows", "trades", "--filter", "qty gt 2", "-o", "json"),
        ("list", "rows", "trades", "--filter", "symbol eq BTC", "-o", "json"),
        ("list", "rows", "trades", "--order-by=-qty", "--limit", "1", "-o", "json"),
        ("list", "rows", "trades", "--filter", "at >= 2025-01-01T00:00:00Z"),
        ("get", "row", "trades", str(eth["id"])),
        ("list", "collections"),
    )
    assert sorted(json.loads(line)["symbol"] for line in big.stdout.splitlines()) == [
        "ETH", "SOL"]
    assert [json.loads(line)["symbol"] for line in btc.stdout.splitlines()] == ["BTC"]
    assert [json.loads(line)["symbol"] for line in biggest.stdout.splitlines()] == ["SOL"]
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "SYMBOL", "QTY", "AT", "META"] and len(rows) == 1
    assert "2025-01-02T03:04:05Z" in rows[0] and '{"tags":["x"]}' in rows[0]
    assert re.search(r"^symbol:\s+ETH$", one.stdout, re.M)
    assert "symbol:string(required,indexed), qty:integer" in defined.stdout

    assert cli.ok("delete", "row", "trades", str(eth["id"])) == (
        f"deleted row trades {eth['id']}\n")
    gone, no_collection, bad_filter, bad_row = cli.all(
        ("get", "row", "trades", str(eth["id"])),
        ("list", "rows", "no_such_collection"),
        ("list", "rows", "trades", "--filter", "qty about 3"),
        ("put", "row", "trades", "[1, 2]"),
    )
    assert gone.returncode == 3 and no_collection.returncode == 3
    assert "row" in one_error_line(gone, "get", "NOT_FOUND")
    one_error_line(no_collection, "list", "NOT_FOUND")
    assert bad_filter.returncode == 2 and "argument --filter" in bad_filter.stderr
    assert bad_row.returncode == 2 and "argument ROW: must be a JSON object" in bad_row.stderr


def test_table_cuts_long_text_to_the_width(cli: Cli) -> None:
    long = "word " * 60 + "END"
    cli.ok("put", "memory", long, "--category", "fact")
    for width in (100, 60):
        out = cli("list", "memories", env={"COLUMNS": str(width)}).stdout
        lines = out.splitlines()
        assert all(len(line) <= width for line in lines), out
        assert lines[1].endswith("…") and "END" not in out
    [full] = cli.json("list", "memories")
    assert full["content"] == long  # JSON Lines: every value in full
    assert long in cli.ok("get", "memory", str(full["id"]))  # get: in full too


def test_errors_are_one_line_with_an_exit_status(cli: Cli, daemon: Daemon) -> None:
    unreachable = closed_port()
    bad_attributes, unknown_resource, not_an_id, refused, invalid, auth_off = cli.all(
        ("put", "memory", "x", "--category", "fact", "--attributes", "not json"),
        ("get", "gadget", "1"),
        ("get", "memory", "forty-two"),
        ("get", "memory", "1", "--addr", unreachable, "--timeout", "5"),
        ("put", "memory", "   ", "--category", "fact"),  # the daemon refuses empty content
        ("list", "memories", "--token", "jmt_nope_nope"),  # auth off: the token is ignored
    )
    assert bad_attributes.returncode == 2
    assert "argument --attributes: not valid JSON: 'not json'" in bad_attributes.stderr
    for usage in (bad_attributes, unknown_resource, not_an_id):
        assert usage.returncode == 2 and usage.stdout == ""
        assert usage.stderr.count("\n") == 1 and "Traceback" not in usage.stderr
    assert "invalid choice: 'gadget'" in unknown_resource.stderr
    assert refused.returncode == 1
    line = one_error_line(refused, "get", "UNAVAILABLE")
    assert unreachable in line and "--addr" in line
    assert invalid.returncode == 2
    one_error_line(invalid, "put", "INVALID_ARGUMENT")
    assert auth_off.returncode == 0


def test_connection_flags_before_or_after_the_resource(daemon: Daemon, namespace: str) -> None:
    """No environment: --addr and --namespace, before the resource or after its arguments."""
    with daemon.client(namespace=namespace) as jm:
        m = jm.add_memory("flags work", category="fact", source="user_explicit")
    before = run("get", "--addr", daemon.addr, "-n", namespace, "-o", "json", "memory", str(m.id))
    after = run("get", "memory", str(m.id), "--addr", daemon.addr, "--namespace", namespace)
    elsewhere = run("get", "memory", str(m.id), "--addr", daemon.addr)  # namespace 'default'
    assert json.loads(before.stdout)["content"] == "flags work", before.stderr
    assert "flags work" in after.stdout, after.stderr
    assert elsewhere.returncode == 3 and "namespace 'default'" in elsewhere.stderr


def test_health(daemon: Daemon) -> None:
    unreachable = closed_port()
    started = time.monotonic()
    serving, service, unknown, closed = [run(*args) for args in (
        ("health", "--addr", daemon.addr),
        ("health", "--addr", daemon.addr, "--service", "jarvis.memory.v1.MemoryService"),
        ("health", "--addr", daemon.addr, "--service", "no.such.Service"),
        ("health", "--addr", unreachable),
    )]
    assert time.monotonic() - started < 10  # quick: each is one call of at most 3 s
    assert serving.returncode == 0 and serving.stdout == f"SERVING {daemon.addr}\n"
    assert service.returncode == 0 and service.stdout.startswith("SERVING")
    assert unknown.returncode == 1
    one_error_line(unknown, "health", "NOT_FOUND")
    assert closed.returncode == 1
    assert unreachable in one_error_line(closed, "health", "UNAVAILABLE")
    as_json = run("health", "-o", "json", env={"JARVIS_MEMORY_ADDR": daemon.addr})
    assert json.loads(as_json.stdout) == {"status": "SERVING", "service": "",
                                          "addr": daemon.addr}


def test_stats(cli: Cli, namespace: str) -> None:
    cli.ok("put", "memory", "counted", "--category", "fact")
    table, as_json = cli.all(("stats",), ("stats", "-o", "json"))
    assert re.search(r"^revision:\s+\d+$", table.stdout, re.M)
    assert re.search(rf"^{re.escape(namespace)}\s+memories\s+1$", table.stdout, re.M)
    stats = json.loads(as_json.stdout)
    assert {"kind": "memories", "namespace": namespace, "rows": 1} in stats["counts"]
    assert stats["revision"] > 0 and isinstance(stats["uptime"], float)


class Lines:
    """A running command's stdout lines, read in a thread; ``next`` waits with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            with stdout:
                for line in stdout:
                    self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the end of the output (once the command ended)."""
        self._thread.join(30)

    def next(self, timeout: float = 30) -> str:
        line = self._queue.get(timeout=timeout)
        assert line is not None, "the command ended"
        return line


@pytest.fixture
def watching(cli: Cli) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_watch_prints_changes_then_stops_cleanly(
    cli: Cli, daemon: Daemon, namespace: str, watching: list[subprocess.Popen[str]],
    stop: signal.Signals,
) -> None:
    with daemon.client(namespace=namespace) as jm:
        start = jm.add_memory("before the watch", category="fact", source="user_explicit")
        as_json = stop == signal.SIGTERM
        proc = subprocess.Popen(
            [str(BIN), "watch", "--kinds", "memories,event", "--from-revision",
             str(start.revision), *(["-o", "json"] if as_json else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**BASE_ENV, **cli.env})
        watching.append(proc)
        lines = Lines(proc)
        first = lines.next()  # the stream is up: what follows is live
        m = jm.add_memory("during the watch", category="fact", source="user_explicit")
        jm.set_preference("ignored", 1)  # not a kind watched
        e = jm.record_event(type="alert", severity="error", source="monitor",
                            summary="node-7 is down")
        jm.delete_memory(m.id)
        rest = [lines.next() for _ in range(3)]
    proc.send_signal(stop)
    assert proc.wait(30) == 0
    lines.join()
    assert proc.stderr is not None and proc.stderr.read() == ""
    if as_json:
        changes = [json.loads(line) for line in [first, *rest]]
        assert [(c["kind"], c["key"], c["operation"]) for c in changes] == [
            ("memory", str(start.id), "create"), ("memory", str(m.id), "create"),
            ("event", str(e.id), "create"), ("memory", str(m.id), "delete")]
        assert changes[1]["resource"]["content"] == "during the watch"
        assert changes[2]["resource"]["summary"] == "node-7 is down"
        assert changes[3]["resource"] is None and changes[0]["revision"] == start.revision
        assert all(c["time"].endswith("Z") for c in changes)
    else:
        assert first.split()[0] == str(start.revision) and first.endswith("before the watch")
        assert f"create  memory/{m.id}" in rest[0] and rest[0].endswith("during the watch")
        assert f"event/{e.id}" in rest[1] and rest[1].endswith("error: node-7 is down")
        assert f"delete  memory/{m.id}" in rest[2]
        assert all(UTC_TIME.search(line) for line in [first, *rest])


def test_auth_tokens_and_the_switch_on(db_target: Path | str, tmp_path: Path) -> None:
    daemon = Daemon(db_target, "--auth-cache-ttl", "0").start()
    try:
        cli = Cli(daemon.addr, "home")
        assert "auth off" in daemon.output
        cli.ok("put", "memory", "open while auth is off", "--category", "fact")

        first = run("token", "create", "--role", "writer", "--namespace", "home",
                    "--db", str(db_target))
        assert first.returncode == 0, first.stderr
        token = first.stdout.strip()
        assert token.startswith("jmt_") and first.stdout.count("\n") == 1
        assert "auth is now ON" in first.stderr and "first API token" in first.stderr
        assert "need a token" in first.stderr or "needs a token" in first.stderr
        assert token not in first.stderr

        refused = cli("list", "memories")
        assert refused.returncode == 1
        line = one_error_line(refused, "list", "UNAUTHENTICATED")
        assert "--token" in line and "JARVIS_MEMORY_TOKEN" in line
        daemon.wait_for_log(r"WARNING jarvis_memory\.auth: auth is now ON")

        second = run("token", "create", "--role", "reader", "--namespace", "home",
                     "--db", str(db_target))
        assert second.returncode == 0 and second.stderr == ""  # auth was already on

        by_flag = cli("list", "memories", "-o", "json", "--token", token)
        by_env = cli("put", "memory", "written with a token", "--category", "fact",
                     env={"JARVIS_MEMORY_TOKEN": token})
        health = cli("health")  # health needs no credential
        assert [json.loads(x)["content"] for x in by_flag.stdout.splitlines()] == [
            "open while auth is off"]
        assert by_env.returncode == 0 and "written with a token" in by_env.stdout
        assert health.returncode == 0
        assert token not in daemon.output
    finally:
        assert daemon.stop() == 0
    assert len(re.findall(r"auth is now ON", daemon.output)) == 1, daemon.output
