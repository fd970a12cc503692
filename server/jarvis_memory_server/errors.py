"""Named errors raised by the store and service layers.

The transport layer maps each class to one gRPC status code (transport/errors.py); no other
layer knows about gRPC. ``reason`` is a stable, machine-readable identifier that clients receive
in ``google.rpc.ErrorInfo`` so that they never have to parse messages.
"""

from __future__ import annotations


class JarvisError(Exception):
    """Base class: a request that cannot be carried out, with a message for the caller."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata


class InvalidArgument(JarvisError):
    """A field of the request is malformed, out of range or missing."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {message}", reason=reason, field=field)
        self.field = field


class NotFound(JarvisError):
    """The resource the request names does not exist (in this namespace)."""

    reason = "NOT_FOUND"


class AlreadyExists(JarvisError):
    """Creating or changing the resource would violate a uniqueness rule."""

    reason = "ALREADY_EXISTS"


class Unauthenticated(JarvisError):
    """The credential is missing, malformed, expired, badly signed, unknown or revoked."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(JarvisError):
    """The credential is valid but does not allow this call (role or namespace)."""

    reason = "PERMISSION_DENIED"


class FailedPrecondition(JarvisError):
    """The resource's state forbids the operation (already ended, already finished...)."""

    reason = "FAILED_PRECONDITION"


class Aborted(JarvisError):
    """An optimistic-concurrency check (expected version) failed; re-read and retry."""

    reason = "ABORTED"


class OutOfRange(JarvisError):
    """A position outside what the store holds (a compacted revision)."""

    reason = "OUT_OF_RANGE"


class ResourceExhausted(JarvisError):
    """A quota or size limit was hit, or the disk is full."""

    reason = "RESOURCE_EXHAUSTED"


class Unavailable(JarvisError):
    """The daemon cannot serve the request now (shutting down, database busy); retry later."""

    reason = "UNAVAILABLE"


class BatchRolledBack(Unavailable):
    """The write's group commit was rolled back because another write in it failed.

    The write was undone and never acknowledged, so it may simply run again.
    """

    reason = "BATCH_ROLLED_BACK"


class DataLoss(JarvisError):
    """The database file is corrupt."""

    reason = "DATA_LOSS"


class StartupError(Exception):
    """The daemon cannot start (bad database file, schema newer than the code, bad config)."""
