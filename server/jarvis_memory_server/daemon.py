"""The daemon: one grpc.aio server on one event loop, owning the database.

Why grpc.aio with the database on the loop thread: a health Check costs a few hundred µs of
daemon CPU while SQLite's share of a write is tens of µs, so the transport dominates; the
thread-pool server reached the same health Check rate here, but would hand every request to a
pool thread and every write on to a single writer thread. Running the short SQLite calls inline
avoids those hand-offs and makes the writes of one loop iteration one group commit with no lock
contention (see store/writes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import pathlib
import signal
import socket
import time
from collections.abc import Callable

import apsw
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jarvis.memory.v1 import (
    admin_pb2,
    audit_pb2,
    collection_pb2,
    context_pb2,
    event_pb2,
    memory_pb2,
    preference_pb2,
    session_pb2,
    snapshot_pb2,
    state_pb2,
    watch_pb2,
)
from jarvis_memory_server import __version__, logs
from jarvis_memory_server.config import Config, split_addr
from jarvis_memory_server.errors import StartupError
from jarvis_memory_server.service.admin import AdminService, remove_stale_staging
from jarvis_memory_server.service.audit import AuditService
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.collections import CollectionService
from jarvis_memory_server.service.context import ContextService
from jarvis_memory_server.service.events import EventService
from jarvis_memory_server.service.memories import ERASE_BATCH, MemoryService
from jarvis_memory_server.service.preferences import PreferenceService
from jarvis_memory_server.service.search import SearchService
from jarvis_memory_server.service.sessions import IDLE_SWEEP_BATCH, SessionService
from jarvis_memory_server.service.snapshots import AGE_SWEEP_BATCH, SnapshotService
from jarvis_memory_server.service.state import PURGE_BATCH, StateService
from jarvis_memory_server.service.watch import COMPACT_BATCH, WatchService
from jarvis_memory_server.store.backend import make_database
from jarvis_memory_server.store.sqlite import Checkpointer, exclusive_use
from jarvis_memory_server.store.sqlite import Database as SqliteDatabase
from jarvis_memory_server.store.writes import pending_commit
from jarvis_memory_server.transport import observe
from jarvis_memory_server.transport.admin import AdminServicer
from jarvis_memory_server.transport.audit import AuditServicer
from jarvis_memory_server.transport.collections import CollectionServicer
from jarvis_memory_server.transport.context import ContextServicer
from jarvis_memory_server.transport.events import EventServicer
from jarvis_memory_server.transport.health import HealthServicer
from jarvis_memory_server.transport.memories import MemoryServicer
from jarvis_memory_server.transport.preferences import PreferenceServicer
from jarvis_memory_server.transport.reflection import enable_reflection
from jarvis_memory_server.transport.rpc import register
from jarvis_memory_server.transport.sessions import SessionServicer
from jarvis_memory_server.transport.snapshots import SnapshotServicer
from jarvis_memory_server.transport.state import StateServicer
from jarvis_memory_server.transport.watch import WatchServicer
from jarvis_memory_server.transport.watch import register as register_watch

log = logging.getLogger("jarvis_memory")

SERVICE_NAMES = tuple(
    service.full_name
    for module in (
        memory_pb2, session_pb2, event_pb2, snapshot_pb2, preference_pb2, state_pb2, audit_pb2,
        collection_pb2, context_pb2, admin_pb2, watch_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
)


class Daemon:
    """Opens the database, serves gRPC until told to stop, then shuts down cleanly."""

    def __init__(self, config: Config) -> None:
        self.config = config
        busy = {} if config.busy_timeout_ms is None else {"busy_timeout_ms": config.busy_timeout_ms}
        self.db = make_database(
            config.db_path, durability=config.durability, max_db_size=config.max_db_size,
            max_wal_size=config.max_wal_size, verify=config.verify,
            pool_size=config.db_pool_size, **busy,
        )
        self.server: grpc.aio.Server | None = None
        self.bound_addr = config.addr
        self.health = HealthServicer()  # the stock one, with List
        self._stop = asyncio.Event()
        self.checkpointer: Checkpointer | None = None
        self.sessions = SessionService(self.db)
        self.state = StateService(self.db)
        self.memories = MemoryService(self.db)
        self.search = SearchService(self.db, workers=config.search_threads)
        self.watch = WatchService(
            self.db, buffer=config.watch_buffer, retention=config.change_retention,
            coalesce_s=config.watch_coalesce_s,
        )
        self.snapshots = SnapshotService(
            self.db, keep=config.snapshot_keep, max_age_s=config.snapshot_max_age_s
        )
        self.auth = Authenticator(
            self.db, jwt_secret=config.jwt_secret, require_auth=config.require_auth,
            cache_ttl_s=config.auth_cache_ttl_s,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._observe(config)

    def _observe(self, config: Config) -> None:
        """Set up metrics and call logs (transport/observe.py); nothing when both are off."""
        self.metrics = observe.Metrics() if config.metrics_addr else None
        self.http: observe.MetricsServer | None = None
        self.calls: observe.Calls | None = None
        if self.metrics is not None or config.access_log or config.slow_call_ms:
            self.calls = observe.Calls(self.metrics, access_log=config.access_log,
                                       slow_call_ms=config.slow_call_ms)
        if self.metrics is None:
            return
        self.db.writes.on_batch = self.metrics.observe_commit
        self.search.on_search = self.metrics.observe_search
        self.metrics.watch_daemon(self.db, self.watch)
        if self.db.kind == "postgresql":
            from jarvis_memory_server.store.postgres import PostgresDatabase

            if isinstance(self.db, PostgresDatabase):
                self.db.count_reads = True  # its read pool reports its use

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT. Raises StartupError when the daemon cannot start.

        The configuration is checked and the port bound before anything is written to disk, so
        that a daemon that cannot start leaves no file behind.
        """
        started = time.monotonic()
        server = await self._start()
        try:
            if isinstance(self.db, SqliteDatabase):
                with exclusive_use(self.db.path):
                    await self._run(server, started)
            else:  # a server shared by any number of daemons
                await self._run(server, started)
        finally:
            if self.server is None:  # bound but never started: release the port
                await server.stop(None)
            if self.http is not None:
                self.http.close()

    async def _run(self, server: grpc.aio.Server, started: float) -> None:
        if isinstance(self.db, SqliteDatabase):
            removed, size = remove_stale_staging(self.db.path)
            if removed:
                log.info("removed %d backup staging copies left behind (%.1f MiB)", removed,
                         size / 2**20)
        self.db.open()  # migrations run here, before the server answers calls
        try:
            self._check_exposure()  # again, with the tokens the file holds
            await self._serve(server)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            if isinstance(self.db, SqliteDatabase):
                self.checkpointer = Checkpointer(self.db, self.config.checkpoint_interval_s)
                self.checkpointer.start()
            idle_s = self.config.session_idle_timeout_s
            self._tasks.append(asyncio.create_task(self._sweep(
                min(max(idle_s / 4, 0.05), 30.0), IDLE_SWEEP_BATCH,
                lambda: self.sessions.end_idle(int(idle_s * 1_000_000)),
                f"ended %d sessions idle for over {idle_s:g} s",
            )))
            self._tasks.append(asyncio.create_task(self._sweep(
                self.config.state_purge_interval_s, PURGE_BATCH, self.state.purge_expired,
                "purged %d expired state entries",
            )))
            self._tasks.append(asyncio.create_task(self._sweep(
                self.config.memory_purge_interval_s, ERASE_BATCH, self.memories.purge_expired,
                "purged %d expired memories",
            )))
            self._tasks.append(asyncio.create_task(self._sweep(
                self.config.compact_interval_s, COMPACT_BATCH, self.watch.compact,
                "compacted %d changes out of the change log",
            )))
            if self.snapshots.max_age_s > 0:
                self._tasks.append(asyncio.create_task(self._sweep(
                    min(max(self.snapshots.max_age_s / 4, 0.05), 60.0), AGE_SWEEP_BATCH,
                    self.snapshots.drop_old,
                    f"dropped %d snapshots older than {self.snapshots.max_age_s:g} s",
                )))
            log.info(
                "jarvis-memory %s serving on %s (database %s, durability %s, revision %d, "
                "auth %s, tls %s, ready in %.0f ms)",
                __version__, self.bound_addr, self.db.describe, self.config.durability,
                self.db.revision, "on" if self.auth.enabled else "off",
                "mutual" if self.config.tls_client_ca else "on" if self.config.tls_cert else "off",
                (time.monotonic() - started) * 1000,
            )
            await self._stop.wait()
            log.info("stopping: refusing new calls, %.0f s grace for in-flight ones",
                     self.config.grace_period_s)
        finally:
            await self._shutdown()
        log.info("stopped cleanly (%d writes in %d group commits)",
                 self.db.writes.committed_writes, self.db.writes.commits)

    def stop(self) -> None:
        """Ask the daemon to stop (as SIGTERM does)."""
        self._stop.set()

    async def _start(self) -> grpc.aio.Server:
        """Check the configuration, build the server and bind its port (nothing served yet)."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.max_send_message_length", self.config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        events, preferences = EventService(self.db), PreferenceService(self.db)
        contexts = ContextService(self.db, search=self.search, memories=self.memories,
                                  preferences=preferences,
                                  sessions=self.sessions, events=events, state=self.state)
        for servicer in (
            MemoryServicer(self.memories, self.search, self.auth),
            SessionServicer(self.sessions, self.search, self.auth),
            EventServicer(events, self.search, self.auth),
            SnapshotServicer(self.snapshots, self.auth),
            PreferenceServicer(preferences, self.auth),
            StateServicer(self.state, self.auth),
            AuditServicer(AuditService(self.db), self.auth),
            CollectionServicer(CollectionService(self.db), self.auth),
            ContextServicer(contexts, self.auth),
            AdminServicer(AdminService(self.db), self.auth),
        ):
            register(servicer, server)
        register_watch(WatchServicer(self.watch, self.auth), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
        self._check_exposure()
        check_bindable(self.config.addr)
        try:
            credentials = self._tls_credentials()
            if credentials is None:
                port = server.add_insecure_port(self.config.addr)
            else:
                port = server.add_secure_port(self.config.addr, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {self.config.addr}: {exc}") from exc
        if port == 0:  # gRPC logged why; say it in one line
            raise StartupError(f"cannot listen on {self.config.addr}")
        # With port 0 the OS picks one; report the real address (tests read it from the log).
        self.bound_addr = f"{self.config.addr.rsplit(':', 1)[0]}:{port}"
        if self.metrics is not None:  # /livez answers from now on, /readyz once serving
            try:
                self.http = observe.MetricsServer(self.config.metrics_addr, self.metrics.registry)
            except StartupError:
                await server.stop(None)
                raise
            log.info("metrics on http://%s/metrics (and /livez, /readyz)", self.http.addr)
        return server

    async def _serve(self, server: grpc.aio.Server) -> None:
        observe.current = self.calls  # before the first call
        await server.start()
        self.server = server
        # The database is open and migrated: only now does the daemon report SERVING.
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.http is not None:
            self.http.ready = True

    def _check_exposure(self) -> None:
        """Refuse to listen beyond loopback with auth off, unless --insecure says so.

        Before the database is open, auth counts as on when the existing file holds API tokens.
        """
        config = self.config
        if config.insecure or is_loopback(config.addr):
            return
        if self.db.is_open:
            if self.auth.enabled:
                return
        elif config.require_auth or config.jwt_secret or (
                isinstance(self.db, SqliteDatabase) and _file_has_tokens(self.db.path)):
            return
        raise StartupError(
            f"refusing to listen on {self.config.addr} with auth off: anyone who can reach it "
            "could read and change every namespace. Set JARVIS_MEMORY_JWT_SECRET, create an "
            "API token (jarvis-memory token create), listen on 127.0.0.1, or pass --insecure"
        )

    def _tls_credentials(self) -> grpc.ServerCredentials | None:
        config = self.config
        if not (config.tls_cert or config.tls_key):
            if config.tls_client_ca:
                raise StartupError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if not (config.tls_cert and config.tls_key):
            raise StartupError("TLS needs both --tls-cert and --tls-key")
        try:
            key = pathlib.Path(config.tls_key).read_bytes()
            chain = pathlib.Path(config.tls_cert).read_bytes()
            client_ca = (
                pathlib.Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
            )
        except OSError as exc:
            raise StartupError(f"cannot read a TLS file: {exc}") from exc
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    async def _sweep(
        self, interval_s: float, batch: int, step: Callable[[], int], done: str
    ) -> None:
        """Run a maintenance write every interval, repeating while it fills a batch."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                count = batch
                while count == batch:
                    await self.db.writes.writable()
                    count = step()
                    pending = pending_commit()
                    if pending is not None:
                        await pending.committed
                    if count:
                        log.info(done, count)
            except Exception:  # keep sweeping: the next round may succeed
                log.exception("maintenance failed: %s", done)

    async def _shutdown(self) -> None:
        if self.http is not None:
            self.http.stop_ready()  # /readyz: 503 while draining
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(self.config.grace_period_s)
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.search.close()
        self.db.close()
        observe.current = None


def _file_has_tokens(path: pathlib.Path) -> bool:
    """Whether an existing database file holds API tokens (true when it cannot be read)."""
    if not path.is_file():
        return False
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return conn.execute('SELECT 1 FROM "api_tokens" LIMIT 1').fetchone() is not None
        finally:
            conn.close()
    except apsw.Error:
        return True  # decided again once the file is open


def check_bindable(addr: str) -> None:
    """Raise StartupError when no address ``addr`` resolves to can be bound.

    gRPC would say so too, but in several lines of its own log on stderr.
    """
    if addr.startswith(("unix:", "unix-abstract:")):
        return
    host, port = split_addr(addr)
    if port == 0:
        return
    try:
        resolved = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {addr}: {exc.strerror}") from exc
    problem = ""
    for family, kind, proto, _, sockaddr in resolved:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                problem = problem or str(exc.strerror)
                continue
        return  # gRPC listens on every address it can bind, and needs one
    raise StartupError(f"cannot listen on {addr}: {problem}")


def is_loopback(addr: str) -> bool:
    """Whether host:port names a loopback address (127.0.0.0/8, ::1, localhost)."""
    host = addr.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: Config) -> None:
    """Run the daemon in this process until it is stopped.

    Raises StartupError, also when another daemon (or a restore) uses the database file.
    """
    logs.configure(config.log_level, config.log_format, config.grpc_debug)
    asyncio.run(Daemon(config).run())
