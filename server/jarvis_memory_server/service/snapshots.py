"""Snapshot rules: kinds, size, retention (newest N per kind, maximum age)."""

from __future__ import annotations

import re
from typing import Any

from jarvis_memory_server.errors import InvalidArgument, NotFound
from jarvis_memory_server.service.common import (
    ServiceBase,
    filter_fingerprint,
    identifier,
    json_text,
    page_size,
)
from jarvis_memory_server.store.backend import Database, now_us
from jarvis_memory_server.store.snapshots import SnapshotRow, SnapshotStore

__all__ = ["SnapshotRow", "SnapshotService"]

DEFAULT_KIND = "cluster"
MAX_DATA_BYTES = 4 * 1024 * 1024
AGE_SWEEP_BATCH = 1000
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_FAR_FUTURE = 2**62


class SnapshotService(ServiceBase):
    """Saves and reads snapshots, and applies the retention settings."""

    def __init__(self, db: Database, *, keep: int = 1000, max_age_s: float = 0) -> None:
        super().__init__(db)
        self._store = SnapshotStore(db)
        self.keep = keep
        self.max_age_s = max_age_s

    def save(self, namespace: str, kind: str, data: dict[str, Any] | None) -> SnapshotRow:
        """Save a snapshot of a kind ("" means cluster), then keep only the newest N of it.

        Raises InvalidArgument for a missing or oversized document or a malformed kind.
        """
        kind = _kind(kind)
        if data is None:
            raise InvalidArgument("data", "is required")
        text = json_text(data, "data", MAX_DATA_BYTES)
        now = now_us()
        with self._db.write() as txn:
            row = self._store.insert(txn, {"namespace": namespace, "kind": kind, "data": text,
                                           "now": now})
            if self.keep > 0:
                self._store.keep_newest(txn, namespace, kind, self.keep, now)
            return row

    def latest(self, namespace: str, kind: str) -> SnapshotRow:
        """Return the newest snapshot of a kind. Raises NotFound when there is none."""
        kind = _kind(kind)
        rows = self._store.page(namespace, kind, 0, (_FAR_FUTURE, _FAR_FUTURE), 1)
        if not rows:
            raise NotFound(
                f"no {kind!r} snapshot in namespace {namespace!r}",
                reason="SNAPSHOT_NOT_FOUND", namespace=namespace, kind=kind,
            )
        return rows[0]

    def list_page(
        self, namespace: str, kind: str, *, since: int | None = None, size: int = 0,
        token: str = "",
    ) -> tuple[list[SnapshotRow], str]:
        """Return one page of a kind's snapshots, newest first, and the next page's token."""
        kind = _kind(kind)
        limit = page_size(size)
        fingerprint = filter_fingerprint(namespace, {"kind": kind, "since": since})
        cursor = (self._pages.decode_cursor(token, fingerprint) if token
                  else (_FAR_FUTURE, _FAR_FUTURE))
        rows = self._store.page(namespace, kind, since or 0, cursor, limit + 1)
        return self._pages.finish_page(
            rows, limit, fingerprint, lambda r: {"at": r.taken_at, "id": r.id})

    def drop_old(self) -> int:
        """Delete up to AGE_SWEEP_BATCH snapshots older than the maximum age (if one is set)."""
        if self.max_age_s <= 0:
            return 0
        now = now_us()
        with self._db.write() as txn:
            return self._store.delete_older(
                txn, now - int(self.max_age_s * 1_000_000), AGE_SWEEP_BATCH, now
            )


def _kind(kind: str) -> str:
    return identifier(kind or DEFAULT_KIND, _KIND, "kind", "1 to 64 letters, digits or '._:-'")
