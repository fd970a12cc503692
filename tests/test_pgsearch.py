"""Search on PostgreSQL (store/pgsearch.py): index consistency, the tokenizer, vector indexes,
large rows, namespaces, and the same results as SQLite."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_search import add, contents

from conftest import BACKENDS, Daemon, Postgres
from jarvis_memory import Client
from jarvis_memory_server.store import pgsearch
from jarvis_memory_server.store.postgres import PgConnection

EVAL = json.loads((Path(__file__).parent / "search_eval" / "memories.json").read_text())

needs_postgresql = pytest.mark.skipif(
    "postgresql" not in BACKENDS, reason="PostgreSQL is not among JARVIS_TEST_BACKENDS")
pytestmark = pytest.mark.postgresql_only("store/pgsearch.py's own tables and functions")


class Reader:
    """What pgsearch.SearchStore needs of a database: a reader."""

    kind = "postgresql"

    def __init__(self, url: str) -> None:
        self.conn = PgConnection(url)

    def thread_reader(self) -> PgConnection:
        return self.conn


def check_indexes(url: str) -> None:
    """Every row has its terms as jarvis_search_row() makes them; every embedding its vector."""
    conn = PgConnection(url)
    try:
        for table, columns, labels in [("memories", "subject, content, attributes", "ABC"),
                                       ("messages", "content", "A"),
                                       ("events", "summary, details", "AB")]:
            differ = conn.execute(
                f"SELECT count(*) FROM {table} t FULL JOIN {table}_search s "
                "ON s.namespace = t.namespace AND s.id = t.id "
                "LEFT JOIN LATERAL jarvis_search_row(left(md5(t.namespace), 8), "
                f"ARRAY[{', '.join(f't.{c}' for c in columns.split(', '))}], '{labels}') r "
                "ON true WHERE t.id IS NULL OR s.id IS NULL OR s.length <> r.length "
                "OR s.terms <> r.terms").fetchone()[0]
            assert differ == 0, table
        for kind, key in [("memory", "memory_id"), ("message", "message_id")]:
            differ = conn.execute(
                f"SELECT count(*) FROM {kind}_embeddings e FULL JOIN {kind}_vectors v "
                f"USING ({key}) WHERE e.{key} IS NULL OR v.{key} IS NULL").fetchone()[0]
            assert differ == 0, kind
    finally:
        conn.close()


@pytest.fixture
def store(daemon: Daemon) -> Iterator[pgsearch.SearchStore]:
    """A search store on the module daemon's PostgreSQL database."""
    reader = Reader(str(daemon.db_path))
    yield pgsearch.SearchStore(reader)  # type: ignore[arg-type]
    reader.conn.close()


# -- index consistency ----------------------------------------------------------------------



# -- the tokenizer --------------------------------------------------------------------------


# ASCII and not: letters that fold, decompose or change length, combining marks alone or
# after a letter, non-ASCII digits, NUL.
WORDS = st.text(st.sampled_from(
    "ab Ze9 -'\"*.,:\x00\t\nçéÉß\u0131\u0130\u03a3\u03c3日本\u0301\u0345\u093f٣ﬁ🙂x"),
    max_size=60)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(WORDS, st.text(max_size=60)))
def test_tokenize_reads_text_as_the_index_does(store: pgsearch.SearchStore, text: str) -> None:
    """tokenize()'s words (split here for ASCII text) are jarvis_words()'s, and exactly the
    terms that jarvis_search_row() indexes."""
    tokens = store.tokenize(text)
    body = text.replace("\x00", " ")
    conn = store._db.thread_reader()
    words = conn.execute("SELECT start, stop, term FROM jarvis_words(?)", (body,)).fetchall()
    assert tokens == pgsearch._byte_offsets(text, [(s, e, t) for s, e, t in words])
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(tokens))  # in order, apart
    length, terms = conn.execute(
        "SELECT length, array_to_string(tsvector_to_array(terms), ' ') "
        "FROM jarvis_search_row('p', ARRAY[?], 'A')", (body,)).fetchone()
    assert length == len(tokens)
    assert set(terms.split()) == {"p" + term for _, _, term in tokens}


def test_hostile_text_is_quoted_in_queries(jm: Client, namespace: str) -> None:
    add(jm, "It's a back\\slash and a quote' test", namespace)
    for query in ["it's", "back\\slash", "quote'", "'", "\\", "':*", "a:* & b", "!x"]:
        jm.search_memories(query, namespace=namespace)
    assert contents(jm.search_memories("slash", namespace=namespace)) == [
        "It's a back\\slash and a quote' test"]


# -- vectors --------------------------------------------------------------------------------


def test_vector_search_through_the_hnsw_index(jm: Client, namespace: str) -> None:
    """A namespace past EXACT_SCAN_ROWS vectors takes its candidates from the HNSW index."""
    rng = random.Random(5)
    vectors = [[rng.uniform(-1, 1) for _ in range(8)] for _ in range(pgsearch.EXACT_SCAN_ROWS + 500)]
    ids = []
    for start in range(0, len(vectors), 1000):
        ids += [r.id for r in jm.add_memories(
            [{"content": f"point {start + i}", "category": "pattern" if (start + i) % 10 else "fact",
              "source": "user_explicit", "embedding": v}
             for i, v in enumerate(vectors[start:start + 1000])], namespace=namespace)]

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
            sum(x * x for x in a) * sum(y * y for y in b))

    for query in ([rng.uniform(-1, 1) for _ in range(8)] for _ in range(5)):
        exact = sorted(range(len(vectors)), key=lambda i: -cosine(vectors[i], query))
        hits = jm.search_memories(mode="vector", embedding=query, namespace=namespace)
        assert [h.memory.id for h in hits][:5] == [ids[i] for i in exact[:5]]
        assert hits[0].score == pytest.approx(cosine(vectors[exact[0]], query), abs=1e-5)
        facts = jm.search_memories(mode="vector", embedding=query, category="fact",
                                   namespace=namespace)
        assert [h.memory.id for h in facts][:3] == [ids[i] for i in exact if i % 10 == 0][:3]


@pytest.mark.parametrize("dimension", [2048, 4096])
def test_dimensions_beyond_an_hnsw_vector_index(jm: Client, namespace: str, dimension: int) -> None:
    """Up to 4000 dimensions are indexed as half-precision vectors; beyond, scanned exactly."""
    near = add(jm, "near", namespace, embedding=[1.0] * dimension)
    add(jm, "far", namespace, embedding=[-1.0] * (dimension - 1) + [1.0])
    hits = jm.search_memories(mode="vector", embedding=[1.0] * (dimension - 1) + [0.5],
                              namespace=namespace)
    assert hits[0].memory.id == near.id
    session = jm.start_session(namespace=namespace)
    jm.append_message(session.id, role="user", content="hello", embedding=[0.5] * dimension,
                      namespace=namespace)
    assert len(jm.search_messages(mode="vector", embedding=[1.0] * dimension,
                                  namespace=namespace)) == 1


# -- large rows -----------------------------------------------------------------------------


def test_a_large_message_is_indexed_within_tsvectors_limits(jm: Client, namespace: str) -> None:
    session = jm.start_session(namespace=namespace)
    # 200 kB of distinct words: past LARGE_ROW_BYTES, well within the tsvector's limit.
    words = [f"w{i:x}z" for i in range(30_000)]
    jm.append_message(session.id, role="user", content=" ".join(words), namespace=namespace)
    for word in (words[0], words[-1]):
        assert len(jm.search_messages(word, namespace=namespace)) == 1
    # 1 MB of distinct words is more than a tsvector holds: its first words are indexed.
    rng = random.Random(3)
    huge = " ".join(f"{rng.getrandbits(40):x}q" for _ in range(80_000))[:1_000_000]
    jm.append_message(session.id, role="user", content=huge, namespace=namespace)
    assert len(jm.search_messages(huge.split()[0], namespace=namespace)) == 1


# -- namespaces and parity with SQLite ------------------------------------------------------


def eval_results(d: Daemon, crowd: int = 0) -> list[list[tuple[str, float, str]]]:
    """Hits of every eval query over memories and messages (a crowd in another namespace)."""
    texts = [m["content"] for m in EVAL["memories"]]
    with d.client() as jm:
        rows = [{"content": f"{texts[i % len(texts)]} {texts[(7 * i) % len(texts)]} crowd {i}",
                 "category": "fact", "source": "user_explicit"} for i in range(crowd)]
        for start in range(0, crowd, 1000):
            jm.add_memories(rows[start:start + 1000], namespace="crowd")
        jm.add_memories([{"content": m["content"], "category": m["category"],
                          "source": "user_explicit", "subject": m["subject"]}
                         for m in EVAL["memories"]], namespace="maya")
        session = jm.start_session("s", namespace="maya")
        for m in EVAL["memories"][:50]:
            jm.append_message(session.id, role="user", content=m["content"], namespace="maya")
        found: list[list[tuple[str, float, str]]] = []
        for q in [*(q["query"] for q in EVAL["queries"]), "coff*", '"oat milk"', "the"]:
            found.append([(h.memory.content, round(h.score, 9), h.snippet)
                          for h in jm.search_memories(q, limit=10, namespace="maya")])
            found.append([(h.message.content, round(h.score, 9), h.snippet)
                          for h in jm.search_messages(q, limit=10, namespace="maya")])
    return found


def run_daemon(target: Path | str, work: Any) -> Any:
    d = Daemon(target).start()
    try:
        return work(d)
    finally:
        assert d.stop() == 0


@needs_postgresql
def test_other_namespaces_never_change_a_namespaces_results_or_scores(
    postgres: Postgres,
) -> None:
    alone = run_daemon(postgres.new_database(), eval_results)
    assert sum(1 for hits in alone if hits) >= 80  # the comparison is about real hits
    crowded = run_daemon(postgres.new_database(), lambda d: eval_results(d, crowd=4000))
    assert crowded == alone


@needs_postgresql
def test_results_are_sqlites(postgres: Postgres, tmp_path: Path) -> None:
    """The same words, statistics and reranking: the same hits, scores and snippets."""
    on_sqlite = run_daemon(tmp_path / "jarvis.db", eval_results)
    assert run_daemon(postgres.new_database(), eval_results) == on_sqlite
