"""SQLite's operational failures, translated into the daemon's named errors."""

from __future__ import annotations

import apsw

from jarvis_memory_server.errors import DataLoss, ResourceExhausted, Unavailable


class _SpaceRefusal:
    """Why the SpaceGuard (store/sqlite.py) refuses writes that add data, while it does.

    It refuses them through an SQLite authorizer, so such a write fails with SQLITE_AUTH;
    a write beyond its hard cap (PRAGMA max_page_count) fails with SQLITE_FULL.
    """

    message = "the disk holding the database is full: delete data or free disk space"
    reason = "DISK_FULL"


_REFUSAL = _SpaceRefusal()


def set_space_refusal(message: str, reason: str) -> None:
    """Record what a write refused for lack of room is told (called by the SpaceGuard)."""
    _REFUSAL.message, _REFUSAL.reason = message, reason


def translate_error(exc: BaseException) -> BaseException:
    """Return the named error for an SQLite failure (other exceptions are returned as they are)."""
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return Unavailable(f"the database is busy, retry later ({exc})")
    if isinstance(exc, apsw.FullError | apsw.AuthError):
        return ResourceExhausted(_REFUSAL.message, reason=_REFUSAL.reason)
    if isinstance(exc, apsw.CorruptError):
        return DataLoss(f"the database file is corrupt ({exc})")
    return exc


_TRANSLATED = (apsw.BusyError, apsw.LockedError, apsw.FullError, apsw.AuthError,
               apsw.CorruptError)


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
