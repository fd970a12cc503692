"""The one table that turns the daemon's named errors into gRPC statuses (with ErrorInfo)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from jarvis_memory_server import errors

log = logging.getLogger("jarvis_memory.rpc")

ERROR_DOMAIN = "jarvis-memory"

STATUS_OF: dict[type[errors.JarvisError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}

Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer")


def status_of(exc: errors.JarvisError) -> grpc.StatusCode:
    """Return the gRPC status code for a named error."""
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> Any:
    """Build a grpc.Status carrying google.rpc.Status with an ErrorInfo detail."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])
    )


def unary(
    handler: Callable[[Servicer, Request, grpc.aio.ServicerContext], Response],
) -> Callable[[Servicer, Request, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Wrap a synchronous unary handler: run it on the loop, map errors, log failures.

    Handlers are plain functions: the database work is synchronous on the event loop thread, so
    a coroutine per handler would only add cost.
    """
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(
        self: Servicer, request: Request, context: grpc.aio.ServicerContext
    ) -> Response:
        try:
            return handler(self, request, context)
        except errors.JarvisError as exc:
            code = status_of(exc)
            log.info("rpc %s failed: %s %s", method, code.name, exc.message)
            status = rich_status(code, exc.message, exc.reason, exc.metadata)
        except Exception:
            log.exception("rpc %s failed: INTERNAL", method)
            status = rich_status(
                grpc.StatusCode.INTERNAL, "internal error; see the daemon's log", "INTERNAL", {}
            )
        await context.abort_with_status(status)
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    return wrapper


