"""kill -9 cycles under mixed writers: every acknowledged write survives, and the file and its
full-text indexes stay consistent. `make test` runs a few cycles; `make crash` runs 32
(JARVIS_CRASH_CYCLES sets the number)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_search import check_indexes, open_checked

from conftest import Daemon, kill_under_writes
from jarvis_memory import Client

CYCLES = int(os.environ.get("JARVIS_CRASH_CYCLES", "3"))
WRITES_PER_CYCLE = 200

Ack = tuple[str, Any, Any]  # (kind, id or key, what must be read back)


def mixed_writes(cycle: int) -> Callable[[Client, int, int], Ack]:
    """A write of one of four kinds per call, so that each batch mixes tables and indexes."""

    def write(jm: Client, n: int, i: int) -> Ack:
        tag = f"c{cycle}w{n}i{i}"
        kind = (n + i) % 4
        if kind == 0:
            m = jm.add_memory(f"crash fact {tag} zebra", category="fact", source="agent_inferred",
                              attributes={"big": 2**60 + i, "ratio": 0.5})
            return "memory", m.id, m.content
        if kind == 1:
            entry = jm.put_state(f"crash/{tag}", {"n": n, "i": i, "big": 2**60 + i})
            return "state", entry.key, entry.value
        if kind == 2:
            e = jm.record_event(type="status", severity="info", source="agent",
                                summary=f"crash event {tag}", details={"i": i})
            return "event", e.id, e.summary
        ids = jm.insert_rows("crash", [{"tag": tag, "n": 2**60 + i}])
        return "row", ids[0], tag

    return write


def read_back(jm: Client, kind: str, key: Any) -> Any:
    if kind == "memory":
        return jm.get_memory(key).content
    if kind == "state":
        return jm.get_state(key).value
    if kind == "event":
        return jm.get_event(key).summary
    return jm.query_rows("crash", where=[("id", "eq", key)])[0]["tag"]


def test_acknowledged_mixed_writes_survive_kill_9_cycles(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()
    with d.client() as jm:
        jm.create_collection("crash", fields=[("tag", "string", {"indexed": True}),
                                              ("n", "integer", {})])
    acknowledged: list[Ack] = []
    for cycle in range(CYCLES):
        if cycle:
            d.start()
        acknowledged += kill_under_writes(d, mixed_writes(cycle), enough=WRITES_PER_CYCLE)
        # The file as the crash left it: consistent, indexes included.
        conn = open_checked(d.db_path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        check_indexes(d.db_path)
    assert len(acknowledged) >= CYCLES * WRITES_PER_CYCLE
    d.start()
    try:
        with d.client() as jm:
            lost = [(kind, key) for kind, key, wanted in acknowledged
                    if read_back(jm, kind, key) != wanted]
            assert lost == []
            hits = jm.search_events("crash event", limit=100)
            assert hits, "the full-text index answers after the crashes"
    finally:
        assert d.stop() == 0
