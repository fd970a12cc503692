"""`jarvis-memory export` / `import`: JSON Lines between databases, read back through the API."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import BACKENDS, START_TIMEOUT, Daemon, Postgres
from jarvis_memory import Client

NAMESPACES = ("default", "other")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jarvis_memory_server", *args],
                          input=stdin, capture_output=True, text=True, timeout=START_TIMEOUT)


def fill(jm: Client, ns: str) -> None:
    """Write every kind of user data into a namespace."""
    attributes = {"seed": 2**62 + 1, "t": 4.0, "none": None, "z": 1, "a": [1, 2.5, "é"]}
    jm.add_memory("Prefers espresso after lunch", category="preference", source="user_explicit",
                  attributes=attributes, embedding=[0.1, 0.3, 0.5], namespace=ns)
    jm.add_memory("prefers ESPRESSO after lunch ", category="preference",
                  source="user_explicit", namespace=ns)  # restated
    m = jm.add_memory("Allergic to peanuts", category="fact", source="agent_inferred",
                      subject="health", namespace=ns)
    jm.update_memory(m.id, stale=True, namespace=ns)
    gone = jm.add_memory("Deleted soon", category="fact", source="user_explicit", namespace=ns)
    jm.delete_memory(gone.id, namespace=ns)
    s = jm.start_session("tab-1", metadata={"ua": "x", "n": 2**40}, namespace=ns)
    jm.append_message(s.id, role="user", content="good morning Lisbon", namespace=ns,
                      embedding=[1.0, 0.0, 0.25])
    jm.append_message(s.id, role="assistant", content="Morning!", model="claude",
                      tokens_used=12, tool_calls=[{"name": "f", "args": {"x": 1.0}}], namespace=ns)
    jm.log_session_event(s.id, "topic_change", {"topic": "coffee"}, namespace=ns)
    jm.end_session(s.id, trigger="explicit", summary="talked", namespace=ns)
    jm.start_session("tab-2", namespace=ns)
    e = jm.record_event(type="alert", severity="warning", source="monitor", node="pve1",
                        summary="disk 91% full", details={"pct": 91.5, "n": 3}, namespace=ns)
    jm.resolve_event(e.id, resolved_by="user", namespace=ns)
    jm.record_event(type="metric", severity="info", source="system", summary="load ok",
                    namespace=ns)
    jm.save_snapshot({"nodes": 4, "up": 4.0}, namespace=ns)
    jm.set_preference("briefing_time", "07:30", namespace=ns)
    jm.set_preference("ui/theme", {"dark": True, "scale": 1.0}, namespace=ns)
    jm.put_state("planner/cursor", {"step": 3}, namespace=ns)
    jm.put_state("planner/cursor", {"step": 4}, expected_version=1, namespace=ns)
    jm.put_state("lock/far", "agent-a", ttl=3600, namespace=ns)
    call = jm.start_tool_call("web_search", input={"q": "weather"}, namespace=ns)
    jm.finish_tool_call(call.id, status="succeeded", output={"temp": 11.5}, duration_ms=420,
                        namespace=ns)
    jm.start_tool_call("slow", input=[1, 2], namespace=ns)
    cycle = jm.start_planning_cycle({"goals": ["triage"]}, namespace=ns)
    jm.record_decision("restart nginx", reasoning={"why": "502s"}, cycle_id=cycle.id,
                       namespace=ns)
    jm.finish_planning_cycle(cycle.id, status="succeeded", outcomes={"triaged": 3}, namespace=ns)
    jm.create_collection("trades", fields=[("symbol", "string", {"indexed": True}),
                                           ("qty", "integer", {}), ("meta", "json", {}),
                                           ("ok", "boolean", {}), ("px", "real", {}),
                                           ("at", "timestamp", {})], namespace=ns)
    jm.add_field("trades", ("note", "string", {}), namespace=ns)
    jm.insert_rows("trades", [
        {"symbol": "ETH", "qty": 2**60 + 1, "meta": {"fee": 4.0, "l": [1]}, "ok": True,
         "px": 2.0, "at": datetime(2026, 11, 22, 7, 30, 0, 123456, tzinfo=UTC)},
        {"symbol": "BTC", "qty": 2, "ok": False, "note": "n"}], namespace=ns)
    jm.create_collection("empty", fields=[("k", "string", {"unique": True})], namespace=ns)


def reads(jm: Client, ns: str) -> dict[str, Any]:
    """Everything the API answers about a namespace."""
    out: dict[str, Any] = {}
    memories = list(jm.iter_memories(namespace=ns))
    out["memories"] = memories
    out["get_memory"] = [jm.get_memory(m.id, namespace=ns) for m in memories]
    sessions = list(jm.iter_sessions(namespace=ns))
    out["sessions"] = sessions
    out["get_session"] = [jm.get_session(s.id, namespace=ns) for s in sessions]
    out["messages"] = [list(jm.iter_messages(s.id, namespace=ns)) for s in sessions]
    out["session_events"] = [list(jm.iter_session_events(s.id, namespace=ns))
                             for s in sessions]
    events = list(jm.iter_events(namespace=ns))
    out["events"] = events
    out["get_event"] = [jm.get_event(e.id, namespace=ns) for e in events]
    out["snapshots"] = list(jm.iter_snapshots(namespace=ns))
    out["latest_snapshot"] = jm.get_latest_snapshot(namespace=ns)
    prefs = list(jm.iter_preferences(namespace=ns))
    out["preferences"] = prefs
    out["get_preference"] = [jm.get_preference(p.key, namespace=ns) for p in prefs]
    state = list(jm.iter_state(namespace=ns))
    out["state"] = state
    out["get_state"] = [jm.get_state(s.key, namespace=ns) for s in state]
    calls = list(jm.iter_tool_calls(namespace=ns))
    out["tool_calls"] = calls
    out["get_tool_call"] = [jm.get_tool_call(c.id, namespace=ns) for c in calls]
    out["planning_cycles"] = list(jm.iter_planning_cycles(namespace=ns))
    out["decisions"] = list(jm.iter_decisions(namespace=ns))
    collections = list(jm.iter_collections(namespace=ns))
    out["collections"] = collections
    out["get_collection"] = [jm.get_collection(c.name, namespace=ns) for c in collections]
    out["rows"] = [list(jm.iter_rows(c.name, namespace=ns)) for c in collections]
    out["search"] = jm.search_memories("espresso lunch", namespace=ns)
    out["vector"] = jm.search_memories("", mode="vector", embedding=[0.1, 0.3, 0.4],
                                       namespace=ns)
    out["search_messages"] = jm.search_messages("Lisbon", namespace=ns)
    out["search_messages_vector"] = jm.search_messages(
        "", mode="vector", embedding=[1.0, 0.0, 0.2], namespace=ns)
    out["search_events"] = jm.search_events("disk full", namespace=ns)
    return out


def table_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '%fts%' "
            "AND name NOT LIKE '%vector%' AND name NOT LIKE 'sqlite_%'")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


def filled_export(tmp_path: Path) -> tuple[dict[str, Any], str, int]:
    """Fill an SQLite daemon's namespaces; return their reads, its export and its revision."""
    source = Daemon(tmp_path / "source.db").start()
    try:
        with source.client() as jm:
            for ns in NAMESPACES:
                fill(jm, ns)
            before = {ns: reads(jm, ns) for ns in NAMESPACES}
            revision = jm.get_stats().revision
        exported = source.run_cli("export")  # while the daemon runs
        assert exported.returncode == 0, exported.stderr
    finally:
        assert source.stop() == 0
    return before, exported.stdout, revision


def test_export_import_round_trip(tmp_path: Path) -> None:
    before, exported_text, revision = filled_export(tmp_path)
    lines = exported_text.splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "jarvis-memory-export" and header["version"] == 1
    assert header["namespaces"] == sorted(NAMESPACES)
    kinds = {json.loads(line)["kind"] for line in lines[1:]}
    assert kinds == {"embedding_space", "memory", "session", "message", "session_event",
                     "event", "snapshot", "preference", "state", "tool_call",
                     "planning_cycle", "decision", "collection", "row"}
    memory = next(json.loads(line) for line in lines if '"kind":"memory"' in line)
    assert memory["attributes"] == {"seed": 2**62 + 1, "t": 4.0, "none": None, "z": 1,
                                    "a": [1, 2.5, "é"]}
    assert '"t":4.0' in lines[lines.index(next(x for x in lines if '"kind":"memory"' in x))]
    assert memory["restated_count"] == 1 and len(memory["embedding"]) == 3
    assert not any("api_tokens" in line or "secret" in line for line in lines)

    target = tmp_path / "target.db"
    imported = cli("import", "--db", str(target), stdin=exported_text)
    assert imported.returncode == 0, imported.stderr
    counts = table_counts(target)
    again = cli("import", "--db", str(target), stdin=exported_text)
    assert again.returncode == 0, again.stderr
    assert "imported 0 rows" in again.stdout
    assert table_counts(target) == counts  # idempotent

    copy = Daemon(target).start()
    try:
        with copy.client() as jm:
            after = {ns: reads(jm, ns) for ns in NAMESPACES}
            assert jm.get_stats().revision >= revision
            for ns in NAMESPACES:
                for name, value in before[ns].items():
                    assert after[ns][name] == value, name
            # The copy keeps working: ids continue past the imported ones.
            m = jm.add_memory("New after import", category="fact", source="user_explicit")
            assert m.id > max(x.id for x in before["default"]["memories"])
            assert m.revision > revision
    finally:
        assert copy.stop() == 0
    checked = cli("reindex", "--db", str(target))  # the indexes pass their integrity check
    assert checked.returncode == 0, checked.stderr


def test_export_one_namespace_and_bad_input(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "source.db").start()
    try:
        with d.client() as jm:
            fill(jm, "alpha")
            jm.add_memory("Only in beta", category="fact", source="user_explicit",
                          namespace="beta")
            jm.put_state("lock/short", "agent-b", ttl=1, namespace="alpha")
            time.sleep(1.2)  # expired: not exported
        exported = d.run_cli("export", "--namespace", "alpha")
        assert exported.returncode == 0, exported.stderr
    finally:
        assert d.stop() == 0
    lines = exported.stdout.splitlines()
    assert "lock/short" not in exported.stdout and "lock/far" in exported.stdout
    assert json.loads(lines[0])["namespaces"] == ["alpha"]
    assert all(json.loads(line)["namespace"] == "alpha" for line in lines[1:])

    target = tmp_path / "target.db"
    bad = [*lines[:5], '{"kind": "memory", "id": ', *lines[5:]]
    refused = cli("import", "--db", str(target), stdin="\n".join(bad) + "\n")
    assert refused.returncode == 2
    assert "line 6" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not target.exists() or table_counts(target).get("memories", 0) == 0

    # A row that conflicts with one present: one line, exit 2, nothing of the file written.
    conflicting = [json.loads(line) for line in lines]
    done = cli("import", "--db", str(target), stdin=exported.stdout)
    assert done.returncode == 0, done.stderr
    counts = table_counts(target)
    for row in conflicting[1:]:
        if row["kind"] == "preference":
            row["value"] = "changed"
            break
    conflicting.append({"kind": "decision", "id": 999, "namespace": "alpha", "cycle_id": None,
                        "reasoning": None, "decision": "new", "created_at": 1, "revision": 1})
    refused = cli("import", "--db", str(target),
                  stdin="".join(json.dumps(r) + "\n" for r in conflicting))
    assert refused.returncode == 2
    assert "preference" in refused.stderr and "differs" in refused.stderr
    assert table_counts(target) == counts


SEARCHES = ("search", "vector", "search_messages", "search_messages_vector", "search_events")


def hits(found: Any) -> list[int]:
    """A search's hits by id (scores are each backend's own)."""
    ids = []
    for hit in found:
        item = next(getattr(hit, kind) for kind in ("memory", "message", "event")
                    if getattr(hit, kind, None) is not None)
        ids.append(item.id)
    return sorted(ids)


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="moves data through PostgreSQL")
def test_sqlite_to_postgresql_to_sqlite_reads_the_same(tmp_path: Path,
                                                       postgres: Postgres) -> None:
    before, exported, _ = filled_export(tmp_path)
    url = postgres.new_database()
    imported = cli("import", "--db", url, stdin=exported)
    assert imported.returncode == 0, imported.stderr
    assert "secret" not in imported.stdout
    again = cli("import", "--db", url, stdin=exported)
    assert again.returncode == 0 and "imported 0 rows" in again.stdout, again.stderr

    pg = Daemon(url).start()
    try:
        with pg.client() as jm:
            on_pg = {ns: reads(jm, ns) for ns in NAMESPACES}
            for ns in NAMESPACES:
                for name, value in before[ns].items():
                    if name in SEARCHES:
                        assert hits(on_pg[ns][name]) == hits(value), name
                    else:
                        assert on_pg[ns][name] == value, name
            m = jm.add_memory("New on PostgreSQL", category="fact", source="user_explicit")
            assert m.id > max(x.id for x in before["default"]["memories"])
        back = pg.run_cli("export")  # while the daemon runs
        assert back.returncode == 0, back.stderr
    finally:
        assert pg.stop() == 0

    target = tmp_path / "back.db"
    returned = cli("import", "--db", str(target), stdin=back.stdout)
    assert returned.returncode == 0, returned.stderr
    copy = Daemon(target).start()
    try:
        with copy.client() as jm:
            after = {ns: reads(jm, ns) for ns in NAMESPACES}
            for ns in NAMESPACES:
                for name, value in before[ns].items():
                    if name == "memories" and ns == "default":
                        value = [*value]  # plus the one written on PostgreSQL, newest first
                        assert after[ns][name][1:] == value, name
                    elif name not in ("get_memory", "search"):
                        assert after[ns][name] == value, name
    finally:
        assert copy.stop() == 0
