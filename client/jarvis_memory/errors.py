"""Exceptions raised by the SDK: one class per gRPC status code, keeping code and details."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class JarvisMemoryError(Exception):
    """A call failed.

    ``code`` is the gRPC status; ``reason`` and ``metadata`` come from the server's
    google.rpc.ErrorInfo (``reason`` is "" when the server sent none).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.metadata = metadata or {}

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(JarvisMemoryError):
    """The request had a malformed or out-of-range field.

    Raised by the daemon, and by the SDK itself, before sending anything, for an argument it
    cannot send as given (see ``for_argument``). Either way ``metadata["field"]`` names the
    field or argument.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def for_argument(cls, field: str, problem: str) -> InvalidArgument:
        """The client-side error for argument ``field`` ("attributes.scores[2]").

        The message reads ``"<field>: <problem>"``, as the daemon's do; the reason is
        INVALID_ARGUMENT and the metadata ``{"field": field}``.
        """
        return cls(f"{field}: {problem}", reason="INVALID_ARGUMENT", metadata={"field": field})


class NotFound(JarvisMemoryError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(JarvisMemoryError):
    """The write would violate a uniqueness rule."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(JarvisMemoryError):
    """The resource's state forbids the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(JarvisMemoryError):
    """A version check failed; re-read and retry."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(JarvisMemoryError):
    """A revision or position is outside what the server still holds."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unauthenticated(JarvisMemoryError):
    """The credential is missing, malformed, expired or revoked."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(JarvisMemoryError):
    """The credential does not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(JarvisMemoryError):
    """A size limit or quota was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(JarvisMemoryError):
    """The daemon could not be reached or is busy; safe calls were already retried."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(JarvisMemoryError):
    """The call did not finish before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(JarvisMemoryError):
    """The server's database is corrupt."""

    code = grpc.StatusCode.DATA_LOSS


class Internal(JarvisMemoryError):
    """The server failed; its log has the details."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[JarvisMemoryError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Aborted, OutOfRange,
        Unauthenticated, PermissionDenied, ResourceExhausted, Unavailable, DeadlineExceeded,
        DataLoss, Internal,
    )
}


def from_rpc_error(error: grpc.RpcError) -> JarvisMemoryError:
    """Turn a grpc.RpcError (sync or aio) into the matching JarvisMemoryError subclass."""
    call: Any = error
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    reason, metadata = "", {}
    for key, value in call.trailing_metadata() or ():
        if key == _STATUS_DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
    cls = _BY_CODE.get(code, JarvisMemoryError)
    return cls(message, code=code, reason=reason, metadata=metadata)
