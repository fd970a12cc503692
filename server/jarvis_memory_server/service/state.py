"""Agent state rules: keys, compare-and-swap versions, time-to-live."""

from __future__ import annotations

import re
from typing import Any

from jarvis_memory_server.errors import Aborted, InvalidArgument, NotFound
from jarvis_memory_server.service.common import (
    ServiceBase,
    filter_fingerprint,
    identifier,
    json_text,
    page_size,
)
from jarvis_memory_server.store.backend import Database, now_us
from jarvis_memory_server.store.state import StateRow, StateStore

__all__ = ["StateRow", "StateService"]

MAX_VALUE_BYTES = 1024 * 1024
PURGE_BATCH = 1000
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}")


class StateService(ServiceBase):
    """Gets, puts (optionally conditional), deletes and lists state; purges expired keys."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._store = StateStore(db)

    def get(self, namespace: str, key: str) -> StateRow:
        """Return a live entry. Raises NotFound (also once it expired), InvalidArgument."""
        _check_key(key)
        row = self._store.get(namespace, key)
        if row is None or not row.live(now_us()):
            raise _not_found(namespace, key)
        return row

    def put(
        self, namespace: str, key: str, value: Any, *, expected_version: int | None = None,
        ttl_us: int | None = None,
    ) -> StateRow:
        """Create or replace an entry; its version becomes the current one plus one.

        With ``expected_version`` (0: must not exist) the put happens only if the entry is at
        that version; otherwise Aborted, and nothing changes. Raises InvalidArgument.
        """
        _check_key(key)
        if expected_version is not None and expected_version < 0:
            raise InvalidArgument("expected_version", "must not be negative")
        if ttl_us is not None and ttl_us < 0:
            raise InvalidArgument("ttl", "must not be negative")
        text = json_text(value, "value", MAX_VALUE_BYTES)
        now = now_us()
        with self._db.write() as txn:
            version = self._store.live_version(txn, namespace, key, now)
            _check_version(namespace, key, expected_version, version)
            return self._store.put(
                txn,
                {"namespace": namespace, "key": key, "value": text, "version": version + 1,
                 "expires_at": now + ttl_us if ttl_us else None, "now": now},
                created=version == 0,
            )

    def delete(self, namespace: str, key: str, *, expected_version: int | None = None) -> None:
        """Delete an entry, if at ``expected_version`` when given (else Aborted).

        Raises NotFound for an absent key without expected_version, InvalidArgument.
        """
        _check_key(key)
        now = now_us()
        with self._db.write() as txn:
            version = self._store.live_version(txn, namespace, key, now)
            if expected_version is not None:
                _check_version(namespace, key, expected_version, version)
            if version == 0:
                raise _not_found(namespace, key)
            self._store.delete(txn, namespace, key, now)

    def list_page(
        self, namespace: str, *, prefix: str = "", size: int = 0, token: str = ""
    ) -> tuple[list[StateRow], str]:
        """Return one page of live entries in key order, and the next page's token."""
        limit = page_size(size)
        fingerprint = filter_fingerprint(namespace, {"prefix": prefix})
        after = self._pages.decode_key_cursor(token, fingerprint) if token else ""
        rows = self._store.page(namespace, prefix, after, limit + 1, now_us())
        return self._pages.finish_page(rows, limit, fingerprint, lambda r: {"key": r.key})

    def purge_expired(self) -> int:
        """Delete up to PURGE_BATCH expired entries; return how many."""
        now = now_us()
        if not self._store.any_expired(now):
            return 0
        with self._db.write() as txn:
            return self._store.purge_expired(txn, now, PURGE_BATCH)


def _check_key(key: str) -> None:
    identifier(key, _KEY, "key",
               "1 to 256 letters, digits or '._:/-', starting with a letter or digit")


def _check_version(namespace: str, key: str, expected: int | None, actual: int) -> None:
    if expected is None or expected == actual:
        return
    state = f"is at version {actual}" if actual else "does not exist"
    raise Aborted(
        f"state {key!r} {state}, not at the expected version {expected}; read it and retry",
        reason="VERSION_MISMATCH", namespace=namespace, key=key, version=str(actual),
    )


def _not_found(namespace: str, key: str) -> NotFound:
    return NotFound(
        f"state {key!r} does not exist in namespace {namespace!r}",
        reason="STATE_NOT_FOUND", namespace=namespace, key=key,
    )
