"""How every RPC is registered and run: decoding, write scheduling, the one error table.

The table turns the daemon's named errors into gRPC statuses with a google.rpc.ErrorInfo.
Requests are decoded by a deserializer that cannot fail (see ``register``): a request that is
not a valid message reaches the handler's wrapper as an ``Undecodable``, which answers it with
INVALID_ARGUMENT through the same table, instead of grpcio's UNKNOWN.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar, overload

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from jarvis.memory.v1 import common_pb2
from jarvis_memory_server import errors
from jarvis_memory_server.logs import CALL_FIELDS
from jarvis_memory_server.service.auth import CALLER, Authenticator
from jarvis_memory_server.service.common import DEFAULT_NAMESPACE, ServiceBase
from jarvis_memory_server.store.writes import pending_commit
from jarvis_memory_server.transport import observe

log = logging.getLogger("jarvis_memory.rpc")

ERROR_DOMAIN = "jarvis-memory"

STATUS_OF: dict[type[errors.JarvisError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}

Request = TypeVar("Request")
Response = TypeVar("Response")


class Servicer(Protocol):
    """What the RPC wrappers need from a servicer."""

    auth: Authenticator
    access: dict[str, str]

    @property
    def read_executor(self) -> Executor | None:
        """Where synchronous read handlers run (None: on the event loop)."""

    @property
    def revision(self) -> int:
        """The store's last committed revision, for the headers of read responses."""

    async def run_write(self, body: Callable[[], Response]) -> tuple[Response, int | None]:
        """Run a handler's body in the group commit and wait until it is committed."""


class ServicerBase:
    """Gives a servicer what the RPC wrappers need: its service, auth, and each RPC's access.

    The access each RPC needs comes from its proto option (jarvis.memory.v1.access); start-up
    fails if an RPC has none, or if a read_rpc handler serves an RPC declared as a write or
    the other way round.
    """

    def __init__(
        self, service: ServiceBase, auth: Authenticator, descriptor: ServiceDescriptor
    ) -> None:
        self._service = service
        self.auth = auth
        self.descriptor = descriptor
        self.access = {}
        for method in descriptor.methods:
            level = ACCESS_NAMES.get(method.GetOptions().Extensions[common_pb2.access])
            if level is None:
                raise TypeError(f"{method.full_name} declares no access option")
            writes = getattr(getattr(type(self), method.name), "writes", None)
            if writes is None or (writes != (level != "read") and level != "admin"):
                raise TypeError(f"{method.full_name}: handler kind does not match {level} access")
            self.access[method.name] = level

    @property
    def revision(self) -> int:
        """The last committed revision (for read responses' headers)."""
        return self._service.revision

    @property
    def read_executor(self) -> Executor | None:
        """Where synchronous read handlers run (None: on the event loop)."""
        return self._service.read_executor

    async def run_write(self, body: Callable[[], Response]) -> tuple[Response, int | None]:
        """Run a handler's body in the group commit and wait until it is committed."""
        return await self._service.run_write(body)


ACCESS_NAMES = {
    common_pb2.ACCESS_READ: "read",
    common_pb2.ACCESS_WRITE: "write",
    common_pb2.ACCESS_ADMIN: "admin",
}


def check_credentials(servicer: Servicer, method: str, request: Any, context: Any) -> None:
    """Authenticate and authorize a call when auth is on.

    Raises Unauthenticated and PermissionDenied.
    """
    auth = servicer.auth
    if not auth.enabled:
        return
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value
            break
    principal = auth.authenticate(authorization)
    CALLER.set(principal.subject)  # the history of what this call changes keeps it
    if isinstance(request, Undecodable):
        return  # its namespace is unknown: the wrapper refuses it as INVALID_ARGUMENT next
    # A request without a namespace field spans every namespace: it needs a credential for "*".
    namespace = getattr(request, "namespace", "*") or DEFAULT_NAMESPACE
    auth.authorize(principal, namespace, servicer.access[method])


S = TypeVar("S", bound=Servicer)
Handler = Callable[[S, Request, grpc.aio.ServicerContext], Response]
Wrapped = Callable[[S, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def status_of(exc: errors.JarvisError) -> grpc.StatusCode:
    """Return the gRPC status code for a named error."""
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status code a call that raised ``exc`` ends with (as abort() answers it)."""
    if isinstance(exc, errors.JarvisError):
        return status_of(exc)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # the client went away
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def rich_status(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> Any:
    """Build a grpc.Status carrying google.rpc.Status with an ErrorInfo detail."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])
    )


def _guarded(
    handler: Any, writes: bool,
    run: Callable[[S, Request, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Wrapped[S, Request, Response]:
    """The wrapper every unary handler gets: auth, undecodable requests, the error table.

    With metrics or call logs on (observe.current), it also times the call and reports how it
    ended; with them off, that costs one global lookup.
    """
    method, key = handler.__name__, handler.__qualname__

    @functools.wraps(handler)
    async def wrapper(self: S, request: Request, context: grpc.aio.ServicerContext) -> Response:
        calls = observe.current
        if calls is not None:
            kind = calls.kinds.get(key) or calls.add(key, self, method, stream=False)
            calls.begin(kind)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            check_credentials(self, method, request, context)
            if isinstance(request, Undecodable):
                raise request.error
            return await run(self, request, context)
        except BaseException as exc:
            code = code_of(exc)
            if isinstance(exc, Exception):
                await abort(context, method, exc, request, self, started)
            raise
        finally:
            if calls is not None:
                calls.end(kind, code, time.perf_counter() - started, request, context)

    wrapper.writes = writes  # type: ignore[attr-defined]
    return wrapper


@overload
def read_rpc(handler: Wrapped[S, Request, Response]) -> Wrapped[S, Request, Response]: ...
@overload
def read_rpc(handler: Handler[S, Request, Response]) -> Wrapped[S, Request, Response]: ...
def read_rpc(handler: Any) -> Any:
    """Wrap a handler that only reads; fill its response header.

    The handler is synchronous, or a coroutine when it hands long work to a worker thread.
    A synchronous one runs on the event loop, where reads cost microseconds (SQLite), or in
    the database's read executor where each read waits for a server (PostgreSQL).
    """
    synchronous = not inspect.iscoroutinefunction(handler)

    async def run(self: S, request: Request, context: grpc.aio.ServicerContext) -> Response:
        executor = self.read_executor
        if synchronous and executor is not None:
            response: Response = await asyncio.get_running_loop().run_in_executor(
                executor, handler, self, request, context)
        else:
            result = handler(self, request, context)
            response = await result if inspect.isawaitable(result) else result
        if pending_commit() is not None:  # a write here would be answered uncommitted
            raise RuntimeError(f"{handler.__name__} is a read_rpc but wrote")
        response.header.revision = self.revision  # type: ignore[attr-defined]
        return response

    return _guarded(handler, False, run)


def write_rpc(handler: Handler[S, Request, Response]) -> Wrapped[S, Request, Response]:
    """Wrap a synchronous handler that may write.

    It runs once the writer connection is free, and is answered only after the group commit
    holding its writes succeeded; its response header then carries its last revision. When
    another write's failure rolled its batch back, it runs again (GroupCommitter.run).
    """
    async def run(self: S, request: Request, context: grpc.aio.ServicerContext) -> Response:
        response, revision = await self.run_write(lambda: handler(self, request, context))
        # No revision: nothing changed (only possible for a no-op write).
        response.header.revision = (  # type: ignore[attr-defined]
            self.revision if revision is None else revision)
        return response

    return _guarded(handler, True, run)


def steps_rpc(handler: Wrapped[S, Request, Response]) -> Wrapped[S, Request, Response]:
    """Wrap a coroutine handler that writes in several steps (``await self.run_write``).

    Each step is committed before the next runs, so other writers go between them; the
    response header carries the revision the daemon had reached when the last step ended.
    """
    async def run(self: S, request: Request, context: grpc.aio.ServicerContext) -> Response:
        response = await handler(self, request, context)
        response.header.revision = self.revision  # type: ignore[attr-defined]
        return response

    return _guarded(handler, True, run)


def stream_rpc(
    handler: Callable[[S, Request, grpc.aio.ServicerContext], AsyncIterator[Response]],
) -> Callable[[S, Request, grpc.aio.ServicerContext], AsyncIterator[Response]]:
    """Wrap a server-streaming handler (an async generator): auth and the error table.

    With metrics or call logs on, the call is timed from its start to its stream's end.
    """
    method, key = handler.__name__, handler.__qualname__

    @functools.wraps(handler)
    async def wrapper(
        self: S, request: Request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Response]:
        calls = observe.current
        kind = None
        if calls is not None:
            kind = calls.kinds.get(key) or calls.add(key, self, method, stream=True)
            calls.begin(kind)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            check_credentials(self, method, request, context)
            if isinstance(request, Undecodable):
                raise request.error
            async for response in handler(self, request, context):
                yield response
        except BaseException as exc:
            code = code_of(exc)
            if not isinstance(exc, Exception):
                raise  # cancelled, or closed: the client went away
            await abort(context, method, exc, request, self, started)
        finally:
            if calls is not None and kind is not None:
                calls.end(kind, code, time.perf_counter() - started, request, context)

    wrapper.writes = False  # type: ignore[attr-defined]
    return wrapper


class UndecodableRequest(errors.InvalidArgument):
    """A request that is not a valid message of its RPC's request type."""

    def __init__(self, type_name: str, detail: str) -> None:
        errors.JarvisError.__init__(
            self, f"the request is not a valid {type_name}: {detail}",
            reason="REQUEST_UNDECODABLE", field="request",
        )
        self.field = "request"


class Undecodable:
    """What the deserializer hands on for bytes that are not a valid request message.

    Bytes fail to parse when a string field is not valid UTF-8, when messages nest deeper than
    protobuf's recursion limit (100; a deep Struct or Value), or when the wire format is broken.
    """

    __slots__ = ("error",)

    def __init__(self, error: UndecodableRequest) -> None:
        self.error = error


def request_decoder(message_class: Any) -> Callable[[bytes], Any]:
    """A deserializer that cannot fail: the message, or an Undecodable saying why not."""
    parse = message_class.FromString
    type_name = message_class.DESCRIPTOR.name

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, and anything else the parser may raise
            detail = str(exc).rpartition(": ")[2] or type(exc).__name__
            return Undecodable(UndecodableRequest(type_name, _DECODE_ERRORS.get(detail, detail)))

    return decode


# The parser's (upb's) words for why bytes do not decode, in the caller's terms.
_DECODE_ERRORS = {
    "String field had bad UTF-8": "a string field is not valid UTF-8",
    "Exceeded upb_DecodeOptions_MaxDepth": "messages nest deeper than protobuf's limit of 100 "
                                           "(a Struct or Value nested too deeply)",
    "Wire format was corrupt": "the protobuf wire format is corrupt",
}


def register(
    servicer: ServicerBase, server: grpc.aio.Server,
    serializers: dict[str, Callable[[Any], bytes]] | None = None,
) -> None:
    """Serve a servicer's RPCs on ``server``: the one registration of every jarvis service.

    Unlike the generated ``add_*Servicer_to_server``, requests are decoded by request_decoder,
    so that one that does not parse is answered by the daemon (INVALID_ARGUMENT) and not by
    grpcio (UNKNOWN "Unexpected DecodeError"). ``serializers`` overrides how the responses of
    the named RPCs are serialised (WatchService yields bytes it assembled itself).
    """
    descriptor = servicer.descriptor
    handlers = {}
    for method in descriptor.methods:
        serialize = (serializers or {}).get(method.name) or GetMessageClass(
            method.output_type).SerializeToString
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        if method.client_streaming:
            raise TypeError(f"{method.full_name}: client streaming is not supported")
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request_decoder(GetMessageClass(method.input_type)),
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    server.add_registered_method_handlers(descriptor.full_name, handlers)


async def abort(
    context: grpc.aio.ServicerContext, method: str, exc: Exception, request: Any = None,
    servicer: Any = None, started: float | None = None,
) -> None:
    """End the call with the status for ``exc``, and log it (with a traceback if INTERNAL).

    The line carries the call's fields (shown by --log-format json): its namespace, code,
    peer and credential, and its duration so far when ``started`` (a perf_counter()) is given.
    """
    code = code_of(exc)
    level = logging.INFO if isinstance(exc, errors.JarvisError) else logging.ERROR
    extra = None
    if log.isEnabledFor(level):
        descriptor = getattr(servicer, "descriptor", None)
        extra = {CALL_FIELDS: observe.fields_of(
            method, None if descriptor is None else descriptor.full_name, request, context,
            code, None if started is None else time.perf_counter() - started)}
    if isinstance(exc, errors.JarvisError):
        log.info("rpc %s failed: %s %s", method, code.name, exc.message, extra=extra)
        status = rich_status(code, exc.message, exc.reason, exc.metadata)
    else:
        log.error("rpc %s failed: INTERNAL", method, exc_info=exc, extra=extra)
        status = rich_status(
            grpc.StatusCode.INTERNAL, "internal error; see the daemon's log", "INTERNAL", {}
        )
    await context.abort_with_status(status)
