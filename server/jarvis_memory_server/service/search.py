"""Search rules: reading any user text as a query, ranking, vector checks, hybrid fusion.

Keyword ranking, in order:
1. The query is split by the index's own tokenizer (unicode61 + Porter stemming), so that a
   query word always means what an indexed word means. Quotes delimit phrases, a "*" right
   after a word makes it a prefix; every other character is a separator. The FTS5 expression
   is then built from quoted strings only, so no user text is ever read as an operator.
2. Stop words ("the", "does", ...) are dropped unless the query holds nothing else.
3. The words are OR-ed, rarest first, while the rows they match stay within a budget
   (MATCH_BUDGET): scoring costs 1-6 µs a matching row, and a word found in most rows adds
   little to BM25 anyway (one in more than half of them is left out once rarer words match
   enough rows, COMMON_SHARE). When even the rarest word is over budget, only the newest
   MATCH_BUDGET matching rows of the namespace are ranked, so that the time any query takes
   is bounded by the rows its words match. The index's terms carry their namespace
   (store/fulltext.py): every count here, and every row read, is the namespace's own.
4. FTS5's bm25() with per-column weights picks candidates. They are scored again here from
   their own text (tokenized in a few µs each): BM25 with an IDF that stays positive in small
   namespaces, times a bonus when every query word is present and another when all are close
   together. Snippets come from the same tokens: asking FTS5 for NEAR or snippet() would read
   every query word's whole doclist again.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.common import ServiceBase
from jarvis_memory_server.store.backend import Database, SearchStore, now_us, search_store
from jarvis_memory_server.store.search import (
    MAX_CANDIDATES,
    SearchIndex,
    dimension_of,
)
from jarvis_memory_server.store.writes import WriteTxn

# Marks around each matched term in a snippet, and the ellipsis for text left out.
SNIPPET_OPEN, SNIPPET_CLOSE, SNIPPET_ELLIPSIS = "**", "**", "..."
SNIPPET_TOKENS = 24  # the most tokens a snippet shows
SNIPPET_CONTEXT = 3  # tokens shown before the first match, when the text is cut

MODES = ("keyword", "vector", "hybrid")
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_QUERY_CHARS = 65536  # any realistic text (a pasted 10 kB message) is a valid query
MAX_QUERY_TERMS = 64  # the first distinct words of a longer query are searched
MAX_DIMENSION = 4096

# Rows a keyword query may score (see the module docstring, step 3).
MATCH_BUDGET = 3_000
# A word in more than this share of a namespace's rows picks no candidates once rarer words
# match enough rows (classic BM25 weighs it below zero); it still counts in their scores.
# Results do not change (the rarer words' rows fill the candidates and outrank the rows that
# hold only it); the rows scored do: every row, for a word in all of them.
COMMON_SHARE = 0.5
# Candidates reranked per hit asked for (at least MIN_CANDIDATES).
CANDIDATES_PER_HIT = 3
MIN_CANDIDATES = 30
# Score multipliers: every query word present, and all of them within NEAR_DISTANCE tokens
# more than the query's length.
ALL_TERMS_BONUS = 1.25
NEAR_BONUS = 1.25
NEAR_DISTANCE = 8
# BM25 parameters (FTS5's, and the usual ones).
BM25_K1 = 1.2
BM25_B = 0.75
# Reciprocal rank fusion constant (the value of Cormack et al., 2009).
RRF_K = 60
# Recency ranking: a memory's recency halves every 30 days since it was recorded or restated.
RECENCY_HALF_LIFE_US = 30 * 86_400 * 1_000_000
# Sign-index candidates per hit asked for, before exact ranking (at least MIN_VECTOR_CANDIDATES).
# A vec0 KNN over sign bits costs about 0.1 ms per candidate asked for on 100k vectors; 100
# candidates held the exact top 10 in the bench's clustered 384-dimension data (50: 0.82).
VECTOR_CANDIDATES_PER_HIT = 5
MIN_VECTOR_CANDIDATES = 100

# Common English function words; BM25 gives them little weight, but in an OR query each one
# matches most rows and costs time. Content words ("like", "want") are kept.
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()  # noqa: SIM905 - a word list reads better as text
)


@dataclass(frozen=True)
class Term:
    """One searchable unit of a query: a word, a prefix, or a phrase of several words."""

    words: tuple[str, ...]  # as written in the query
    tokens: tuple[str, ...]  # as indexed (stemmed)
    prefix: bool = False

    @property
    def expression(self) -> str:
        """The term as an FTS5 string: quoted, so nothing in it is an operator."""
        quoted = '"' + " ".join(self.words).replace('"', '""') + '"'
        return quoted + " *" if self.prefix else quoted

    @property
    def is_stop_word(self) -> bool:
        """A lone common word (not a prefix, not in a phrase)."""
        return len(self.words) == 1 and not self.prefix and self.words[0].casefold() in STOP_WORDS


def parse_query(text: str, tokenize: Callable[[str], list[tuple[int, int, str]]]) -> list[Term]:
    """Read any text as a list of distinct terms (see the module docstring, steps 1-2)."""
    terms: list[Term] = []
    seen: set[tuple[tuple[str, ...], bool]] = set()
    segments = text.split('"')
    for number, segment in enumerate(segments):
        # Odd segments lie between quotes, unless the last quote has no partner.
        quoted = number % 2 == 1 and number < len(segments) - 1
        data = segment.encode()
        tokens = tokenize(segment)
        found: list[Term] = []
        if quoted and len(tokens) > 1:
            found.append(Term(
                words=tuple(data[start:end].decode() for start, end, _ in tokens),
                tokens=tuple(token for _, _, token in tokens),
            ))
        else:
            for start, end, token in tokens:
                found.append(Term(
                    words=(data[start:end].decode(),),
                    tokens=(token,),
                    prefix=not quoted and data[end:end + 1] == b"*",
                ))
        for term in found:
            key = (term.tokens, term.prefix)
            if key not in seen and len(terms) < MAX_QUERY_TERMS:
                seen.add(key)
                terms.append(term)
    content = [t for t in terms if not t.is_stop_word]
    return content or terms


@dataclass(frozen=True)
class Hit:
    """One search result: the row (as its store's row type), its score, its snippet."""

    row: Any
    score: float
    snippet: str


@dataclass(frozen=True)
class SearchRequest:
    """A validated search."""

    namespace: str
    query: str
    mode: str
    vector: bytes | None  # float32 values; None in KEYWORD mode without an embedding
    filters: dict[str, Any]
    limit: int
    recency_weight: float = 0.0


def search_limit(value: int) -> int:
    """0 means the default; above the maximum is the maximum; negative is rejected."""
    if value < 0:
        raise InvalidArgument("limit", f"must not be negative (got {value})")
    return min(value or DEFAULT_LIMIT, MAX_LIMIT)


def embedding_bytes(values: Sequence[float], field: str) -> bytes | None:
    """Check a client's embedding and pack it as float32; None when it is empty.

    Raises InvalidArgument for too many values, non-finite values or an all-zero vector
    (whose cosine distance is undefined).
    """
    if not values:
        return None
    if len(values) > MAX_DIMENSION:
        raise InvalidArgument(
            field, f"has {len(values)} values; at most {MAX_DIMENSION} are allowed"
        )
    packed = array("f", values)
    norm = math.fsum(v * v for v in packed)
    if not math.isfinite(norm):
        raise InvalidArgument(field, "must hold only finite numbers (no NaN or infinity)")
    if norm == 0.0:
        raise InvalidArgument(field, "must not be all zeros: it has no direction to compare")
    return packed.tobytes()


def check_dimension(
    store: SearchStore, txn: WriteTxn, namespace: str, dimension: int, field: str
) -> bool:
    """Check an embedding's dimension against the namespace's; True when it has none yet.

    Only reads, so that a write can call it before changing any row. The caller then fixes a
    new namespace's dimension with SearchStore.fix_dimension. Raises InvalidArgument on a
    mismatch.
    """
    fixed = store.dimension(txn.cursor, namespace)
    if fixed is not None and fixed != dimension:
        raise dimension_mismatch(field, namespace, dimension, fixed)
    return fixed is None


def dimension_mismatch(field: str, namespace: str, given: int, fixed: int) -> InvalidArgument:
    """The error for an embedding whose length is not the namespace's dimension."""
    return InvalidArgument(
        field,
        f"has {given} values, but namespace {namespace!r} stores embeddings of dimension "
        f"{fixed} (fixed by its first embedding)",
        reason="EMBEDDING_DIMENSION_MISMATCH",
    )


def claim_dimension(
    store: SearchStore, txn: WriteTxn, namespace: str, dimension: int, field: str
) -> None:
    """check_dimension, then fix a new namespace's dimension.

    For writes that have nothing left to check before they change rows.
    """
    if check_dimension(store, txn, namespace, dimension, field):
        store.fix_dimension(txn, namespace, dimension)


class SearchService(ServiceBase):
    """Keyword, vector and hybrid search over memories, messages and events.

    Called from worker threads: every read uses the calling thread's own connection.
    """

    def __init__(self, db: Database, *, workers: int = 4) -> None:
        super().__init__(db)
        self._store = search_store(db)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search")
        # The vector half of hybrid searches runs beside their keyword half. A pool of its own:
        # a search waiting on a task queued behind other searches in its own pool could wait
        # forever.
        self._vector_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vector")
        # Called with each search's mode and its time in seconds, in its thread (the metrics).
        self.on_search: Callable[[str, float], None] | None = None

    async def run(self, index: SearchIndex, request: SearchRequest) -> list[Hit]:
        """Run search() in a worker thread, so that the event loop keeps serving meanwhile."""
        loop = asyncio.get_running_loop()
        search = self.search if self.on_search is None else self._timed_search
        return await loop.run_in_executor(self._pool, search, index, request)

    def _timed_search(self, index: SearchIndex, request: SearchRequest) -> list[Hit]:
        started = time.perf_counter()
        try:
            return self.search(index, request)
        finally:
            if self.on_search is not None:
                self.on_search(request.mode, time.perf_counter() - started)

    def close(self) -> None:
        """Wait for running searches and stop the workers (before the database closes)."""
        self._pool.shutdown(wait=True)
        self._vector_pool.shutdown(wait=True)

    def request(
        self,
        namespace: str,
        query: str,
        *,
        mode: str,
        embedding: Sequence[float],
        filters: dict[str, Any],
        limit: int,
        recency_weight: float = 0.0,
    ) -> SearchRequest:
        """Validate a search. Raises InvalidArgument naming the field at fault."""
        if not 0.0 <= recency_weight <= 1.0:  # NaN fails too
            raise InvalidArgument(
                "recency_weight", f"must be between 0 and 1 (got {recency_weight})")
        if mode not in MODES:
            raise InvalidArgument("mode", f"must be one of {', '.join(MODES)}")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidArgument(
                "query", f"is {len(query)} characters; at most {MAX_QUERY_CHARS} are allowed"
            )
        if mode in ("keyword", "hybrid") and not query.strip():
            raise InvalidArgument("query", f"is required in {mode.upper()} mode")
        vector = embedding_bytes(embedding, "embedding")
        if mode in ("vector", "hybrid") and vector is None:
            raise InvalidArgument("embedding", f"is required in {mode.upper()} mode")
        return SearchRequest(namespace, query, mode, vector, filters, search_limit(limit),
                             recency_weight)

    def search(self, index: SearchIndex, request: SearchRequest) -> list[Hit]:
        """Run a validated search; return hits best first (rows as tuples of the index)."""
        self._store.follow_growth(index)
        if request.recency_weight and index.recency_column is not None:
            # Rank more hits than asked by relevance, so that recent ones from further down
            # can rise; then blend in recency and cut.
            wider = replace(request, recency_weight=0.0,
                            limit=min(request.limit * CANDIDATES_PER_HIT, MAX_LIMIT * 3))
            return by_recency(self.search(index, wider), index.recency_column,
                              request.recency_weight, now_us())[:request.limit]
        if request.mode == "keyword":
            return self._keyword(index, request, request.limit)
        if request.mode == "vector":
            return self._vector(index, request, request.limit)
        wanted = max(request.limit * CANDIDATES_PER_HIT, MIN_CANDIDATES)
        vector = self._vector_pool.submit(self._vector, index, request, wanted)
        keyword = self._keyword(index, request, wanted)
        return fuse([keyword, vector.result()], request.limit)

    # -- keyword ---------------------------------------------------------------------------

    def _keyword(self, index: SearchIndex, request: SearchRequest, limit: int) -> list[Hit]:
        terms = parse_query(request.query, self._store.tokenize)
        frequencies = {t: self._frequency(index, request.namespace, t) for t in terms}
        # Every statistic is the namespace's own: other tenants' rows never shift its scores.
        rows, average = self._store.namespace_statistics(index, request.namespace)
        wanted = max(limit * CANDIDATES_PER_HIT, MIN_CANDIDATES)
        chosen: list[Term] = []
        matched = 0
        for term in sorted(terms, key=lambda t: frequencies[t]):
            count = frequencies[term]
            if count == 0 or (chosen and matched + count > MATCH_BUDGET):
                continue
            if matched >= wanted and count > rows * COMMON_SHARE:
                continue  # the rarer words already match enough rows to pick candidates
            chosen.append(term)
            matched += count
        if not chosen:
            return []
        # Even the rarest word is everywhere: rank the newest matching rows only.
        newest = MATCH_BUDGET if matched > MATCH_BUDGET else None
        match = " OR ".join(t.expression for t in chosen)
        candidates = self._store.keyword(
            index, request.namespace, match, request.filters, newest=newest, limit=wanted
        )
        if not candidates:
            return []
        idf = [inverse_frequency(rows, frequencies[t]) for t in terms]
        ranked = []
        for row, _ in candidates:
            texts = [row[i] for i in index.text_columns]
            found = find_terms(texts, terms, self._store.tokenize)
            score = bm25(found, idf, index.weights, average)
            if len(terms) > 1 and found.all_present:
                score *= ALL_TERMS_BONUS
                if found.span is not None and found.span - len(terms) <= NEAR_DISTANCE:
                    score *= NEAR_BONUS
            ranked.append((score, row, found))
        ranked.sort(key=lambda r: (-r[0], -r[1][0]))
        return [Hit(row, score, found.snippet(terms)) for score, row, found in ranked[:limit]]

    def _frequency(self, index: SearchIndex, namespace: str, term: Term) -> int:
        # A phrase is no more frequent than its rarest word.
        return min(self._store.doc_frequency(index, namespace, token, term.prefix)
                   for token in term.tokens)

    # -- vector ----------------------------------------------------------------------------

    def _vector(self, index: SearchIndex, request: SearchRequest, limit: int) -> list[Hit]:
        assert request.vector is not None  # checked by request()
        dimension = self._store.read_dimension(request.namespace)
        if dimension is None:
            return []  # no embedding stored in this namespace yet
        if dimension != dimension_of(request.vector):
            raise dimension_mismatch(
                "embedding", request.namespace, dimension_of(request.vector), dimension
            )
        k = min(MAX_CANDIDATES, max(limit * VECTOR_CANDIDATES_PER_HIT, MIN_VECTOR_CANDIDATES))
        candidates = self._store.nearest_candidates(index, request.namespace, request.vector, k)
        found = self._store.nearest(
            index, request.namespace, request.vector, request.filters, among=candidates,
            limit=limit,
        )
        if len(found) < limit and len(candidates) == k:
            # The filters dropped too many candidates: rank every row that passes them.
            found = self._store.nearest(
                index, request.namespace, request.vector, request.filters, among=None,
                limit=limit,
            )
        return [Hit(row, similarity, "") for row, similarity in found]


@dataclass(frozen=True)
class Found:
    """Where a query's terms occur in one row's indexed text."""

    all_present: bool  # every term occurs in some column
    span: int | None  # the fewest tokens of one column that hold every term (None: none do)
    hits: list[list[int]]  # per term, per column: how often it occurs
    length: int  # tokens in all columns
    # The column with the most distinct terms: its text, tokens and each term's positions.
    best: tuple[str, list[tuple[int, int, str]], list[list[int]]] | None

    def snippet(self, terms: list[Term]) -> str:
        """An excerpt of the best column with the matches marked ("" when nothing matched)."""
        return "" if self.best is None else make_snippet(*self.best, terms)


def inverse_frequency(rows: int, frequency: int) -> float:
    """BM25's IDF in the form that stays positive (Lucene's), for any number of rows.

    FTS5's bm25() uses log((N - n + 0.5) / (n + 0.5)), clamped to 1e-6 when a word is in more
    than half the rows: in a namespace of a few memories every score is then about 0, and
    nothing tells the rows apart.
    """
    return math.log(1.0 + (rows - frequency + 0.5) / (frequency + 0.5))


def bm25(found: Found, idf: list[float], weights: tuple[float, ...], average: float) -> float:
    """Score a row the way FTS5 does (weighted hits, whole-row length), with a positive IDF."""
    score = 0.0
    norm = BM25_K1 * (1.0 - BM25_B + BM25_B * found.length / average) if average else BM25_K1
    for term_idf, per_column in zip(idf, found.hits, strict=True):
        weighted = sum(w * n for w, n in zip(weights, per_column, strict=True))
        if weighted:
            score += term_idf * weighted * (BM25_K1 + 1.0) / (weighted + norm)
    return score


def term_positions(tokens: list[str], term: Term) -> list[int]:
    """Token positions where a term (word, prefix or phrase) starts."""
    first = term.tokens[0]
    if term.prefix:
        return [i for i, token in enumerate(tokens) if token.startswith(first)]
    if len(term.tokens) == 1:
        return [i for i, token in enumerate(tokens) if token == first]
    n = len(term.tokens)
    return [i for i, token in enumerate(tokens)
            if token == first and tuple(tokens[i:i + n]) == term.tokens]


def smallest_span(positions: list[list[int]]) -> int | None:
    """The fewest consecutive tokens holding one position of each list (None if one is empty)."""
    if not all(positions):
        return None
    events = sorted((pos, which) for which, found in enumerate(positions) for pos in found)
    latest: dict[int, int] = {}
    best = None
    for pos, which in events:
        latest[which] = pos
        if len(latest) == len(positions):
            span = pos - min(latest.values()) + 1
            best = span if best is None else min(best, span)
    return best


def find_terms(
    texts: Sequence[str | None], terms: list[Term],
    tokenize: Callable[[str], list[tuple[int, int, str]]],
) -> Found:
    """Locate the terms in a row's indexed columns."""
    present: set[int] = set()
    span = None
    most = 0
    best = None
    hits = [[0] * len(texts) for _ in terms]
    length = 0
    for column, text in enumerate(texts):
        if not text:
            continue
        tokens = tokenize(text)
        length += len(tokens)
        words = [token for _, _, token in tokens]
        positions = [term_positions(words, term) for term in terms]
        for i, found in enumerate(positions):
            hits[i][column] = len(found)
        matched = sum(1 for found in positions if found)
        present.update(i for i, found in enumerate(positions) if found)
        column_span = smallest_span(positions) if len(terms) > 1 else None
        if column_span is not None:
            span = column_span if span is None else min(span, column_span)
        if matched > most:
            most, best = matched, (text, tokens, positions)
    return Found(len(present) == len(terms), span, hits, length, best)


def make_snippet(
    text: str, tokens: list[tuple[int, int, str]], positions: list[list[int]], terms: list[Term]
) -> str:
    """SNIPPET_TOKENS tokens around the most distinct matched terms, each match marked."""
    marked: dict[int, int] = {}  # first token of a match -> its token count
    for term, found in zip(terms, positions, strict=True):
        for start in found:
            marked[start] = max(marked.get(start, 0), len(term.tokens))
    first, last = 0, len(tokens) - 1
    if len(tokens) > SNIPPET_TOKENS:
        def distinct(start: int) -> int:
            end = start + SNIPPET_TOKENS
            return sum(1 for found in positions if any(start <= p < end for p in found))

        # Open a few tokens before a match, on the window holding the most distinct terms.
        starts = sorted({max(0, p - SNIPPET_CONTEXT) for p in marked})
        first = max(starts, key=lambda s: (distinct(s), -s)) if starts else 0
        first = min(first, len(tokens) - SNIPPET_TOKENS)
        last = first + SNIPPET_TOKENS - 1
    data = text.encode()
    out = [SNIPPET_ELLIPSIS] if first > 0 else []
    cursor = tokens[first][0]
    position = first
    while position <= last:
        start = tokens[position][0]
        length = marked.get(position, 0)
        if length:
            end_position = min(position + length - 1, last)
            end = tokens[end_position][1]
            out += [data[cursor:start].decode(errors="replace"), SNIPPET_OPEN,
                    data[start:end].decode(errors="replace"), SNIPPET_CLOSE]
            cursor, position = end, end_position + 1
        else:
            position += 1
    out.append(data[cursor:tokens[last][1]].decode(errors="replace"))
    if last < len(tokens) - 1:
        out.append(SNIPPET_ELLIPSIS)
    return "".join(out)


def by_recency(hits: list[Hit], column: int, weight: float, now: int) -> list[Hit]:
    """Blend recency into the scores: score * (1 - weight + weight * recency).

    recency = 0.5 ** (age / RECENCY_HALF_LIFE_US), the age measured from the row's ``column``.
    """
    blended = []
    for hit in hits:
        age = max(0, now - int(hit.row[column]))
        recency = 0.5 ** (age / RECENCY_HALF_LIFE_US)
        blended.append(Hit(hit.row, hit.score * (1.0 - weight + weight * recency), hit.snippet))
    blended.sort(key=lambda h: (-h.score, -h.row[0]))
    return blended


def fuse(rankings: list[list[Hit]], limit: int) -> list[Hit]:
    """Reciprocal rank fusion: each hit scores the sum of 1 / (RRF_K + rank) over the lists.

    A hit keeps the first non-empty snippet any list gave it.
    """
    scores: dict[int, float] = {}
    hits: dict[int, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            row_id = hit.row[0]
            scores[row_id] = scores.get(row_id, 0.0) + 1.0 / (RRF_K + rank)
            if row_id not in hits or not hits[row_id].snippet:
                hits[row_id] = hit
    best = sorted(scores, key=lambda i: (-scores[i], -i))[:limit]
    return [Hit(hits[i].row, scores[i], hits[i].snippet) for i in best]
