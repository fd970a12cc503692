"""SQL of search on PostgreSQL: tsvector full-text indexes and pgvector embeddings.

The searches of store/search.py (SQLite), with the same results: service/search.py reranks
the candidates of either store from their own text, with the namespace's own statistics.

**Words.** PostgreSQL splits and stems text with jarvis_words() (below): a word is a run of
letters and digits by Unicode (collation pg_c_utf8, whatever the database's locale), its term
lower-cased, without diacritics and Porter-stemmed (the stemmer of SQLite's index). tokenize()
reads text the same way, so a query word always means what an indexed word means: ASCII text,
the usual case, is split here with the same rule and only its words' stems are asked for (and
cached); other text is split by jarvis_words() itself. (pg_c_utf8 and normalize() need
PostgreSQL 17 or later and a UTF-8 database.)

**Terms qualified by their namespace.** Each searchable table has a table of index terms
(``<table>_search``), kept in step by triggers in the transaction of every write: each row's
tsvector, whose lexemes start with its namespace's prefix (8 hex digits of its MD5), and its
length in words. A GIN index over it gives each namespace posting lists of its own, so the rows
a query reads, and the document frequencies it ranks by, are the namespace's own, as with
SQLite's namespaced FTS5 terms (store/fulltext.py). Each column's positions carry a weight
label (A, B, C in index order), and columns are a position apart so that no phrase spans two.

**Vectors.** memory_embeddings and message_embeddings keep the exact float32 vectors, as on
SQLite; ``<kind>_vectors`` holds each as a pgvector ``vector`` with its namespace and dimension
(and goes with it, ON DELETE CASCADE). Each dimension in use has a partial HNSW index (cosine)
on ``embedding::vector(N) WHERE dimension = N``, made when a namespace first fixes it. Its
nearest vectors are the candidates, ranked then by exact cosine distance; a small namespace is
scanned exactly instead. Reads run on the calling thread's own connection.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jarvis_memory_server.store.backend import Database
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.fulltext import INDEXED_COLUMNS
from jarvis_memory_server.store.search import (
    EVENTS,
    LENGTH_SAMPLE,
    MEMORIES,
    MESSAGES,
    SearchIndex,
    SearchStoreBase,
    dimension_of,
)
from jarvis_memory_server.store.writes import WriteTxn

# The characters of a namespace's prefix on its lexemes (hex digits of its MD5). A collision
# of two namespaces costs a query the other's postings only: every query also names its rows'
# namespace.
PREFIX_DIGITS = 8

# tsvector's limits: lexemes of at most 2046 bytes, about 1 MiB in all (lexemes and 2-byte
# positions). A row's words past MAX_TERMS_BYTES (a message can hold 1 MiB of text) are not
# indexed: only rows of more than LARGE_ROW_BYTES of text can reach it (a word's term is at
# most 5 times its bytes, with 13 more bytes per word), so only they pay for counting.
MAX_LEXEME_BYTES = 2046
MAX_TERMS_BYTES = 1_000_000
LARGE_ROW_BYTES = 80_000

# BM25 parameters of the candidates' ranking (those of service/search.py).
BM25_K1 = 1.2
BM25_B = 0.75
# ts_rank() of one occurrence of a word is its label's weight over this (pi^2 / 6, the limit
# of the sum of 1 / n^2 by which it weighs repeats).
RANK_SCALE = 1.64493406685

# pgvector's HNSW indexes vectors of up to 2000 dimensions, and half-precision ones of up to
# 4000; beyond that a namespace is always scanned exactly.
MAX_VECTOR_INDEX = 2000
MAX_HALFVEC_INDEX = 4000
# A namespace with at most this many vectors is scanned exactly (a few ms) rather than through
# the HNSW index, which would wade through other namespaces' vectors of the same dimension.
EXACT_SCAN_ROWS = 2000
# hnsw.ef_search: at least this, and at most pgvector's maximum (iterative scans go further).
MIN_EF_SEARCH = 40
MAX_EF_SEARCH = 1000

# Distinct words whose stems are cached (a word's stem never changes).
MAX_CACHED_STEMS = 200_000

# A word: a letter or digit, then letters, digits and combining diacritics. In ASCII text
# that is a run of [A-Za-z0-9] (_ASCII_WORD), which tokenize() relies on.
_WORD = r"[[:alnum:]][[:alnum:]\u0300-\u036f]*"
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")
# A term of the FTS5 expression service/search.py builds: a quoted string, maybe a prefix.
_TERM = re.compile(r'"((?:[^"]|"")*)"( \*)?')


def _stemmed(word: str) -> str:
    """SQL: the stem of a folded word (as SQLite's porter: not under 3 bytes or over 64)."""
    return (f"CASE WHEN octet_length({word}) BETWEEN 3 AND 64 "
            f"THEN (ts_lexize('jarvis_porter', {word}))[1] ELSE {word} END")


def _term(word: str) -> str:
    """SQL: the term of a word (NULL when none is left): jarvis_term(), inline for ASCII."""
    return (f"CASE WHEN octet_length({word}) <> length({word}) THEN jarvis_term({word}) "
            f"ELSE nullif({_stemmed(f'lower({word} COLLATE pg_c_utf8)')}, '') END")


# Each word of a row's columns: its term, position and column label. Positions of a column
# start after the characters of those before it, so columns are at least a position apart.
_ROW_WORDS = (
    f"SELECT {_term('x.m[1]')} AS term, c.base + x.n AS pos, "
    "substr(labels, c.i::integer, 1) AS label FROM (SELECT b.body, b.i, "
    "sum(coalesce(length(b.body), 0) + 1) OVER (ORDER BY b.i) - coalesce(length(b.body), 0) "
    "- 1 AS base FROM unnest(bodies) WITH ORDINALITY AS b(body, i)) c, "
    f"regexp_matches(c.body COLLATE pg_c_utf8, '{_WORD}', 'g') WITH ORDINALITY AS x(m, n) "
    "OFFSET 0"  # each term computed once
)
# A word's entry in tsvector's text form: the term with the prefix, quoted, at its position.
_ENTRY = (
    f"CASE WHEN octet_length(w.term) <= {MAX_LEXEME_BYTES} - octet_length(prefix) "
    r"THEN '''' || replace(replace(prefix || w.term, '\', '\\'), '''', '''''') || ''':' "
    "|| least(w.pos, 16383) || w.label END"
)
_LARGE = f"octet_length(array_to_string(bodies, '')) > {LARGE_ROW_BYTES}"

_FUNCTIONS = [
    # Porter's stemmer, as SQLite's index uses; no stop words (the service drops them).
    "CREATE TEXT SEARCH DICTIONARY jarvis_porter (TEMPLATE = snowball, LANGUAGE = porter)",
    # The term of a word: lower case (Unicode's), without diacritics, stemmed.
    "CREATE FUNCTION jarvis_term(word text) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE "
    f"RETURN (SELECT nullif({_stemmed('f.w')}, '') FROM (SELECT lower(regexp_replace("
    r"normalize(word, NFD), '[\u0300-\u036f]+', '', 'g') COLLATE pg_c_utf8) AS w) f)",
    # Each word of a text that has a term, in order, with its first and last character + 1.
    "CREATE FUNCTION jarvis_words(body text) RETURNS TABLE (start bigint, stop bigint, "
    "term text) LANGUAGE sql STABLE STRICT PARALLEL SAFE BEGIN ATOMIC "
    "SELECT w.start, w.start + length(w.word), w.term FROM ("
    f"SELECT p.start, p.word, {_term('p.word')} AS term FROM ("
    "SELECT m[2] AS word, sum(length(m[1])) OVER (ORDER BY n) - length(m[1]) AS start "
    f"FROM regexp_matches(body COLLATE pg_c_utf8, '(({_WORD})|[^[:alnum:]]+)', 'g') "
    "WITH ORDINALITY AS r(m, n)) p WHERE p.word IS NOT NULL OFFSET 0) w "
    "WHERE w.term IS NOT NULL ORDER BY w.start; END",
    # A row's count of words with a term, and its tsvector (tsvector's text form merges the
    # entries of a term). A large row counts the bytes its entries take, to stop in time.
    "CREATE FUNCTION jarvis_search_row(prefix text, bodies text[], labels text) "
    "RETURNS TABLE (length integer, terms tsvector) LANGUAGE sql STABLE PARALLEL SAFE "
    "BEGIN ATOMIC "
    f"SELECT count(w.term)::integer, coalesce(string_agg({_ENTRY}, ' '), '')::tsvector "
    f"FROM ({_ROW_WORDS}) w HAVING NOT {_LARGE} UNION ALL "
    "SELECT count(w.term)::integer, coalesce(string_agg(CASE WHEN w.total <= "
    f"{MAX_TERMS_BYTES} THEN {_ENTRY} END, ' '), '')::tsvector FROM (SELECT v.*, "
    "sum(octet_length(v.term) + octet_length(prefix) + 5) OVER (ORDER BY v.pos) AS total "
    f"FROM ({_ROW_WORDS}) v) w HAVING {_LARGE}; END",
]


@dataclass(frozen=True)
class _Text:
    """The full-text index of one table on PostgreSQL."""

    terms: str  # the table of each row's terms
    labels: str  # the tsvector weight label of each indexed column, in index order
    filters: dict[str, str]  # SearchIndex.filters, in PostgreSQL's dialect


def _text(index: SearchIndex, **filters: str) -> _Text:
    return _Text(f"{index.table}_search", "ABC"[:len(index.weights)],
                 {**index.filters, **filters})


_TEXT = {
    MEMORIES.kind: _text(MEMORIES),
    MESSAGES.kind: _text(MESSAGES),
    EVENTS.kind: _text(
        EVENTS, types="t.type IN (SELECT json_array_elements_text(CAST(:types AS json)))"),
}

# Filters bound as numbers: booleans are SMALLINT here.
_BOOLEANS = ("stale", "resolved")


def vectors_table(index: SearchIndex) -> str:
    """The table of an index's vectors as pgvector values."""
    return f"{index.kind}_vectors"


def _vector_index(index: SearchIndex, dimension: int) -> str:
    return f"{vectors_table(index)}_{dimension}"


def _indexed_type(dimension: int) -> str | None:
    """The type an HNSW index of this dimension is on (None: too many dimensions for one)."""
    if dimension <= MAX_VECTOR_INDEX:
        return f"vector({dimension})"
    if dimension <= MAX_HALFVEC_INDEX:
        return f"halfvec({dimension})"
    return None


def schema_statements() -> list[str]:
    """DDL of search on PostgreSQL: functions, term tables and their triggers, vector tables."""
    statements = ["CREATE EXTENSION IF NOT EXISTS vector", *_FUNCTIONS]
    for index in (MEMORIES, MESSAGES, EVENTS):
        text, table = _TEXT[index.kind], index.table
        columns = INDEXED_COLUMNS[table]
        values = ", ".join(f"NEW.{column}" for column in columns)
        statements += [
            f"CREATE TABLE {text.terms} (namespace TEXT NOT NULL, id BIGINT NOT NULL, "
            "length INTEGER NOT NULL, terms TSVECTOR NOT NULL, PRIMARY KEY (namespace, id))",
            f"CREATE INDEX {text.terms}_terms ON {text.terms} USING gin (terms)",
            # A generic plan: a custom one (planned again at every row) folds the row's text
            # in, prunes a branch of jarvis_search_row and looks cheaper, but costs more.
            f"CREATE FUNCTION {text.terms}_write() RETURNS trigger LANGUAGE plpgsql "
            "SET plan_cache_mode = force_generic_plan AS $$ "
            f"BEGIN INSERT INTO {text.terms} (namespace, id, length, terms) "
            "SELECT NEW.namespace, NEW.id, r.length, r.terms FROM jarvis_search_row("
            f"left(md5(NEW.namespace), {PREFIX_DIGITS}), ARRAY[{values}], '{text.labels}') r "
            "ON CONFLICT (namespace, id) DO UPDATE SET length = excluded.length, "
            "terms = excluded.terms; RETURN NULL; END $$",
            f"CREATE FUNCTION {text.terms}_delete() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN DELETE FROM {text.terms} WHERE namespace = OLD.namespace AND id = OLD.id; "
            "RETURN NULL; END $$",
            f"CREATE TRIGGER {text.terms}_write AFTER INSERT OR UPDATE OF {', '.join(columns)} "
            f"ON {table} FOR EACH ROW EXECUTE FUNCTION {text.terms}_write()",
            f"CREATE TRIGGER {text.terms}_delete AFTER DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {text.terms}_delete()",
        ]
    for index in (MEMORIES, MESSAGES):
        vectors = vectors_table(index)
        statements += [
            f"CREATE TABLE {vectors} ({index.embedding_key} BIGINT PRIMARY KEY REFERENCES "
            f"{index.embeddings} ({index.embedding_key}) ON DELETE CASCADE, "
            "namespace TEXT NOT NULL, dimension INTEGER NOT NULL, embedding vector NOT NULL)",
            f"CREATE INDEX {vectors}_namespace ON {vectors} (namespace)",
        ]
    return statements


def namespace_prefix(namespace: str) -> str:
    """The prefix of a namespace's lexemes (as jarvis_search_row's callers compute it)."""
    return hashlib.md5(namespace.encode()).hexdigest()[:PREFIX_DIGITS]


def lexeme_query(lexeme: str, prefix_match: bool = False) -> str:
    """A lexeme as a tsquery operand: quoted, so nothing in it is an operator."""
    quoted = "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"
    return quoted + ":*" if prefix_match else quoted


def vector_literal(vector: bytes) -> str:
    """A packed float32 vector as pgvector's text (each value's shortest exact repr)."""
    return "[" + ",".join(map(repr, array("f", vector).tolist())) + "]"


def inverse_frequency(rows: int, frequency: int) -> float:
    """BM25's IDF in the form that stays positive (as service/search.py ranks)."""
    return math.log(1.0 + (rows - frequency + 0.5) / (frequency + 0.5))


def _byte_offsets(text: str, words: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Words at character offsets as words at byte offsets of the UTF-8 text."""
    if text.isascii():
        return list(words)
    found = []
    position = offset = 0
    for start, stop, term in words:
        offset += len(text[position:start].encode())
        first = offset
        offset += len(text[start:stop].encode())
        position = stop
        found.append((first, offset, term))
    return found


class SearchStore(SearchStoreBase[Database]):
    """Queries of the full-text indexes and the embeddings, on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._stems: dict[str, str | None] = {}  # lower-case ASCII word -> term (None: none)
        # Words read by this thread's last keyword(), for the reranking that follows it.
        self._recent = threading.local()

    # -- text ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[tuple[int, int, str]]:
        """Split text as the indexes do: (start byte, end byte, stemmed token) of each word."""
        recent: dict[str, list[tuple[int, int, str]]] | None = getattr(
            self._recent, "words", None)
        if recent is not None and text in recent:
            return recent[text]
        return self._tokenize_all([text])[0]

    def _tokenize_all(self, texts: Sequence[str]) -> list[list[tuple[int, int, str]]]:
        """tokenize() of many texts, in at most two queries."""
        ascii_words = {i: [(m.start(), m.end(), m.group().lower())
                           for m in _ASCII_WORD.finditer(text)]
                       for i, text in enumerate(texts) if text.isascii()}
        stems = self._stem({word for words in ascii_words.values() for _, _, word in words})
        others = [i for i in range(len(texts)) if i not in ascii_words]
        split: dict[int, list[tuple[int, int, str]]] = {i: [] for i in others}
        if others:
            # NUL cannot be sent; it separates words like any other control character.
            bodies = [texts[i].replace("\x00", " ") for i in others]
            with storage_errors():
                rows = self._db.thread_reader().execute(
                    "SELECT b.i, w.start, w.stop, w.term FROM unnest(CAST(:bodies AS text[])) "
                    "WITH ORDINALITY AS b(body, i), jarvis_words(b.body) AS w "
                    "ORDER BY b.i, w.start", {"bodies": bodies}).fetchall()
            for i, start, stop, term in rows:
                split[others[int(i) - 1]].append((int(start), int(stop), str(term)))
        found = []
        for i, text in enumerate(texts):
            if i in ascii_words:
                found.append([(start, end, term) for start, end, word in ascii_words[i]
                              if (term := stems[word]) is not None])
            else:
                found.append(_byte_offsets(text, split[i]))
        return found

    def _stem(self, words: set[str]) -> dict[str, str | None]:
        """The terms of lower-case ASCII words (None: the word has none), cached."""
        cached = self._stems
        found = {word: cached[word] for word in words if word in cached}
        missing = [word for word in words if word not in found]
        if missing:
            with storage_errors():
                rows = self._db.thread_reader().execute(
                    "SELECT w, jarvis_term(w) FROM unnest(CAST(:words AS text[])) AS w",
                    {"words": missing}).fetchall()
            found.update((str(word), term) for word, term in rows)
            if len(cached) + len(rows) > MAX_CACHED_STEMS:
                cached = self._stems = {}
            cached.update((str(word), term) for word, term in rows)
        return found

    def doc_frequency(self, index: SearchIndex, namespace: str, token: str, prefix: bool) -> int:
        """How many of a namespace's rows hold the (stemmed) token, or any token it prefixes.

        Cached a while. Lexemes carry their namespace's prefix, so this reads the
        namespace's own posting list.
        """
        terms = _TEXT[index.kind].terms
        lexeme = namespace_prefix(namespace) + token
        if len(lexeme.encode()) > MAX_LEXEME_BYTES:
            return 0  # too long for an index term
        query = lexeme_query(lexeme, prefix)
        sql = (f"SELECT count(*) FROM {terms} WHERE terms @@ CAST(:query AS tsquery) "
               "AND namespace = :namespace")

        def count() -> int:
            found: Any = self._db.thread_reader().execute(
                sql, {"query": query, "namespace": namespace}).fetchone()
            return int(found[0])

        return int(self._statistic(index, (namespace, query), count))

    def namespace_statistics(self, index: SearchIndex, namespace: str) -> tuple[int, float]:
        """A namespace's rows in an index, and their mean length in words (cached a while).

        The mean is over the newest LENGTH_SAMPLE rows.
        """
        terms = _TEXT[index.kind].terms

        def read() -> tuple[int, float]:
            found: Any = self._db.thread_reader().execute(
                f"SELECT count(*), (SELECT avg(r.length) FROM (SELECT length FROM {terms} "
                f"WHERE namespace = :namespace ORDER BY id DESC LIMIT {LENGTH_SAMPLE}) r) "
                f"FROM {terms} WHERE namespace = :namespace", {"namespace": namespace},
            ).fetchone()
            return int(found[0]), float(found[1] or 0.0)

        statistics: tuple[int, float] = self._statistic(index, namespace, read)
        return statistics


    def _terms(self, match: str) -> list[tuple[tuple[str, ...], bool]]:
        """The terms of an FTS5 expression of service/search.py: (tokens, prefix) each."""
        found = [(quoted.replace('""', '"'), bool(star)) for quoted, star in _TERM.findall(match)]
        tokens = self._tokenize_all([words for words, _ in found])
        return [(tuple(token for _, _, token in words), star)
                for words, (_, star) in zip(tokens, found, strict=True) if words]

    def keyword(
        self,
        index: SearchIndex,
        namespace: str,
        match: str,
        filters: dict[str, Any],
        *,
        newest: int | None,
        limit: int,
    ) -> list[tuple[tuple[Any, ...], float]]:
        """Return up to ``limit`` (row, bm25 score) best first; a higher score is better.

        ``match`` is the FTS5 expression service/search.py builds (quoted strings, maybe with
        a prefix star, OR-ed): it is read back into terms, and the tsquery is made of quoted
        lexemes only. ``newest``, when given, ranks only the newest that many matching rows
        of the namespace. With filters, the newest matches are filtered first; when fewer
        than ``limit`` pass, the newest matches that pass are ranked instead, however far
        back they lie.

        The score is BM25 with the service's IDF from the namespace's statistics (a phrase's
        words each scored with the phrase's). A word's weighted count in a row comes from
        ts_rank(), 40 times cheaper than unnest() of the row's tsvector: with each label's
        weight divided by the largest, one occurrence ranks w / largest / RANK_SCALE, so the
        rank times largest * RANK_SCALE counts it w, as FTS5's bm25() does; repeats count a
        little less (1 / n^2 each), which only picks candidates: the service scores them.
        """
        terms = self._terms(match)
        if not terms:
            return []
        plan = "all" if newest is None else "newest"
        if newest is not None and filters:
            found = self._keyword(index, namespace, terms, filters, "newest then filter",
                                  newest, limit)
            if len(found) >= limit:
                return found
        return self._keyword(index, namespace, terms, filters, plan, newest, limit)

    def _keyword(
        self, index: SearchIndex, namespace: str, terms: list[tuple[tuple[str, ...], bool]],
        filters: dict[str, Any], plan: str, newest: int | None, limit: int,
    ) -> list[tuple[tuple[Any, ...], float]]:
        text = _TEXT[index.kind]
        words = sum(len(tokens) for tokens, _ in terms)
        shape = ("keyword", index.kind, tuple(sorted(filters)), plan, words)
        sql = self._sql.get(shape)
        if sql is None:
            matching = f"SELECT x.id, x.length, x.terms FROM {text.terms} x"
            where = "x.namespace = :namespace AND x.terms @@ CAST(:query AS tsquery)"
            passing = " AND ".join(text.filters[name] for name in sorted(filters)) or "true"

            def rows_of(key: str) -> str:
                return f" JOIN {index.table} t ON t.id = {key} {index.joins}"

            newest_first = " ORDER BY x.id DESC LIMIT :newest"
            if plan == "newest then filter":
                source = f"({matching} WHERE {where}{newest_first}) f{rows_of('f.id')}"
            else:
                if filters:
                    matching += rows_of("x.id")
                    where += f" AND {passing}"
                source = f"({matching} WHERE {where}{newest_first if plan == 'newest' else ''}) f"
                passing = "true"
            # ts_rank()'s weights are D, C, B, A; the index's columns are labelled A, B, C.
            largest = max(index.weights)
            weights = [0.0, *reversed([w / largest for w in index.weights])]
            weights = [0.0] * (4 - len(weights)) + weights
            scale = RANK_SCALE * largest
            counts = ", ".join(
                f"ts_rank('{{{','.join(map(str, weights))}}}', f.terms, "
                f"CAST(:word{i} AS tsquery)) * {scale} AS n{i}" for i in range(words))
            score = " + ".join(f":idf{i} * r.n{i} * {BM25_K1 + 1.0} / (r.n{i} + r.norm)"
                               for i in range(words))
            sql = self._sql[shape] = (
                f"SELECT f.id, {score} AS score FROM {source} CROSS JOIN LATERAL (SELECT "
                f"{counts}, {BM25_K1} * (1 - {BM25_B} + {BM25_B} * f.length / :average) AS norm "
                f"OFFSET 0) r WHERE {passing} "  # OFFSET 0: each rank computed once
                "ORDER BY score DESC, f.id DESC LIMIT :limit"
            )
        rows, average = self.namespace_statistics(index, namespace)
        qualifier = namespace_prefix(namespace)
        params: dict[str, Any] = {
            **{k: int(v) if k in _BOOLEANS else v for k, v in filters.items()},
            "namespace": namespace, "newest": newest, "limit": limit,
            "average": average or 1.0,
        }
        operands, word = [], 0
        for tokens, star in terms:
            # A phrase is no more frequent than its rarest word (as the service counts).
            frequency = min(self.doc_frequency(index, namespace, token, star) for token in tokens)
            idf = inverse_frequency(rows, frequency)
            phrase = []
            for number, token in enumerate(tokens):
                lexeme = lexeme_query(qualifier + token, star and number == len(tokens) - 1)
                params[f"word{word}"], params[f"idf{word}"] = lexeme, idf
                phrase.append(lexeme)
                word += 1
            operands.append("(" + " <-> ".join(phrase) + ")")
        params["query"] = " | ".join(operands)
        with storage_errors():
            ranked: list[Any] = self._db.thread_reader().execute(sql, params).fetchall()
        found = self.rows(index, namespace, [int(row_id) for row_id, _ in ranked])
        # The service reranks from the rows' words: read them all now, in one query.
        texts = {row[i] for row in found.values() for i in index.text_columns if row[i]}
        self._recent.words = dict(zip(texts, self._tokenize_all(list(texts)), strict=True))
        return [(found[int(row_id)], float(score)) for row_id, score in ranked
                if int(row_id) in found]

    def rows(
        self, index: SearchIndex, namespace: str, ids: Sequence[int]
    ) -> dict[int, tuple[Any, ...]]:
        """Read a namespace's rows by id (as tuples of the index's row type)."""
        sql = (f"SELECT {index.select} FROM {index.table} t {index.joins} "
               "WHERE t.namespace = :namespace AND t.id = ANY(CAST(:ids AS bigint[]))")
        with storage_errors():
            found = self._db.thread_reader().execute(
                sql, {"ids": list(ids), "namespace": namespace})
            return {int(r[0]): tuple(r) for r in found}

    # -- vectors ---------------------------------------------------------------------------



    def fix_dimension(self, txn: WriteTxn, namespace: str, dimension: int) -> None:
        """Record a namespace's first embedding dimension; index the dimension if new."""
        cursor = txn.cursor
        self._insert_dimension(cursor, namespace, dimension)
        indexed = _indexed_type(dimension)
        if indexed is None:
            return
        operators = indexed.split("(")[0] + "_cosine_ops"
        for index in (MEMORIES, MESSAGES):
            # Write batches are serial (an advisory lock), so no other daemon makes it meanwhile.
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {_vector_index(index, dimension)} "
                f"ON {vectors_table(index)} USING hnsw ((embedding::{indexed}) {operators}) "
                f"WHERE dimension = {dimension}"
            )

    def put_embedding(
        self, txn: WriteTxn, index: SearchIndex, namespace: str, row_id: int, vector: bytes
    ) -> None:
        """Store (or replace) a row's embedding; its dimension must already be fixed."""
        key = index.embedding_key
        txn.cursor.execute(
            f"INSERT INTO {index.embeddings} ({key}, vector) VALUES (:id, :vector) "
            f"ON CONFLICT ({key}) DO UPDATE SET vector = excluded.vector",
            {"id": row_id, "vector": vector},
        )
        txn.cursor.execute(
            f"INSERT INTO {vectors_table(index)} ({key}, namespace, dimension, embedding) "
            "VALUES (:id, :namespace, :dimension, CAST(:embedding AS vector)) "
            f"ON CONFLICT ({key}) DO UPDATE SET embedding = excluded.embedding, "
            "dimension = excluded.dimension",
            {"id": row_id, "namespace": namespace, "dimension": dimension_of(vector),
             "embedding": vector_literal(vector)},
        )

    def delete_embedding(self, txn: WriteTxn, index: SearchIndex, row_id: int) -> None:
        """Remove a row's embedding, if it has one (its pgvector copy goes by cascade)."""
        txn.cursor.execute(
            f"DELETE FROM {index.embeddings} WHERE {index.embedding_key} = :id", {"id": row_id}
        )

    def _vector_count(self, index: SearchIndex, namespace: str) -> int:
        """How many vectors a namespace has in an index (cached a while: it picks a plan)."""
        table = vectors_table(index)

        def count() -> int:
            found: Any = self._db.thread_reader().execute(
                f"SELECT count(*) FROM {table} WHERE namespace = :namespace",
                {"namespace": namespace}).fetchone()
            return int(found[0])

        return int(self._statistic(index, ("vectors", namespace), count))

    def nearest_candidates(
        self, index: SearchIndex, namespace: str, vector: bytes, k: int
    ) -> list[int]:
        """Ids of about the ``k`` rows nearest the query (HNSW), or of exactly those."""
        key, table = index.embedding_key, vectors_table(index)
        dimension = dimension_of(vector)
        indexed = _indexed_type(dimension)
        params = {"vector": vector_literal(vector), "k": k, "namespace": namespace}
        reader = self._db.thread_reader()
        exact = (f"SELECT {key} FROM {table} WHERE namespace = :namespace "
                 "ORDER BY embedding <=> CAST(:vector AS vector) LIMIT :k")
        with storage_errors():
            if indexed is None or self._vector_count(index, namespace) <= max(k, EXACT_SCAN_ROWS):
                return [int(r[0]) for r in reader.execute(exact, params)]
            # Iterative scans go on past ef_search until k rows of the namespace are found.
            reader.execute(
                "SELECT set_config('hnsw.ef_search', :ef, false), "
                "set_config('hnsw.iterative_scan', 'relaxed_order', false)",
                {"ef": str(min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, k)))})
            found = [int(r[0]) for r in reader.execute(
                f"SELECT {key} FROM {table} WHERE dimension = {dimension} "
                f"AND namespace = :namespace ORDER BY embedding::{indexed} <=> "
                f"CAST(:vector AS {indexed}) LIMIT :k", params)]
            if len(found) < k:  # the scan gave up first (hnsw.max_scan_tuples)
                found = [int(r[0]) for r in reader.execute(exact, params)]
            return found

    def nearest(
        self,
        index: SearchIndex,
        namespace: str,
        vector: bytes,
        filters: dict[str, Any],
        *,
        among: Sequence[int] | None,
        limit: int,
    ) -> list[tuple[tuple[Any, ...], float]]:
        """Return up to ``limit`` (row, cosine similarity) best first, by exact distance.

        ``among`` restricts the ranking to candidate ids; None ranks every row of the
        namespace that has an embedding and matches the filters.
        """
        text = _TEXT[index.kind]
        shape = ("nearest", index.kind, tuple(sorted(filters)), among is None)
        sql = self._sql.get(shape)
        if sql is None:
            key = index.embedding_key
            conditions = ["e.namespace = :namespace"]
            if among is not None:
                conditions.append(f"e.{key} = ANY(CAST(:among AS bigint[]))")
            conditions += [text.filters[name] for name in sorted(filters)]
            sql = self._sql[shape] = (
                f"SELECT {index.select}, e.embedding <=> CAST(:vector AS vector) AS distance "
                f"FROM {vectors_table(index)} e JOIN {index.table} t ON t.id = e.{key} "
                f"{index.joins} WHERE {' AND '.join(conditions)} "
                "ORDER BY distance LIMIT :limit"
            )
        params = {**{k: int(v) if k in _BOOLEANS else v for k, v in filters.items()},
                  "namespace": namespace, "vector": vector_literal(vector), "limit": limit,
                  "among": list(among) if among is not None else None}
        with storage_errors():
            rows: list[Any] = self._db.thread_reader().execute(sql, params).fetchall()
        return [(tuple(r[:-1]), 1.0 - float(r[-1])) for r in rows]
