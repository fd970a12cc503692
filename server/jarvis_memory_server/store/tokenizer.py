"""The full-text indexes' tokenizer: words qualified by their namespace.

Each namespace gets index entries of its own: "coffee" in namespace "alice" is indexed as the
term "alice" + U+001F + "coffee". A query (run with the namespace as its FTS5 "locale") then
reads only its namespace's doclists, so what a search costs, and the document frequencies and
bm25() scores it ranks by, depend on that namespace's rows alone, never on another tenant's.
One FTS5 table still serves every namespace: no schema per tenant, no trigger routing.

Rows and queries pass their namespace as FTS5's locale (``fts5_locale(namespace, text)``; the
tables are created with ``locale=1``). The words themselves come from the tokenizer named in
the table's arguments (porter over unicode61), so stemming is the same as without the
qualifier. Text without a locale is tokenized unqualified.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

NAME = "namespaced"
# Between namespace and word: a character no namespace may contain (service/common.py).
SEPARATOR = "\x1f"

Tokens = list[tuple[int, int, str]]


def qualified(namespace: str, token: str) -> str:
    """The index term of a (stemmed) token in a namespace."""
    return namespace + SEPARATOR + token


def _factory(
    conn: apsw.Connection, args: list[str]
) -> Callable[[bytes, int, str | None], Tokens]:
    """FTS5 tokenizer factory: ``namespaced <tokenizer> <its arguments...>``."""
    if not args:
        raise ValueError(f"the {NAME} tokenizer needs the tokenizer it wraps as its argument")
    words = conn.fts5_tokenizer(args[0], args[1:])

    def tokenize(utf8: bytes, flags: int, locale: str | None) -> Tokens:
        found: Tokens = words(utf8, flags, None, include_colocated=False)  # type: ignore[assignment]
        if not locale:
            return found
        prefix = locale + SEPARATOR
        return [(start, end, prefix + token) for start, end, token in found]

    return tokenize


def register(conn: apsw.Connection) -> None:
    """Make the tokenizer available to a connection (before it touches a full-text index)."""
    conn.register_fts5_tokenizer(NAME, _factory)
