"""Full-text index machinery shared by writes and searches: the tokenizer, deferred indexing.

**Words qualified by their namespace.**

Each namespace gets index entries of its own: "coffee" in namespace "alice" is indexed as the
term "alice" + U+001F + "coffee". A query (run with the namespace as its FTS5 "locale") then
reads only its namespace's doclists, so what a search costs, and the document frequencies and
bm25() scores it ranks by, depend on that namespace's rows alone, never on another tenant's.
One FTS5 table still serves every namespace: no schema per tenant, no trigger routing.

Rows and queries pass their namespace as FTS5's locale (``fts5_locale(namespace, text)``; the
tables are created with ``locale=1``). The words themselves come from the tokenizer named in
the table's arguments (porter over unicode61), so stemming is the same as without the
qualifier. Text without a locale is tokenized unqualified.

**New rows are indexed at commit.** A trigger only notes a new row's id in ``<index>_pending``;
index_pending() indexes all of a transaction's noted rows in one statement just before its
COMMIT. FTS5 writes out its in-memory index changes at every savepoint, and SQLite opens one
for each statement that fires a trigger: indexing in the insert trigger itself wrote (and
later merged) an index segment per row, which cost about twice the indexing. Updates and
deletes still remove a row's old terms in their trigger (a row noted as pending has none
yet); an update notes the row again. Rows a transaction noted but did not index (another
program wrote them) are indexed when the daemon opens the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import apsw

NAME = "namespaced"
# The tokenizer it wraps in every index (as migration 10 names it), and that queries use.
WORDS = ("porter", "unicode61", "remove_diacritics", "2")
# Between namespace and word: a character no namespace may contain (service/common.py).
SEPARATOR = "\x1f"

Tokens = list[tuple[int, int, str]] | list[str]


def qualified(namespace: str, token: str) -> str:
    """The index term of a (stemmed) token in a namespace."""
    return namespace + SEPARATOR + token


def _factory(
    conn: apsw.Connection, args: list[str]
) -> Callable[[bytes, int, str | None], Tokens]:
    """FTS5 tokenizer factory: ``namespaced <tokenizer> <its arguments...>``."""
    if not args:
        raise ValueError(f"the {NAME} tokenizer needs the tokenizer it wraps as its argument")
    words: Any = conn.fts5_tokenizer(args[0], args[1:])  # its result type is a wide union

    def tokenize(utf8: bytes, flags: int, locale: str | None) -> Tokens:
        if not utf8:  # an empty subject or no attributes: nothing to split
            return []
        if not locale:
            return words(utf8, flags, None, include_colocated=False)  # type: ignore[no-any-return]
        prefix = locale + SEPARATOR
        if flags & apsw.FTS5_TOKENIZE_AUX:  # highlight() and snippet() need the offsets
            return [(start, end, prefix + token) for start, end, token
                    in words(utf8, flags, None, include_colocated=False)]
        # Indexing and queries need only the tokens; leaving the offsets out saves a third.
        return [prefix + token for token
                in words(utf8, flags, None, include_offsets=False, include_colocated=False)]

    return tokenize


# Ends the name of a table's full-text index, and (then followed by more) of the index's
# shadow tables and of its list of rows to index (written by the insert trigger).
FTS_SUFFIX = "_fts"
PENDING_SUFFIX = FTS_SUFFIX + "_pending"

# Each full-text index: its table, and the columns it indexes (in index order).
INDEXED_COLUMNS = {
    "memories": ("subject", "content", "attributes"),
    "messages": ("content",),
    "events": ("summary", "details"),
}


def fts_table(table: str) -> str:
    """The FTS5 index of a table, as migration 10 names them."""
    return table + FTS_SUFFIX


def pending_table(table: str) -> str:
    """The table noting a table's rows waiting to be indexed."""
    return table + PENDING_SUFFIX


def index_pending(cursor: apsw.Cursor, tables: Iterable[str] = tuple(INDEXED_COLUMNS)) -> None:
    """Index the rows of ``tables`` noted as pending (in the caller's transaction).

    The notes are cleared.
    """
    for table in tables:
        pending = pending_table(table)
        names = ", ".join(INDEXED_COLUMNS[table])
        # The view wraps each value in its namespace's locale, as the index reads them.
        cursor.execute(
            f"INSERT INTO {fts_table(table)}(rowid, {names}) SELECT v.id, {names} "
            f"FROM {pending} p JOIN {table}_search_text v ON v.id = p.id"
        )
        cursor.execute(f"DELETE FROM {pending}")


def register(conn: apsw.Connection) -> None:
    """Make the tokenizer available to a connection (before it touches a full-text index)."""
    conn.register_fts5_tokenizer(NAME, _factory)
