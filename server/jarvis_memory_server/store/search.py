"""SQL of search: FTS5 full-text indexes and sqlite-vec embeddings.

Hand-written SQL, like collections.py: MATCH, bm25() and vec0 KNN have no Peewee form. The
full-text indexes (migrations 9 and 10) are kept in step with their tables in the transaction
of every write, and their terms are qualified by namespace (store/fulltext.py). Embeddings
are stored exactly in memory_embeddings and message_embeddings; for each dimension a vec0
table holds the sign bits of every vector ("binary quantisation", 32x smaller), which a KNN
scans to pick candidates that are then ranked by exact cosine distance. Reads here run on the
calling thread's own connection.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import apsw

from jarvis_memory_server.store.backend import Connection, Cursor
from jarvis_memory_server.store.backend import Database as BackendDatabase
from jarvis_memory_server.store.events import EventRow
from jarvis_memory_server.store.failures import storage_errors
from jarvis_memory_server.store.fulltext import (
    INDEXED_COLUMNS,
    WORDS,
    fts_table,
    pending_table,
    qualified,
)
from jarvis_memory_server.store.memories import LIFECYCLE_FILTERS, MemoryRow
from jarvis_memory_server.store.sessions import MessageRow
from jarvis_memory_server.store.sqlite import Database
from jarvis_memory_server.store.writes import WriteTxn

# The most candidates a sign-index KNN may return (vec0's own limit is 4096).
MAX_CANDIDATES = 4096

# Rows sampled for a namespace's mean row length.
LENGTH_SAMPLE = 1000

# Document frequencies and averages change slowly; caching them saves a doclist read per term
# and query. They are read again after STATISTICS_TTL_S, or once their table has more than
# STATISTICS_DRIFT_ROWS rows newer than when they were read: a cached frequency is then never
# more than that many rows short, so a bulk load cannot make a common word look rare (and
# a search score every row that holds it).
STATISTICS_TTL_S = 30.0
STATISTICS_DRIFT_ROWS = 1000


@dataclass(frozen=True)
class SearchIndex:
    """What search needs to know about one searchable table."""

    kind: str  # "memory", "message", "event"
    table: str
    weights: tuple[float, ...]  # bm25 weight of each indexed column, in index order
    select: str  # the columns of the row type, from the table aliased "t"
    text_columns: tuple[int, ...]  # where the indexed columns are in a row, in index order
    joins: str  # extra joins the select needs
    filters: dict[str, str]  # filter name -> SQL condition on "t" with :named parameters
    embeddings: str | None  # table of exact vectors, keyed by the row's id
    embedding_key: str | None
    # Ids of a namespace's rows (:namespace), newest first where an index gives that order.
    namespace_rows: str
    # Where in a row the time recency ranking measures from (None: no recency ranking).
    recency_column: int | None = None

    @property
    def fts(self) -> str:
        """The table's FTS5 index."""
        return fts_table(self.table)


def text_positions(fields: tuple[str, ...], table: str) -> tuple[int, ...]:
    """Where a table's indexed columns are in its row type, in index order."""
    return tuple(fields.index(column) for column in INDEXED_COLUMNS[table])


MEMORIES = SearchIndex(
    kind="memory",
    table="memories",
    # subject, content, attributes: a short label that matches says more than body text.
    weights=(3.0, 1.0, 0.5),
    select=", ".join(f"t.{name}" for name in MemoryRow._fields),
    text_columns=text_positions(MemoryRow._fields, "memories"),
    joins="",
    filters={
        "category": "t.category = :category",
        "source": "t.source = :source",
        "subject": "t.subject = :subject",
        "stale": "t.stale = :stale",
        "created_after": "t.created_at >= :created_after",
        "created_before": "t.created_at < :created_before",
        **LIFECYCLE_FILTERS,
    },
    embeddings="memory_embeddings",
    embedding_key="memory_id",
    namespace_rows="SELECT id FROM memories WHERE namespace = :namespace ORDER BY created_at DESC",
    recency_column=MemoryRow._fields.index("updated_at"),
)

MESSAGES = SearchIndex(
    kind="message",
    table="messages",
    weights=(1.0,),
    select=", ".join(
        "s.session_id" if name == "session_id" else f"t.{name}" for name in MessageRow._fields
    ),
    text_columns=text_positions(MessageRow._fields, "messages"),
    joins="JOIN sessions s ON s.id = t.session_ref",
    filters={
        "session_id": "s.session_id = :session_id",
        "role": "t.role = :role",
        "created_after": "t.created_at >= :created_after",
        "created_before": "t.created_at < :created_before",
    },
    embeddings="message_embeddings",
    embedding_key="message_id",
    # messages has no index by namespace; sessions has.
    namespace_rows="SELECT m.id FROM sessions s JOIN messages m ON m.session_ref = s.id "
    "WHERE s.namespace = :namespace",
)

EVENTS = SearchIndex(
    kind="event",
    table="events",
    weights=(2.0, 0.5),  # summary, details
    select=", ".join(f"t.{name}" for name in EventRow._fields),
    text_columns=text_positions(EventRow._fields, "events"),
    joins="",
    filters={
        "types": "t.type IN (SELECT value FROM json_each(:types))",
        "min_severity": "t.severity >= :min_severity",
        "node": "t.node = :node",
        "source": "t.source = :source",
        "since": "t.occurred_at >= :since",
        "until": "t.occurred_at < :until",
        "resolved": "t.resolved = :resolved",
    },
    embeddings=None,
    embedding_key=None,
    namespace_rows="SELECT id FROM events WHERE namespace = :namespace ORDER BY occurred_at DESC",
)

INDEXES = (MEMORIES, MESSAGES, EVENTS)


def _varints(data: bytes) -> list[int]:
    """Decode SQLite's big-endian varints (7 bits a byte, the 9th byte whole)."""
    numbers, i = [], 0
    while i < len(data):
        value = 0
        for position in range(9):
            byte = data[i]
            i += 1
            if position == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        numbers.append(value)
    return numbers


def sign_table(index: SearchIndex, dimension: int) -> str:
    """The vec0 table of the sign bits of an index's vectors of one dimension."""
    return f"{index.kind}_vector_signs_{dimension}"


def padded_dimension(dimension: int) -> int:
    """Bit vectors are whole bytes: vectors are padded with zeros to a multiple of 8."""
    return -(-dimension // 8) * 8


def dimension_of(vector: bytes) -> int:
    """The dimension of a packed vector (float32 values)."""
    return len(vector) // 4


def padded(vector: bytes) -> bytes:
    """A float32 vector with zeros appended up to padded_dimension (zeros give 0 bits)."""
    dimension = dimension_of(vector)
    return vector + bytes(4 * (padded_dimension(dimension) - dimension))


DB = TypeVar("DB", bound=BackendDatabase)


class SearchStoreBase(Generic[DB]):
    """What the search stores of both backends (this module's, pgsearch.py's) share."""

    def __init__(self, db: DB) -> None:
        self._db = db
        self._sql: dict[tuple[Any, ...], str] = {}
        # Index statistics by table, then by key: (value, when computed).
        self._statistics: dict[str, dict[Any, tuple[Any, float]]] = {}
        # The newest row id of each table when its cached statistics began.
        self._newest_ids: dict[str, int] = {}
        self._statistics_lock = threading.Lock()

    def follow_growth(self, index: SearchIndex) -> None:
        """Drop an index's cached statistics once STATISTICS_DRIFT_ROWS rows were added since.

        Called before each search: one read of the newest id, a few µs.
        """
        with storage_errors():
            found: Any = self._db.thread_reader().execute(
                f"SELECT max(id) FROM {index.table}").fetchone()
        newest = int(found[0] or 0)
        with self._statistics_lock:
            since = self._newest_ids.setdefault(index.table, newest)
            if not 0 <= newest - since <= STATISTICS_DRIFT_ROWS:
                self._newest_ids[index.table] = newest
                self._statistics.pop(index.table, None)

    def _statistic(self, index: SearchIndex, key: Any, compute: Callable[[], Any]) -> Any:
        """A statistic of an index from the cache, or computed (and cached a while)."""
        now = time.monotonic()
        with self._statistics_lock:
            cached = self._statistics.get(index.table, {}).get(key)
        if cached is not None and now - cached[1] < STATISTICS_TTL_S:
            return cached[0]
        with storage_errors():
            value = compute()
        with self._statistics_lock:
            table = self._statistics.setdefault(index.table, {})
            if len(table) > 100_000:
                table.clear()
            table[key] = (value, now)
        return value

    def dimension(self, conn: Connection | Cursor, namespace: str) -> int | None:
        """The namespace's embedding dimension; None before its first embedding."""
        row = conn.execute(
            "SELECT dimension FROM embedding_spaces WHERE namespace = :namespace",
            {"namespace": namespace},
        ).fetchone()
        return None if row is None else int(row[0])

    def read_dimension(self, namespace: str) -> int | None:
        """dimension() on the calling thread's reader."""
        with storage_errors():
            return self.dimension(self._db.thread_reader(), namespace)

    @staticmethod
    def _insert_dimension(cursor: Cursor, namespace: str, dimension: int) -> None:
        cursor.execute(
            "INSERT INTO embedding_spaces (namespace, dimension) VALUES (:namespace, :dimension)",
            {"namespace": namespace, "dimension": dimension},
        )


class SearchStore(SearchStoreBase[Database]):
    """Queries of the full-text indexes and the embeddings."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._tokenizers = threading.local()

    # -- text ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[tuple[int, int, str]]:
        """Split text as the indexes do: (start byte, end byte, stemmed token) of each word."""
        tokenizer = getattr(self._tokenizers, "tokenizer", None)
        if tokenizer is None:
            conn = self._db.thread_reader()
            tokenizer = conn.fts5_tokenizer(WORDS[0], list(WORDS[1:]))
            self._tokenizers.tokenizer = tokenizer
        tokens: list[tuple[int, int, str]] = tokenizer(  # type: ignore[assignment]
            text.encode(), apsw.FTS5_TOKENIZE_QUERY, None, include_colocated=False
        )
        return tokens

    def doc_frequency(self, index: SearchIndex, namespace: str, token: str, prefix: bool) -> int:
        """How many of a namespace's rows hold the (stemmed) token, or any token it prefixes.

        Cached a while. Index terms carry their namespace (store/fulltext.py), so this reads
        the namespace's own doclist.
        """
        if prefix:
            sql = (f"SELECT coalesce(sum(doc), 0) FROM {index.fts}_terms "
                   "WHERE term >= :term AND term < :term || char(1114111)")
        else:
            sql = f"SELECT coalesce(sum(doc), 0) FROM {index.fts}_terms WHERE term = :term"
        term = qualified(namespace, token)

        def count() -> int:
            found: Any = self._db.thread_reader().execute(sql, {"term": term}).fetchone()
            return int(found[0])

        return int(self._statistic(index, term + ("*" if prefix else ""), count))

    def namespace_statistics(self, index: SearchIndex, namespace: str) -> tuple[int, float]:
        """A namespace's rows in an index, and their mean length in tokens (cached a while).

        The mean is over the newest LENGTH_SAMPLE rows, from FTS5's table of row sizes (one
        varint per column).
        """
        def read() -> tuple[int, float]:
            reader = self._db.thread_reader()
            params = {"namespace": namespace}
            found: Any = reader.execute(
                f"SELECT count(*) FROM ({index.namespace_rows})", params
            ).fetchone()
            sizes = [
                sum(_varints(bytes(size))) for (size,) in reader.execute(
                    f"SELECT d.sz FROM ({index.namespace_rows} LIMIT {LENGTH_SAMPLE}) r "
                    f"JOIN {index.fts}_docsize d ON d.id = r.id", params
                )
            ]
            return int(found[0]), (sum(sizes) / len(sizes) if sizes else 0.0)

        statistics: tuple[int, float] = self._statistic(index, namespace, read)
        return statistics


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

        ``match`` is an FTS5 query; ``newest``, when given, ranks only the newest that many
        matching rows of the namespace: FTS5 visits rows newest first and the scan stops
        there. Only the namespace's rows are read: its terms are its own. With filters, the
        newest matches are filtered first (a row lookup each); when fewer than ``limit``
        pass, the newest matches that pass are ranked instead, however far back they lie.
        """
        plan = "all" if newest is None else "newest"
        if newest is not None and filters:
            found = self._keyword(index, namespace, match, filters, "newest then filter",
                                  newest, limit)
            if len(found) >= limit:
                return found
        return self._keyword(index, namespace, match, filters, plan, newest, limit)

    def _keyword(
        self, index: SearchIndex, namespace: str, match: str, filters: dict[str, Any],
        plan: str, newest: int | None, limit: int,
    ) -> list[tuple[tuple[Any, ...], float]]:
        shape = ("keyword", index.kind, tuple(sorted(filters)), plan)
        sql = self._sql.get(shape)
        if sql is None:
            fts = index.fts
            # The namespace is the query's FTS5 locale: its words are that namespace's terms,
            # so only filters need the rows themselves (a lookup per matching row).
            where = [f"{fts} MATCH fts5_locale(:namespace, :match)"]
            passing = " AND ".join(index.filters[name] for name in sorted(filters))

            def rows_of(key: str) -> str:
                return f"JOIN {index.table} t ON t.id = {key} {index.joins}"

            # bm25() with the weights written in (twice as fast as "rank MATCH 'bm25(...)'");
            # only ids and scores are sorted, and rows are read for the winners alone.
            weights = ", ".join(str(w) for w in index.weights)
            scored = f"SELECT {fts}.rowid AS id, bm25({fts}, {weights}) AS score FROM {fts}"
            newest_first = f"ORDER BY {fts}.rowid DESC LIMIT :newest"  # FTS5 walks doclists so
            if plan == "newest then filter":
                ranked = (f"SELECT f.id, f.score FROM ({scored} WHERE {where[0]} {newest_first})"
                          f" f {rows_of('f.id')} WHERE {passing}")
            else:
                if filters:
                    scored += f" {rows_of(f'{fts}.rowid')}"
                    where.append(passing)
                ranked = f"{scored} WHERE {' AND '.join(where)}"
                if plan == "newest":
                    ranked = f"SELECT * FROM ({ranked} {newest_first})"
            sql = self._sql[shape] = f"{ranked} ORDER BY score LIMIT :limit"
        params = {**filters, "match": match, "namespace": namespace, "newest": newest,
                  "limit": limit}
        with storage_errors():
            ranked_ids: list[Any] = self._db.thread_reader().execute(sql, params).fetchall()
        found = self.rows(index, namespace, [row_id for row_id, _ in ranked_ids])
        # bm25() is lower for better matches; flip it so that scores grow with relevance.
        return [(found[row_id], -float(score)) for row_id, score in ranked_ids
                if row_id in found]

    def rows(
        self, index: SearchIndex, namespace: str, ids: Sequence[int]
    ) -> dict[int, tuple[Any, ...]]:
        """Read a namespace's rows by id (as tuples of the index's row type)."""
        sql = (f"SELECT {index.select} FROM json_each(:ids) c CROSS JOIN {index.table} t "
               f"ON t.id = c.value {index.joins} WHERE t.namespace = :namespace")
        with storage_errors():
            found = self._db.thread_reader().execute(
                sql, {"ids": json.dumps(ids), "namespace": namespace})
            return {int(r[0]): tuple(r) for r in found}

    # -- vectors ---------------------------------------------------------------------------



    def fix_dimension(self, txn: WriteTxn, namespace: str, dimension: int) -> None:
        """Record a namespace's first embedding dimension; create its sign indexes if new."""
        cursor = txn.cursor
        self._insert_dimension(cursor, namespace, dimension)
        for index in (MEMORIES, MESSAGES):
            table = sign_table(index, dimension)
            cursor.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING vec0("
                f"{index.embedding_key} INTEGER PRIMARY KEY, namespace TEXT PARTITION KEY, "
                f"signs BIT[{padded_dimension(dimension)}])"
            )
            # Exact vectors go away with their rows (ON DELETE CASCADE); their signs with them.
            cursor.execute(
                f"CREATE TRIGGER IF NOT EXISTS {table}_delete AFTER DELETE ON {index.embeddings} "
                f"BEGIN DELETE FROM {table} WHERE {index.embedding_key} = "
                f"old.{index.embedding_key}; END"
            )

    def put_embedding(
        self, txn: WriteTxn, index: SearchIndex, namespace: str, row_id: int, vector: bytes
    ) -> None:
        """Store (or replace) a row's embedding; its dimension must already be fixed."""
        self.delete_embedding(txn, index, row_id)
        txn.cursor.execute(
            f"INSERT INTO {index.embeddings} ({index.embedding_key}, vector) VALUES (:id, :vector)",
            {"id": row_id, "vector": vector},
        )
        txn.cursor.execute(
            f"INSERT INTO {sign_table(index, dimension_of(vector))} "
            f"({index.embedding_key}, namespace, signs) "
            "VALUES (:id, :namespace, vec_quantize_binary(:vector))",
            {"id": row_id, "namespace": namespace, "vector": padded(vector)},
        )

    def delete_embedding(self, txn: WriteTxn, index: SearchIndex, row_id: int) -> None:
        """Remove a row's embedding, if it has one (its signs go by trigger)."""
        txn.cursor.execute(
            f"DELETE FROM {index.embeddings} WHERE {index.embedding_key} = :id", {"id": row_id}
        )

    def nearest_candidates(
        self, index: SearchIndex, namespace: str, vector: bytes, k: int
    ) -> list[int]:
        """Ids of the ``k`` rows whose sign bits are nearest the query's (Hamming distance)."""
        sql = (f"SELECT {index.embedding_key} FROM {sign_table(index, dimension_of(vector))} "
               "WHERE signs MATCH vec_quantize_binary(:vector) AND k = :k "
               "AND namespace = :namespace")
        params = {"vector": padded(vector), "k": k, "namespace": namespace}
        with storage_errors():
            return [int(r[0]) for r in self._db.thread_reader().execute(sql, params)]

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
        shape = ("nearest", index.kind, tuple(sorted(filters)), among is None)
        sql = self._sql.get(shape)
        if sql is None:
            conditions = ["t.namespace = :namespace"]
            conditions += [index.filters[name] for name in sorted(filters)]
            source = (f"{index.table} t JOIN {index.embeddings} e "
                      f"ON e.{index.embedding_key} = t.id")
            if among is not None:
                # CROSS JOIN fixes the order: from the few candidates to their rows, never
                # from every row of the namespace to the candidates.
                source = (f"json_each(:among) c CROSS JOIN {index.embeddings} e "
                          f"ON e.{index.embedding_key} = c.value "
                          f"CROSS JOIN {index.table} t ON t.id = e.{index.embedding_key}")
            sql = self._sql[shape] = (
                f"SELECT {index.select}, vec_distance_cosine(e.vector, :vector) AS distance "
                f"FROM {source} {index.joins} WHERE {' AND '.join(conditions)} "
                "ORDER BY distance LIMIT :limit"
            )
        params = {**filters, "namespace": namespace, "vector": vector, "limit": limit,
                  "among": json.dumps(list(among)) if among is not None else None}
        with storage_errors():
            rows: list[Any] = self._db.thread_reader().execute(sql, params).fetchall()
        return [(tuple(r[:-1]), 1.0 - float(r[-1])) for r in rows]

    # -- maintenance -----------------------------------------------------------------------

    @staticmethod
    def rebuild(conn: apsw.Connection) -> dict[str, int]:
        """Rebuild every full-text index and sign index from its table; return row counts.

        For ``jarvis-memory reindex``: runs in the caller's transaction on ``conn``.
        """
        counts: dict[str, int] = {}
        for index in INDEXES:
            conn.execute(f"INSERT INTO {index.fts}({index.fts}) VALUES ('rebuild')")
            conn.execute(f"DELETE FROM {pending_table(index.table)}")  # the rebuild indexed them
            found: Any = conn.execute(f"SELECT count(*) FROM {index.table}").fetchone()
            counts[index.fts] = int(found[0])
        dimensions = [r[0] for r in conn.execute("SELECT DISTINCT dimension FROM embedding_spaces")]
        for index in (MEMORIES, MESSAGES):
            for dimension in dimensions:
                table = sign_table(index, dimension)
                conn.execute(f"DELETE FROM {table}")
                rows: list[Any] = conn.execute(
                    f"SELECT e.{index.embedding_key}, t.namespace, e.vector "
                    f"FROM {index.embeddings} e JOIN {index.table} t "
                    f"ON t.id = e.{index.embedding_key} "
                    "JOIN embedding_spaces s ON s.namespace = t.namespace "
                    "WHERE s.dimension = :dimension",
                    {"dimension": dimension},
                ).fetchall()
                conn.executemany(
                    f"INSERT INTO {table} ({index.embedding_key}, namespace, signs) "
                    "VALUES (?, ?, vec_quantize_binary(?))",
                    [(row_id, namespace, padded(vector)) for row_id, namespace, vector in rows],
                )
                counts[table] = len(rows)
        return counts

    @staticmethod
    def check(conn: apsw.Connection) -> None:
        """Raise apsw.CorruptError when a full-text index disagrees with its table."""
        for index in INDEXES:
            conn.execute(
                f"INSERT INTO {index.fts}({index.fts}, rank) VALUES ('integrity-check', 1)"
            )
