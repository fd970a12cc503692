"""Search: keyword, vector and hybrid, filters, index consistency, hostile queries, relevance."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apsw
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Daemon, kill_under_writes
from jarvis.memory.v1 import (
    event_pb2,
    event_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    search_pb2,
    session_pb2,
    session_pb2_grpc,
)
from jarvis_memory import Client, InvalidArgument
from jarvis_memory_server.store.sqlite import load_extensions

EVAL = json.loads((Path(__file__).parent / "search_eval" / "memories.json").read_text())


def add(jm: Client, content: str, namespace: str, **kwargs: object):  # type: ignore[no-untyped-def]
    kwargs.setdefault("category", "fact")
    kwargs.setdefault("source", "user_explicit")
    return jm.add_memory(content, namespace=namespace, **kwargs)  # type: ignore[arg-type]


def contents(hits) -> list[str]:  # type: ignore[no-untyped-def]
    return [h.memory.content for h in hits]


def open_checked(path: Path) -> apsw.Connection:
    """Open a daemon's file directly, with sqlite-vec and the tokenizer, to check its indexes."""
    conn = apsw.Connection(str(path))
    load_extensions(conn)
    return conn


def check_indexes(path: Path) -> None:
    """FTS5's own check that each full-text index holds exactly its table's rows."""
    conn = open_checked(path)
    for fts in ("memories_fts", "messages_fts", "events_fts"):
        conn.execute(f"INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)")
    # Every sign-index row has its exact vector, and the other way round.
    for (table,) in conn.execute(
        "SELECT name FROM sqlite_schema WHERE name LIKE 'memory_vector_signs_%' "
        "AND sql LIKE 'CREATE VIRTUAL TABLE%'"
    ).fetchall():
        signs = {r[0] for r in conn.execute(f"SELECT memory_id FROM {table}")}
        vectors = {r[0] for r in conn.execute("SELECT memory_id FROM memory_embeddings")}
        assert signs == vectors
    conn.close()


# -- keyword --------------------------------------------------------------------------------


def test_keyword_search_ranks_and_marks_matched_terms(jm: Client, namespace: str) -> None:
    add(jm, "Likes her coffee strong in the morning, never after 3pm", namespace,
        subject="coffee", category="preference")
    add(jm, "Coffee table in the living room is oak", namespace)
    add(jm, "Drinks green tea in the evening", namespace)
    hits = jm.search_memories("when does she like coffee", limit=5, namespace=namespace)
    assert contents(hits)[0].startswith("Likes her coffee")
    assert len(hits) == 2  # the tea memory shares no word but stop words
    assert hits[0].score > hits[1].score > 0
    assert "**Likes**" in hits[0].snippet and "**coffee**" in hits[0].snippet.lower()


def test_scores_are_positive_in_a_small_namespace(jm: Client, namespace: str) -> None:
    # With FTS5's own IDF a word in more than half the rows scores ~0 and ties everything.
    add(jm, "Coffee: a flat white", namespace)
    add(jm, "Coffee, coffee and more coffee before noon", namespace)
    hits = jm.search_memories("coffee", namespace=namespace)
    assert hits[0].memory.content == "Coffee, coffee and more coffee before noon"
    assert hits[0].score > hits[1].score > 0.1


def test_subject_weighs_more_than_content(jm: Client, namespace: str) -> None:
    add(jm, "Visited the museum with a guide who talked about painting", namespace)
    add(jm, "Paints with watercolours on Sundays", namespace, subject="painting")
    hits = jm.search_memories("painting", namespace=namespace)
    assert contents(hits)[0] == "Paints with watercolours on Sundays"


def test_phrase_prefix_and_proximity(jm: Client, namespace: str) -> None:
    add(jm, "The trip to Lisbon was planned with her sister", namespace)
    add(jm, "Her sister planned a trip; Lisbon was mentioned once in an unrelated email", namespace)
    add(jm, "Photographs from the wedding are on the NAS", namespace)
    phrase = jm.search_memories('"trip to Lisbon"', namespace=namespace)
    assert contents(phrase) == ["The trip to Lisbon was planned with her sister"]
    near = jm.search_memories("lisbon trip", namespace=namespace)
    assert contents(near)[0] == "The trip to Lisbon was planned with her sister"
    assert len(near) == 2
    prefix = jm.search_memories("photo*", namespace=namespace)
    assert contents(prefix) == ["Photographs from the wedding are on the NAS"]
    # Without the star, "photo" is a word of its own and matches nothing.
    assert jm.search_memories("photo", namespace=namespace) == []


def test_stemming_and_diacritics(jm: Client, namespace: str) -> None:
    add(jm, "Went running along the river in São Paulo", namespace)
    assert len(jm.search_memories("runs", namespace=namespace)) == 1
    assert len(jm.search_memories("sao paulo", namespace=namespace)) == 1


HOSTILE = [
    '"', '""', '"unbalanced', "NEAR(a b, 2)", "a AND OR NOT b", "*", "-coffee", "coffee:",
    "subject:coffee", "content : x", "( ( (", ")", "'; DROP TABLE memories; --",
    "SELECT * FROM memories_fts", "🙂☕ coffee 🙂", "\x00\x01", "^coffee", "{a b}", "a + b",
    "coffee*" * 50, "x" * 10_000, "word " * 2_000,
]


@pytest.mark.parametrize("query", HOSTILE, ids=range(len(HOSTILE)))
def test_any_text_is_a_valid_query(jm: Client, namespace: str, query: str) -> None:
    add(jm, "Likes coffee; drop by the table", namespace)
    hits = jm.search_memories(query, namespace=namespace)
    assert all(h.memory.namespace == namespace for h in hits)


def test_words_inside_hostile_text_are_still_searched(jm: Client, namespace: str) -> None:
    add(jm, "Likes coffee in the morning", namespace)
    for query in ["NEAR(coffee)", "-coffee", "coffee:", "(coffee OR", "☕coffee☕", "COFFEE AND"]:
        assert contents(jm.search_memories(query, namespace=namespace)) == [
            "Likes coffee in the morning"], query


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(min_size=1, max_size=300))
def test_arbitrary_text_never_fails(daemon: Daemon, query: str) -> None:
    with daemon.client() as jm:
        if not query.strip():
            with pytest.raises(InvalidArgument):
                jm.search_memories(query, namespace="hypothesis")
            return
        jm.search_memories(query, namespace="hypothesis")
        jm.search_messages(query, namespace="hypothesis")
        jm.search_events(query, namespace="hypothesis")


def test_search_never_crosses_namespaces(jm: Client, namespace: str) -> None:
    add(jm, "A secret about coffee", namespace + "-other")
    assert jm.search_memories("coffee", namespace=namespace) == []


def add_umbrella_crowd(jm: Client, namespace: str) -> None:
    """More rows holding "umbrella" than a keyword query may score (MATCH_BUDGET)."""
    from jarvis_memory_server.service.search import MATCH_BUDGET

    for start in range(0, MATCH_BUDGET + 100, 1000):
        jm.add_memories([{"content": f"umbrella crowd row {i}", "category": "fact",
                          "source": "user_explicit"} for i in range(start, start + 1000)],
                        namespace=namespace)


def test_a_word_in_very_many_rows_still_finds_an_older_namespaces_rows(
    jm: Client, namespace: str
) -> None:
    older = [add(jm, f"Umbrella note {i} of the small namespace", namespace).id for i in range(3)]
    crowd = namespace + "-crowd"
    add_umbrella_crowd(jm, crowd)  # newer rows, elsewhere, same word
    # The word is in more rows than a query may score: the namespace's newest are ranked.
    hits = jm.search_memories("umbrella", limit=10, namespace=namespace)
    assert sorted(h.memory.id for h in hits) == sorted(older)
    assert len(jm.search_memories("umbrella", limit=100, namespace=crowd)) == 100


def test_a_filter_finds_old_rows_behind_a_word_in_very_many_rows(
    jm: Client, namespace: str
) -> None:
    kept = [add(jm, f"Umbrella {i} kept in the attic", namespace, subject="attic").id
            for i in range(3)]
    add_umbrella_crowd(jm, namespace)  # newer rows, same word, another subject
    # None of the newest matches passes the filter: the search looks further back.
    hits = jm.search_memories("umbrella", subject="attic", namespace=namespace)
    assert sorted(h.memory.id for h in hits) == sorted(kept)
    unfiltered = jm.search_memories("umbrella", limit=100, namespace=namespace)
    assert len(unfiltered) == 100 and not set(kept) & {h.memory.id for h in unfiltered}


def test_word_frequencies_follow_a_bulk_load_at_once(jm: Client, namespace: str) -> None:
    rare = add(jm, "The quokka borrowed an umbrella", namespace).id
    add(jm, "An umbrella by the door", namespace)
    # Both words are rare now: both are searched, and both rows match.
    assert len(jm.search_memories("umbrella quokka", namespace=namespace)) == 2
    add_umbrella_crowd(jm, namespace)
    # Seconds later "umbrella" is in more rows than a query may score: only the rare word is
    # searched (a frequency remembered from before the load would score every umbrella row).
    hits = jm.search_memories("umbrella quokka", namespace=namespace)
    assert [h.memory.id for h in hits] == [rare]


def test_filters_combine_with_search(jm: Client, namespace: str) -> None:
    old = add(jm, "Coffee fact from long ago", namespace, category="fact")
    pref = add(jm, "Coffee preference: oat milk", namespace, category="preference",
               subject="coffee")
    stale = add(jm, "Coffee shop on the corner (closed)", namespace, source="agent_inferred")
    jm.update_memory(stale.id, stale=True, namespace=namespace)
    search = jm.search_memories
    assert contents(search("coffee", category="preference", namespace=namespace)) == [
        pref.content]
    assert contents(search("coffee", subject="coffee", namespace=namespace)) == [pref.content]
    assert contents(search("coffee", stale=True, namespace=namespace)) == [stale.content]
    assert sorted(contents(search("coffee", stale=False, namespace=namespace))) == sorted(
        [old.content, pref.content])
    assert contents(search("coffee", source="agent_inferred", namespace=namespace)) == [
        stale.content]
    after = search("coffee", created_after=pref.created_at, namespace=namespace)
    assert sorted(contents(after)) == sorted([pref.content, stale.content])
    before = search("coffee", created_before=pref.created_at, namespace=namespace)
    assert contents(before) == [old.content]


def test_limit(jm: Client, namespace: str) -> None:
    jm.add_memories([{"content": f"coffee note {i}", "category": "fact",
                      "source": "user_explicit"} for i in range(120)], namespace=namespace)
    assert len(jm.search_memories("coffee", namespace=namespace)) == 10
    assert len(jm.search_memories("coffee", limit=3, namespace=namespace)) == 3
    assert len(jm.search_memories("coffee", limit=1000, namespace=namespace)) == 100
    with pytest.raises(InvalidArgument, match="limit"):
        jm.search_memories("coffee", limit=-1, namespace=namespace)


def test_bad_requests_are_invalid_argument(stub: memory_pb2_grpc.MemoryServiceStub) -> None:
    cases = [
        (memory_pb2.SearchMemoriesRequest(query=""), "query"),
        (memory_pb2.SearchMemoriesRequest(query="   "), "query"),
        (memory_pb2.SearchMemoriesRequest(mode=search_pb2.SEARCH_MODE_VECTOR),
         "embedding"),
        (memory_pb2.SearchMemoriesRequest(query="x", mode=3), "embedding"),
        (memory_pb2.SearchMemoriesRequest(query="x", mode=9), "mode"),
        (memory_pb2.SearchMemoriesRequest(query="x", mode=2, embedding=[0.0, 0.0]), "embedding"),
        (memory_pb2.SearchMemoriesRequest(query="x", mode=2, embedding=[math.nan, 1.0]),
         "embedding"),
        (memory_pb2.SearchMemoriesRequest(query="x" * 70_000), "query"),
        (memory_pb2.SearchMemoriesRequest(query="x", category=7), "category"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.SearchMemories(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in (info.value.details() or ""), request


def test_bad_message_and_event_searches_are_invalid_argument(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.addr) as channel:
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        events = event_pb2_grpc.EventServiceStub(channel)
        cases = [
            (sessions.SearchMessages, session_pb2.SearchMessagesRequest(query=""), "query"),
            (sessions.SearchMessages, session_pb2.SearchMessagesRequest(query="x", limit=-5),
             "limit"),
            (sessions.SearchMessages, session_pb2.SearchMessagesRequest(query="x", role=9),
             "role"),
            (sessions.SearchMessages, session_pb2.SearchMessagesRequest(query="x", mode=9),
             "mode"),
            (sessions.SearchMessages,
             session_pb2.SearchMessagesRequest(mode=search_pb2.SEARCH_MODE_VECTOR), "embedding"),
            (sessions.SearchMessages, session_pb2.SearchMessagesRequest(
                mode=search_pb2.SEARCH_MODE_VECTOR, embedding=[math.inf]), "embedding"),
            (sessions.SearchMessages, session_pb2.SearchMessagesRequest(
                query="x", namespace="bad namespace!"), "namespace"),
            (events.SearchEvents, event_pb2.SearchEventsRequest(query=" "), "query"),
            (events.SearchEvents, event_pb2.SearchEventsRequest(query="x", limit=-1), "limit"),
            (events.SearchEvents, event_pb2.SearchEventsRequest(query="x", types=[9]), "types"),
            (events.SearchEvents, event_pb2.SearchEventsRequest(query="x", min_severity=9),
             "min_severity"),
            (events.SearchEvents, event_pb2.SearchEventsRequest(query="x", source=9), "source"),
        ]
        for call, request, field in cases:
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert field in (info.value.details() or ""), (request, info.value.details())


# -- index consistency ----------------------------------------------------------------------


def check_search_indexes(d: Daemon) -> None:
    """Check a stopped daemon's search indexes against their tables, on either backend."""
    if d.on_postgres:
        from test_pgsearch import check_indexes as check_postgres

        check_postgres(str(d.db_path))
    else:
        check_indexes(Path(d.db_path))


def test_index_follows_update_delete_and_restart(fresh_daemon: Daemon) -> None:
    with fresh_daemon.client() as jm:
        kept = add(jm, "Parks the bike in the garage", "default", embedding=[1.0, 0.0])
        changed = add(jm, "Prefers aisle seats on planes", "default", subject="travel")
        gone = add(jm, "Old phone number ends in 42", "default", embedding=[0.0, 1.0])
        jm.update_memory(changed.id, content="Prefers window seats on trains")
        jm.update_memory(kept.id, subject="bicycle")
        jm.delete_memory(gone.id)
        assert jm.search_memories("aisle planes") == []
        assert contents(jm.search_memories("window trains")) == ["Prefers window seats on trains"]
        assert contents(jm.search_memories("bicycle")) == [kept.content]
        assert jm.search_memories("phone number") == []
        add(jm, "parks the bike in the garage", "default")  # a restatement
        assert len(jm.search_memories("garage")) == 1
        session = jm.start_session("s1")
        jm.append_message(session.id, role="user", content="Book a table for two at eight",
                          embedding=[0.5, 0.5])
        event = jm.record_event(type="alert", severity="warning", source="monitor",
                                summary="Disk almost full",
                                details={"mount": "/var", "node": "nas"})
        jm.resolve_event(event.id, resolved_by="ops")
    assert fresh_daemon.stop() == 0
    check_search_indexes(fresh_daemon)
    fresh_daemon.start()
    with fresh_daemon.client() as jm:
        assert contents(jm.search_memories("window")) == ["Prefers window seats on trains"]
        assert [h.message.content for h in jm.search_messages("table for two")] == [
            "Book a table for two at eight"]
        hits = jm.search_events("nas disk")
        assert [h.event.summary for h in hits] == ["Disk almost full"]
        assert "**Disk**" in hits[0].snippet
        assert [h.memory.id for h in jm.search_memories(mode="vector", embedding=[1.0, 0.1])] == [
            kept.id]
        jm.end_session("s1")
    check_search_indexes(fresh_daemon)


def test_index_consistent_after_kill_9_mid_write(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()

    def write(jm: Client, n: int, i: int) -> str:
        content = f"writer{n} remembers item{i} zebra"
        jm.add_memories([{"content": content, "category": "fact", "source": "agent_inferred",
                          "embedding": [n + 1.0, i + 1.0]},
                         {"content": content + " twice", "category": "fact",
                          "source": "agent_inferred"}])
        return content

    acknowledged = kill_under_writes(d, write, enough=300)
    check_indexes(d.db_path)
    d.start()
    try:
        with d.client() as jm:
            for content in acknowledged[:: max(1, len(acknowledged) // 20)]:
                word = content.split()[0]
                assert any(h.memory.content == content
                           for h in jm.search_memories(f'"{word}" zebra', limit=100))
    finally:
        assert d.stop() == 0


def test_reindex_rebuilds_indexes(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()
    with d.client() as jm:
        add(jm, "Keeps the spare key under the blue pot", "default", embedding=[1.0, 0.0, 0.5])
    assert d.stop() == 0
    conn = open_checked(d.db_path)
    conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('delete-all')")
    conn.execute("DELETE FROM memory_vector_signs_3")
    conn.close()
    done = d.run_cli("reindex")
    assert done.returncode == 0, done.stderr
    assert "memories_fts" in done.stdout
    check_indexes(d.db_path)
    d.start()
    try:
        with d.client() as jm:
            assert len(jm.search_memories("spare key")) == 1
            assert len(jm.search_memories(mode="vector", embedding=[1.0, 0.0, 0.4])) == 1
    finally:
        assert d.stop() == 0


# -- vectors --------------------------------------------------------------------------------


def test_vector_search_orders_by_cosine_similarity(jm: Client, namespace: str) -> None:
    north = add(jm, "north", namespace, embedding=[0.0, 1.0, 0.0])
    east = add(jm, "east", namespace, embedding=[1.0, 0.0, 0.0])
    northeast = add(jm, "northeast", namespace, embedding=[1.0, 1.0, 0.0])
    add(jm, "no embedding", namespace)
    hits = jm.search_memories(mode="vector", embedding=[0.1, 1.0, 0.0], namespace=namespace)
    assert [h.memory.id for h in hits] == [north.id, northeast.id, east.id]
    assert hits[0].score == pytest.approx(1.0 / math.sqrt(1.01), abs=1e-6)
    assert hits[0].snippet == ""


def test_vector_search_with_filters_finds_rows_beyond_the_candidates(
    jm: Client, namespace: str
) -> None:
    # 400 memories right next to the query, then one "pattern" far from it: the sign index's
    # 200 candidates are all facts, so the filter must fall back to ranking every pattern.
    jm.add_memories([{"content": f"close {i}", "category": "fact", "source": "user_explicit",
                      "embedding": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0 + i / 1000]}
                     for i in range(400)], namespace=namespace)
    far = add(jm, "far pattern", namespace, category="pattern",
              embedding=[-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -0.5])
    hits = jm.search_memories(mode="vector", embedding=[1.0] * 8, category="pattern",
                              namespace=namespace)
    assert [h.memory.id for h in hits] == [far.id]


def test_embedding_dimension_is_fixed_per_namespace(jm: Client, namespace: str) -> None:
    add(jm, "first", namespace, embedding=[1.0, 2.0, 3.0])
    with pytest.raises(InvalidArgument, match="dimension 3") as info:
        add(jm, "second", namespace, embedding=[1.0, 2.0])
    assert info.value.reason == "EMBEDDING_DIMENSION_MISMATCH"
    assert jm.search_memories("second", namespace=namespace) == []  # nothing was written
    with pytest.raises(InvalidArgument, match="dimension 3"):
        jm.search_memories(mode="vector", embedding=[1.0] * 4, namespace=namespace)
    with pytest.raises(InvalidArgument, match=r"memories\[1\].embedding"):
        jm.add_memories([
            {"content": "a", "category": "fact", "source": "user_explicit", "embedding": [1.0] * 3},
            {"content": "b", "category": "fact", "source": "user_explicit", "embedding": [1.0] * 5},
        ], namespace=namespace)
    session = jm.start_session(namespace=namespace)
    with pytest.raises(InvalidArgument, match="dimension 3"):
        jm.append_message(session.id, role="user", content="hi", embedding=[1.0],
                          namespace=namespace)
    # Another namespace has its own dimension.
    add(jm, "other", namespace + "-b", embedding=[1.0] * 7)


def test_dedup_update_and_delete_keep_embeddings_in_step(jm: Client, namespace: str) -> None:
    memory = add(jm, "Walks the dog at noon", namespace, embedding=[1.0, 0.0])
    restated = add(jm, "walks the dog at noon", namespace, embedding=[0.0, 1.0])
    assert restated.deduplicated and restated.id == memory.id
    hit = jm.search_memories(mode="vector", embedding=[0.0, 1.0], namespace=namespace)[0]
    assert hit.score == pytest.approx(1.0)  # the restatement replaced the embedding
    updated = jm.update_memory(memory.id, embedding=[1.0, 1.0], namespace=namespace)
    assert updated.revision > restated.revision  # a recorded change, answered once committed
    hit = jm.search_memories(mode="vector", embedding=[1.0, 1.0], namespace=namespace)[0]
    assert hit.score == pytest.approx(1.0)
    jm.update_memory(memory.id, content="Walks the dog at one", namespace=namespace)
    assert jm.search_memories(mode="vector", embedding=[1.0, 1.0], namespace=namespace) == []
    other = add(jm, "Feeds the cat", namespace, embedding=[1.0, 0.5])
    jm.delete_memory(other.id, namespace=namespace)
    assert jm.search_memories(mode="vector", embedding=[1.0, 0.5], namespace=namespace) == []


def test_hybrid_fuses_both_rankings(jm: Client, namespace: str) -> None:
    # Keyword ranking for "peanut allergy": A (both words), then B (one word); C has none.
    # Vector ranking for the query embedding: C, then B, then A.
    a = add(jm, "Peanut allergy: carries an epipen, severe peanut allergy", namespace,
            embedding=[0.0, 0.0, 1.0])
    b = add(jm, "Mild allergy to cats", namespace, embedding=[0.6, 0.8, 0.0])
    c = add(jm, "Avoids satay and groundnut sauces at restaurants", namespace,
            embedding=[1.0, 0.0, 0.0])
    keyword = jm.search_memories("peanut allergy", namespace=namespace)
    assert [h.memory.id for h in keyword] == [a.id, b.id]
    vector = jm.search_memories(mode="vector", embedding=[1.0, 0.1, 0.0], namespace=namespace)
    assert [h.memory.id for h in vector] == [c.id, b.id, a.id]
    hybrid = jm.search_memories("peanut allergy", mode="hybrid", embedding=[1.0, 0.1, 0.0],
                                namespace=namespace)
    # B is second in both lists: 2/(60+2) = 0.03226 beats A's 1/61 + 1/63 = 0.03227? No:
    # A: 1/61 + 1/63 = 0.032266, B: 2/62 = 0.032258, C: 1/61 = 0.016393.
    assert [h.memory.id for h in hybrid] == [a.id, b.id, c.id]
    assert hybrid[0].score == pytest.approx(1 / 61 + 1 / 63)
    assert hybrid[1].score == pytest.approx(2 / 62)
    assert hybrid[2].score == pytest.approx(1 / 61)
    assert hybrid[0].snippet and not hybrid[2].snippet


def test_filters_apply_in_vector_and_hybrid_mode(jm: Client, namespace: str) -> None:
    add(jm, "tea fact", namespace, category="fact", embedding=[1.0, 0.0])
    pref = add(jm, "tea preference", namespace, category="preference", embedding=[0.0, 1.0])
    for mode in ("vector", "hybrid"):
        hits = jm.search_memories("tea", mode=mode, embedding=[1.0, 0.0],
                                  category="preference", namespace=namespace)
        assert [h.memory.id for h in hits] == [pref.id], mode


# -- messages and events --------------------------------------------------------------------


def test_search_messages_across_and_within_sessions(jm: Client, namespace: str) -> None:
    one = jm.start_session("trip", namespace=namespace)
    two = jm.start_session("other", namespace=namespace)
    jm.append_message(one.id, role="user", content="Plan the trip to Lisbon in May",
                      namespace=namespace, embedding=[1.0, 0.0])
    jm.append_message(one.id, role="assistant", content="Lisbon flights are cheapest on Tuesday",
                      namespace=namespace)
    jm.append_message(two.id, role="user", content="What about Lisbon hotels?",
                      namespace=namespace, embedding=[0.0, 1.0])
    hits = jm.search_messages("the trip to Lisbon", session_id=None, limit=10,
                              namespace=namespace)
    assert hits[0].message.content == "Plan the trip to Lisbon in May"
    assert len(hits) == 3
    within = jm.search_messages("lisbon", session_id="other", namespace=namespace)
    assert [h.message.session_id for h in within] == ["other"]
    by_role = jm.search_messages("lisbon", role="assistant", namespace=namespace)
    assert [h.message.content for h in by_role] == ["Lisbon flights are cheapest on Tuesday"]
    vector = jm.search_messages(mode="vector", embedding=[0.1, 1.0], namespace=namespace)
    assert vector[0].message.content == "What about Lisbon hotels?"


def test_search_events_with_filters(jm: Client, namespace: str) -> None:
    now = datetime.now(UTC)
    jm.record_event(type="alert", severity="critical", source="monitor", node="nas",
                    summary="RAID degraded", details={"disk": "sdb failed"}, namespace=namespace)
    ok = jm.record_event(type="status", severity="info", source="agent", node="nas",
                         summary="RAID rebuilt", namespace=namespace,
                         occurred_at=now - timedelta(hours=1))
    assert len(jm.search_events("raid", namespace=namespace)) == 2
    assert [h.event.id for h in jm.search_events("raid", types=["status"],
                                                  namespace=namespace)] == [ok.id]
    assert [h.event.summary for h in jm.search_events("raid", min_severity="error",
                                                       namespace=namespace)] == ["RAID degraded"]
    assert len(jm.search_events("sdb", namespace=namespace)) == 1  # details are indexed
    assert jm.search_events("raid", until=now - timedelta(hours=2), namespace=namespace) == []


# -- relevance ------------------------------------------------------------------------------


def evaluate(jm: Client, namespace: str, k: int) -> dict[str, float]:
    """Recall@k (share of relevant memories in the top k, averaged over queries) by kind."""
    keys = {}
    jm.add_memories([{"content": m["content"], "category": m["category"],
                      "source": "user_explicit", "subject": m["subject"]}
                     for m in EVAL["memories"]], namespace=namespace)
    by_content = {m.content: m.id for m in jm.iter_memories(namespace=namespace)}
    keys = {m["key"]: by_content[m["content"]] for m in EVAL["memories"]}
    recalls: dict[str, list[float]] = {"lexical": [], "paraphrase": []}
    for q in EVAL["queries"]:
        found = {h.memory.id for h in jm.search_memories(q["query"], limit=k, namespace=namespace)}
        relevant = {keys[key] for key in q["relevant"]}
        recalls[q["kind"]].append(len(found & relevant) / len(relevant))
    every = recalls["lexical"] + recalls["paraphrase"]
    return {kind: sum(r) / len(r) for kind, r in [*recalls.items(), ("all", every)]}


def test_recall_on_the_hand_written_evaluation(jm: Client, namespace: str) -> None:
    recall = evaluate(jm, namespace, k=5)
    print(f"recall@5 {recall}")
    # Keyword search finds what shares words with the query; paraphrases need embeddings.
    assert recall["lexical"] >= 0.75, recall


def test_other_namespaces_never_change_a_namespaces_results_or_scores(tmp_path: Path) -> None:
    """Two files hold the same namespace; one also holds a crowd of longer rows in another
    namespace, sharing the namespace's words. Every statistic a search ranks by (rows, document
    frequencies, mean length) is the namespace's own, so hits and scores are identical."""
    texts = [m["content"] for m in EVAL["memories"]]
    crowd = [{"content": f"{texts[i % len(texts)]} {texts[(7 * i) % len(texts)]} crowd {i}",
              "category": "fact", "source": "user_explicit"} for i in range(4000)]

    def results(with_crowd: bool) -> list[list[tuple[str, float, str]]]:
        d = Daemon(tmp_path / f"crowd-{with_crowd}.db").start()
        try:
            with d.client() as jm:
                for start in range(0, len(crowd) if with_crowd else 0, 1000):
                    jm.add_memories(crowd[start:start + 1000], namespace="crowd")
                jm.add_memories([{"content": m["content"], "category": m["category"],
                                  "source": "user_explicit", "subject": m["subject"]}
                                 for m in EVAL["memories"]], namespace="maya")
                return [[(h.memory.content, round(h.score, 9), h.snippet)
                         for h in jm.search_memories(q["query"], limit=10, namespace="maya")]
                        for q in EVAL["queries"]]
        finally:
            assert d.stop() == 0

    alone = results(with_crowd=False)
    assert sum(1 for hits in alone if hits) >= 40  # the comparison is about real hits
    assert results(with_crowd=True) == alone


def test_a_file_indexed_before_namespaced_terms_is_reindexed_at_upgrade(tmp_path: Path) -> None:
    from jarvis_memory_server.store import migrations

    path = tmp_path / "jarvis.db"
    conn = apsw.Connection(str(path))
    load_extensions(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    for step in migrations.MIGRATIONS[:9]:  # the schema whose index was shared by namespaces
        with conn:
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step.version}")
    with conn:
        for namespace, content in [("home", "Umbrella in the hallway"),
                                   ("car", "Umbrella under the seat")]:
            conn.execute(
                "INSERT INTO memories (namespace, content, content_hash, category, source, "
                "subject, stale, created_at, updated_at, restated_count, revision) "
                "VALUES (?, ?, randomblob(32), 'fact', 'user_explicit', '', 0, 1, 1, 0, 1)",
                (namespace, content),
            )
    conn.close()
    d = Daemon(path).start()
    with d.client() as jm:
        assert contents(jm.search_memories("umbrella", namespace="home")) == [
            "Umbrella in the hallway"]
        assert contents(jm.search_memories("umbrellas", namespace="car")) == [
            "Umbrella under the seat"]
    assert d.stop() == 0
    check_indexes(path)


def test_rows_changed_before_their_commit_are_indexed_as_committed(tmp_path: Path) -> None:
    """New rows are indexed at commit: a row inserted, updated or deleted again within the
    same transaction leaves exactly its committed text in the index."""
    from jarvis_memory_server.store.fulltext import index_pending
    from jarvis_memory_server.store.sqlite import Database

    db = Database(tmp_path / "jarvis.db")
    db.open()
    conn = db.conn
    insert = ("INSERT INTO memories (namespace, content, content_hash, category, source, "
              "subject, stale, created_at, updated_at, restated_count, revision) "
              "VALUES ('home', ?, randomblob(32), 'fact', 'user_explicit', '', 0, 1, 1, 0, 1)")
    with conn:
        conn.execute(insert, ("Umbrella in the hallway",))
        kept = conn.last_insert_rowid()
    with conn:
        conn.execute(insert, ("Raincoat in the car",))
        changed = conn.last_insert_rowid()
        conn.execute("UPDATE memories SET content = 'Raincoat in the attic' WHERE id = ?",
                     (changed,))
        conn.execute(insert, ("Boots by the door",))
        conn.execute("DELETE FROM memories WHERE id = ?", (conn.last_insert_rowid(),))
        conn.execute("UPDATE memories SET content = 'Umbrella in the cupboard' WHERE id = ?",
                     (kept,))
        index_pending(conn.cursor())
    db.close()
    d = Daemon(tmp_path / "jarvis.db").start()
    with d.client() as jm:
        search = jm.search_memories
        assert contents(search("attic", namespace="home")) == ["Raincoat in the attic"]
        assert contents(search("cupboard umbrella", namespace="home")) == [
            "Umbrella in the cupboard"]
        assert search("car", namespace="home") == search("hallway", namespace="home") == []
        assert search("boots", namespace="home") == []
    assert d.stop() == 0
    check_indexes(tmp_path / "jarvis.db")


def test_rows_another_program_added_are_indexed_when_the_daemon_opens(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()
    assert d.stop() == 0
    conn = open_checked(tmp_path / "jarvis.db")
    with conn:  # a plain SQL insert: the trigger notes the row, nothing indexes it yet
        conn.execute(
            "INSERT INTO memories (namespace, content, content_hash, category, source, "
            "subject, stale, created_at, updated_at, restated_count, revision) VALUES "
            "('home', 'Umbrella in the hallway', randomblob(32), 'fact', 'user_explicit', "
            "'', 0, 1, 1, 0, 1)")
    conn.close()
    d.start()
    with d.client() as jm:
        assert contents(jm.search_memories("umbrella", namespace="home")) == [
            "Umbrella in the hallway"]
    assert d.stop() == 0
    check_indexes(tmp_path / "jarvis.db")
    # The tokenizer gives FTS5's own functions word offsets too (the daemon does not use them).
    conn = open_checked(tmp_path / "jarvis.db")
    assert conn.execute(
        "SELECT highlight(memories_fts, 1, '[', ']') FROM memories_fts "
        "WHERE memories_fts MATCH fts5_locale('home', 'hallways')").fetchall() == [
        ("Umbrella in the [hallway]",)]
    conn.close()


def test_backup_and_restore_keep_the_search_indexes(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "jarvis.db").start()
    copy, restored = tmp_path / "copy.db", Daemon(tmp_path / "restored.db")
    try:
        with d.client() as jm:
            add(jm, "Spare key under the blue pot", "default", embedding=[1.0, 0.5, 0.25])
        backup = subprocess.run(
            [sys.executable, "-m", "jarvis_memory_server", "backup", "--out", str(copy),
             "--addr", d.addr], capture_output=True, text=True, timeout=60)
        assert backup.returncode == 0, backup.stderr
    finally:
        assert d.stop() == 0
    done = restored.run_cli("restore", str(copy))
    assert done.returncode == 0, done.stderr
    check_indexes(restored.db_path)
    restored.start()
    try:
        with restored.client() as jm:
            assert contents(jm.search_memories("spare key")) == ["Spare key under the blue pot"]
            hit = jm.search_memories(mode="vector", embedding=[1.0, 0.5, 0.25])[0]
            assert hit.score == pytest.approx(1.0)
    finally:
        assert restored.stop() == 0
