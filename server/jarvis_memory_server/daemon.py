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
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jarvis.memory.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    collection_pb2,
    collection_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    preference_pb2,
    preference_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    snapshot_pb2,
    snapshot_pb2_grpc,
    state_pb2,
    state_pb2_grpc,
    watch_pb2,
)
from jarvis_memory_server import __version__
from jarvis_memory_server.config import Config
from jarvis_memory_server.errors import StartupError
from jarvis_memory_server.service.admin import AdminService
from jarvis_memory_server.service.audit import AuditService
from jarvis_memory_server.service.auth import Authenticator
from jarvis_memory_server.service.collections import CollectionService
from jarvis_memory_server.service.events import EventService
from jarvis_memory_server.service.memories import MemoryService
from jarvis_memory_server.service.preferences import PreferenceService
from jarvis_memory_server.service.search import SearchService
from jarvis_memory_server.service.sessions import IDLE_SWEEP_BATCH, SessionService
from jarvis_memory_server.service.snapshots import AGE_SWEEP_BATCH, SnapshotService
from jarvis_memory_server.service.state import PURGE_BATCH, StateService
from jarvis_memory_server.service.watch import COMPACT_BATCH, WatchService
from jarvis_memory_server.store.sqlite import Checkpointer, Database, exclusive_use
from jarvis_memory_server.store.writes import pending_commit
from jarvis_memory_server.transport.admin import AdminServicer
from jarvis_memory_server.transport.audit import AuditServicer
from jarvis_memory_server.transport.collections import CollectionServicer
from jarvis_memory_server.transport.events import EventServicer
from jarvis_memory_server.transport.memories import MemoryServicer
from jarvis_memory_server.transport.preferences import PreferenceServicer
from jarvis_memory_server.transport.reflection import enable_reflection
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
        collection_pb2, admin_pb2, watch_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
)


class Daemon:
    """Opens the database, serves gRPC until told to stop, then shuts down cleanly."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.db = Database(
            config.db_path, durability=config.durability,  # type: ignore[arg-type]
            busy_timeout_ms=config.busy_timeout_ms,
        )
        self.server: grpc.aio.Server | None = None
        self.bound_addr = config.addr
        self.health = health.aio.HealthServicer()
        self._stop = asyncio.Event()
        self.checkpointer: Checkpointer | None = None
        self.sessions = SessionService(self.db)
        self.state = StateService(self.db)
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

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT. Raises StartupError when the daemon cannot start."""
        started = time.monotonic()
        self.db.open()  # migrations run here, before the port opens
        try:
            await self._start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
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
                __version__, self.bound_addr, self.db.path, self.config.durability,
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

    async def _start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.max_send_message_length", self.config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        memory_pb2_grpc.add_MemoryServiceServicer_to_server(
            MemoryServicer(MemoryService(self.db), self.search, self.auth), server
        )
        session_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(self.sessions, self.search, self.auth), server
        )
        event_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(EventService(self.db), self.search, self.auth), server
        )
        snapshot_pb2_grpc.add_SnapshotServiceServicer_to_server(
            SnapshotServicer(self.snapshots, self.auth), server
        )
        preference_pb2_grpc.add_PreferenceServiceServicer_to_server(
            PreferenceServicer(PreferenceService(self.db), self.auth), server
        )
        state_pb2_grpc.add_StateServiceServicer_to_server(
            StateServicer(self.state, self.auth), server
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(AuditService(self.db), self.auth), server
        )
        collection_pb2_grpc.add_CollectionServiceServicer_to_server(
            CollectionServicer(CollectionService(self.db), self.auth), server
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(AdminService(self.db), self.auth), server
        )
        register_watch(WatchServicer(self.watch, self.auth), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
        self._check_exposure()
        try:
            credentials = self._tls_credentials()
            if credentials is None:
                port = server.add_insecure_port(self.config.addr)
            else:
                port = server.add_secure_port(self.config.addr, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {self.config.addr}: {exc}") from exc
        # With port 0 the OS picks one; report the real address (tests read it from the log).
        self.bound_addr = f"{self.config.addr.rsplit(':', 1)[0]}:{port}"
        await server.start()
        self.server = server
        # The database is open and migrated: only now does the daemon report SERVING.
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _check_exposure(self) -> None:
        """Refuse to listen beyond loopback with auth off, unless --insecure says so."""
        if self.auth.enabled or self.config.insecure or is_loopback(self.config.addr):
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
    with exclusive_use(pathlib.Path(config.db_path)):
        asyncio.run(Daemon(config).run())
