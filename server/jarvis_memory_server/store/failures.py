"""SQLite's operational failures, translated into the daemon's named errors."""

from __future__ import annotations

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


_TRANSLATED = (apsw.BusyError, apsw.LockedError, apsw.FullError, apsw.CorruptError)


class _StorageErrors:
    # A class, not @contextmanager: this wraps every query, and a generator costs ~1 µs more.
    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is not None and isinstance(exc, _TRANSLATED):
            raise translate_error(exc) from exc


_STORAGE_ERRORS = _StorageErrors()


def storage_errors() -> _StorageErrors:
    """Return a context manager that raises SQLite's operational failures as named errors."""
    return _STORAGE_ERRORS
