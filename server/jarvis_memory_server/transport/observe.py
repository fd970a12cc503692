"""What the daemon tells operators: Prometheus metrics, /livez and /readyz, the access log.

Every call of a jarvis service goes through the wrappers of transport/rpc.py, which report to
``current`` (a Calls) when one is set, and do nothing more when none is: a daemon without
``--metrics-addr``, ``--access-log`` and ``--slow-call-ms`` pays one global lookup per call.
grpcio's own health and reflection servicers are not counted.

Call metrics have the names and labels of the gRPC ecosystem (go-grpc-prometheus,
py-grpc-prometheus): grpc_server_started_total, grpc_server_handled_total (grpc_code is the
status code's name: OK, NOT_FOUND, ...) and the grpc_server_handling_seconds histogram, each
labelled grpc_type, grpc_service, grpc_method. Their children are looked up once per method
and kept, so that a call costs two counter increments and one histogram observation (about
2.5 µs). The daemon's own metrics are named jarvis_memory_*; those that are a state rather
than an event (sizes, revision, watchers, pool) are read when Prometheus scrapes. No label
ever carries a namespace or any other text a client chose.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from jarvis_memory_server import __version__
from jarvis_memory_server.config import split_addr
from jarvis_memory_server.errors import StartupError
from jarvis_memory_server.logs import ACCESS_LOGGER, call_fields, log_call
from jarvis_memory_server.service.auth import CALLER
from jarvis_memory_server.service.common import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from jarvis_memory_server.service.watch import WatchService
    from jarvis_memory_server.store.backend import Database

log = logging.getLogger("jarvis_memory")
access_log = logging.getLogger(ACCESS_LOGGER)

CALL_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# Calls here take from tens of µs (a read) to seconds (a search on a large namespace, a
# backup): the ecosystem's default buckets start at 5 ms, these go further down.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
SCRAPE_QUERY_TIMEOUT_S = 2.0  # PostgreSQL's database size, asked at scrape time


class Metrics:
    """The daemon's Prometheus registry (its own, not prometheus_client's global one)."""

    def __init__(self) -> None:
        # No *_created series beside every counter and histogram (the text format shows them
        # as samples of their own); a process-wide setting, and the process is the daemon's.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        self.started = Counter(
            "grpc_server_started", "Total number of RPCs started on the server.",
            CALL_LABELS, registry=self.registry)
        self.handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*CALL_LABELS, "grpc_code"), registry=self.registry)
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.", CALL_LABELS, buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.commit_writes = Histogram(
            "jarvis_memory_commit_writes",
            "Writes per group commit (one transaction commits every write of a batch).",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.commit_seconds = Histogram(
            "jarvis_memory_commit_duration_seconds",
            "Time from a batch's hand-off to its commit until writers are told it committed.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.search_seconds = Histogram(
            "jarvis_memory_search_duration_seconds",
            "Time a search ran in a search thread, by mode (keyword, vector, hybrid).",
            ("mode",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self._search_modes: dict[str, Any] = {}

    def observe_commit(self, writes: int, seconds: float) -> None:
        """A batch of ``writes`` writes committed in ``seconds`` (GroupCommitter.on_batch)."""
        self.commit_writes.observe(writes)
        self.commit_seconds.observe(seconds)

    def observe_search(self, mode: str, seconds: float) -> None:
        """A search of ``mode`` ran for ``seconds`` (SearchService.on_search; any thread)."""
        child = self._search_modes.get(mode)
        if child is None:  # the modes are a fixed set (validated before a search runs)
            child = self._search_modes[mode] = self.search_seconds.labels(mode)
        child.observe(seconds)

    def watch_daemon(self, db: Database, watch: WatchService) -> None:
        """Report the database's and the change feed's state at every scrape."""
        self.registry.register(DaemonState(db, watch))


class DaemonState:
    """The gauges computed when Prometheus scrapes (in the HTTP server's thread)."""

    def __init__(self, db: Database, watch: WatchService) -> None:
        self._db = db
        self._watch = watch

    def collect(self) -> Iterable[Metric]:
        """Read sizes, revision, watchers and pool use now."""
        yield InfoMetricFamily("jarvis_memory_build", "The daemon's version and backend.",
                               value={"version": __version__, "backend": self._db.kind})
        sizes = self._storage_bytes()
        if sizes is not None:
            yield GaugeMetricFamily(
                "jarvis_memory_database_size_bytes",
                "Size of the database: the SQLite file, or PostgreSQL's pg_database_size.",
                value=sizes[0])
            if self._db.kind == "sqlite":
                yield GaugeMetricFamily(
                    "jarvis_memory_wal_size_bytes", "Size of the SQLite write-ahead log file.",
                    value=sizes[1])
        yield GaugeMetricFamily(
            "jarvis_memory_revision",
            "The change log's last committed revision (the header.revision of responses).",
            value=self._db.revision)
        watchers, behind = self._watch.watcher_lag()
        yield GaugeMetricFamily("jarvis_memory_watchers", "Watch streams open.", value=watchers)
        yield GaugeMetricFamily(
            "jarvis_memory_watch_slowest_pending_changes",
            "Changes committed that the slowest watcher has not been sent yet; past "
            "--watch-buffer it is ended with RESOURCE_EXHAUSTED.", value=behind)
        pool = getattr(self._db, "read_executor", None)
        busy = getattr(pool, "busy", None)
        if isinstance(busy, int):  # PostgreSQL: threads with a connection each
            size = int(getattr(self._db, "pool_size", 0))
            yield GaugeMetricFamily(
                "jarvis_memory_db_pool_size", "Read connections the pool may open "
                "(--db-pool-size).", value=size)
            yield GaugeMetricFamily(
                "jarvis_memory_db_pool_in_use", "Read connections running a read.",
                value=min(busy, size))
            yield GaugeMetricFamily(
                "jarvis_memory_db_pool_waiting", "Reads waiting for a free connection.",
                value=max(0, busy - size))

    def _storage_bytes(self) -> tuple[int, int] | None:
        from jarvis_memory_server.store.admin import storage_bytes

        db = self._db
        try:
            if db.kind == "sqlite":
                return storage_bytes(db)  # two stat() calls
            # A query: on a pool connection, within the connection limit.
            executor: Executor | None = getattr(db, "read_executor", None)
            if executor is None:
                return None
            return executor.submit(storage_bytes, db).result(SCRAPE_QUERY_TIMEOUT_S)
        except Exception as exc:  # closed meanwhile (shutdown), timed out, server gone
            log.debug("metrics: database size not available: %r", exc)
            return None


class CallKind:
    """One RPC of one service: its metrics' children, looked up once."""

    __slots__ = ("_family", "_handled", "grpc_type", "handling", "method", "service",
                 "started", "stream")

    def __init__(self, metrics: Metrics | None, service: str, method: str, stream: bool) -> None:
        self.service = service
        self.method = method
        self.stream = stream
        self.grpc_type = "server_stream" if stream else "unary"
        labels = (self.grpc_type, service, method)
        self._handled: dict[grpc.StatusCode, Any] = {}
        self._family = metrics.handled if metrics is not None else None
        self.started = metrics.started.labels(*labels) if metrics is not None else None
        self.handling = metrics.handling.labels(*labels) if metrics is not None else None

    def handled(self, code: grpc.StatusCode) -> Any:
        """The handled_total child of a status code."""
        child = self._handled.get(code)
        if child is None:
            assert self._family is not None
            child = self._handled[code] = self._family.labels(
                self.grpc_type, self.service, self.method, code.name)
        return child


class Calls:
    """Where the RPC wrappers report each call: metrics, access log, slow calls (each optional).

    Used on the event loop thread only.
    """

    def __init__(
        self, metrics: Metrics | None, *, access_log: bool = False, slow_call_ms: float = 0.0
    ) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.slow_s = slow_call_ms / 1000
        self.kinds: dict[str, CallKind] = {}

    def add(self, key: str, servicer: Any, method: str, *, stream: bool) -> CallKind:
        """The CallKind of a handler (``key``: its qualified name), made on its first call."""
        descriptor = getattr(servicer, "descriptor", None)
        service = descriptor.full_name if descriptor is not None else type(servicer).__name__
        kind = self.kinds[key] = CallKind(self.metrics, service, method, stream)
        return kind

    def begin(self, kind: CallKind) -> None:
        """A call started."""
        if kind.started is not None:
            kind.started.inc()

    def end(
        self, kind: CallKind, code: grpc.StatusCode, seconds: float, request: Any, context: Any
    ) -> None:
        """A call ended with ``code`` after ``seconds``: count it, and log it if asked to."""
        if kind.handling is not None:
            kind.handled(code).inc()
            kind.handling.observe(seconds)
        if self.slow_s and seconds >= self.slow_s and not kind.stream:
            level = logging.WARNING
            note = f" (slower than {self.slow_s * 1000:g} ms)"
        elif self.access_log:
            level, note = logging.INFO, ""
        else:
            return
        if access_log.isEnabledFor(level):
            log_call(access_log, level,
                     fields_of(kind.method, kind.service, request, context, code, seconds), note)


def namespace_of(request: Any) -> str | None:
    """The namespace a request names ("*": one without a namespace field spans them all).

    None for a request that could not be decoded.
    """
    namespace = getattr(request, "namespace", None)
    if namespace is None:
        return "*" if hasattr(request, "DESCRIPTOR") else None
    return str(namespace) or DEFAULT_NAMESPACE


def fields_of(
    method: str, service: str | None, request: Any, context: Any, code: grpc.StatusCode,
    seconds: float | None,
) -> dict[str, Any]:
    """A call's log fields, from its request (only the namespace), context and caller."""
    try:
        peer = context.peer()
    except Exception:  # the call is gone
        peer = None
    return call_fields(method, service, namespace_of(request), code.name, seconds,
                       peer, CALLER.get())


# The Calls the RPC wrappers report to; None: nothing is measured or logged per call.
current: Calls | None = None


# -- the HTTP server ------------------------------------------------------------------------


class _Handler(WSGIRequestHandler):
    """No line per request on stderr (wsgiref's default)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the daemon's exit

    def server_bind(self) -> None:
        # WSGIServer's would look the host's name up in the DNS (socket.getfqdn).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """/metrics, /livez and /readyz over HTTP, served by a thread of its own.

    /readyz answers 200 only while ``ready``: the daemon sets it once it serves and clears it
    when it starts draining (SIGTERM), so that a load balancer stops sending calls first.
    """

    def __init__(self, addr: str, registry: CollectorRegistry) -> None:
        host, port = split_addr(addr)
        self.ready = False
        self.draining = False
        self._metrics = make_wsgi_app(registry)
        server_class: type[_Server] = _Server
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            if infos and infos[0][0] == socket.AF_INET6:
                server_class = _Server6
            self._server = make_server(host, port, self._app, server_class, _Handler)
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {addr}: {exc.strerror or exc}") from exc
        bound_host, bound_port = str(self._server.server_address[0]), self._server.server_port
        self.addr = (f"[{bound_host}]:{bound_port}" if ":" in bound_host
                     else f"{bound_host}:{bound_port}")
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/livez":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            if self.ready:
                return _text(start_response, "200 OK", "ready\n")
            state = "draining" if self.draining else "starting"
            return _text(start_response, "503 Service Unavailable", f"not ready: {state}\n")
        return _text(start_response, "404 Not Found",
                     "not found: /metrics, /livez and /readyz are served here\n")

    def stop_ready(self) -> None:
        """Answer /readyz with 503 from now on: the daemon is draining."""
        self.draining = True
        self.ready = False

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _text(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                             ("Content-Length", str(len(data)))])
    return [data]
