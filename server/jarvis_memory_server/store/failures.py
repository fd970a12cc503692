"""SQLite's operational failures, translated into the daemon's named errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import apsw

from jarvis_memory_server.errors import DataLoss, ResourceExhausted, Unavailable


def translate_error(exc: BaseException) -> BaseException:
    """Return the named error for an SQLite failure (other exceptions are returned as they are)."""
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return Unavailable(f"the database is busy, retry later ({exc})")
    if isinstance(exc, apsw.FullError):
        return ResourceExhausted(f"the disk is full ({exc})", reason="DISK_FULL")
    if isinstance(exc, apsw.CorruptError):
        return DataLoss(f"the database file is corrupt ({exc})")
    return exc


@contextmanager
def storage_errors() -> Iterator[None]:
    """Raise SQLite's busy, disk-full and corruption failures as named errors."""
    try:
        yield
    except (apsw.BusyError, apsw.LockedError, apsw.FullError, apsw.CorruptError) as exc:
        raise translate_error(exc) from exc
