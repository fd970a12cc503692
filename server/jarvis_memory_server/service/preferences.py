"""Preference rules: key syntax, upsert, key-ordered listing."""

from __future__ import annotations

import re
from typing import Any

from jarvis_memory_server.errors import NotFound
from jarvis_memory_server.service.common import (
    ServiceBase,
    filter_fingerprint,
    identifier,
    json_text,
    page_size,
)
from jarvis_memory_server.store.backend import Database, now_us
from jarvis_memory_server.store.preferences import PreferenceRow, PreferenceStore

__all__ = ["PreferenceRow", "PreferenceService"]

MAX_VALUE_BYTES = 65536
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


class PreferenceService(ServiceBase):
    """Gets, sets (upserts), lists and deletes preferences."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._store = PreferenceStore(db)

    def set(self, namespace: str, key: str, value: Any) -> PreferenceRow:
        """Create or replace a preference; its value is any JSON value.

        Raises InvalidArgument for a malformed key or an oversized value.
        """
        _check_key(key)
        text = json_text(value, "value", MAX_VALUE_BYTES)
        with self._db.write() as txn:
            row, _ = self._store.upsert(
                txn, {"namespace": namespace, "key": key, "value": text, "now": now_us()}
            )
            return row

    def get(self, namespace: str, key: str) -> PreferenceRow:
        """Return a preference. Raises NotFound, InvalidArgument."""
        _check_key(key)
        row = self._store.get(namespace, key)
        if row is None:
            raise _not_found(namespace, key)
        return row

    def delete(self, namespace: str, key: str) -> None:
        """Delete a preference. Raises NotFound, InvalidArgument."""
        _check_key(key)
        with self._db.write() as txn:
            if not self._store.delete(txn, namespace, key, now_us()):
                raise _not_found(namespace, key)

    def list_page(
        self, namespace: str, *, prefix: str = "", size: int = 0, token: str = ""
    ) -> tuple[list[PreferenceRow], str]:
        """Return one page of preferences in key order, and the next page's token."""
        limit = page_size(size)
        fingerprint = filter_fingerprint(namespace, {"prefix": prefix})
        after = self._pages.decode_key_cursor(token, fingerprint) if token else ""
        rows = self._store.page(namespace, prefix, after, limit + 1)
        return self._pages.finish_page(rows, limit, fingerprint, lambda r: {"key": r.key})


def _check_key(key: str) -> None:
    identifier(key, _KEY, "key",
               "1 to 128 letters, digits or '._:/-', starting with a letter or digit")


def _not_found(namespace: str, key: str) -> NotFound:
    return NotFound(
        f"preference {key!r} does not exist in namespace {namespace!r}",
        reason="PREFERENCE_NOT_FOUND", namespace=namespace, key=key,
    )
