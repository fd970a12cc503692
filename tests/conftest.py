"""Fixtures: real daemons in subprocesses on real ports with temporary SQLite files."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor

import jarvis.memory.v1
from jarvis.memory.v1 import (
    audit_pb2_grpc,
    collection_pb2_grpc,
    event_pb2_grpc,
    memory_pb2_grpc,
    preference_pb2_grpc,
    session_pb2_grpc,
    snapshot_pb2_grpc,
    state_pb2_grpc,
    watch_pb2_grpc,
)
from jarvis_memory import Client, JarvisMemoryError

ROOT = Path(__file__).resolve().parent.parent  # the project's top directory
READY = re.compile(r"serving on (\S+:\d+)")
START_TIMEOUT = 30.0


class Daemon:
    """A `jarvis-memory serve` process; its log is collected and the bound address parsed."""

    def __init__(self, db_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
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


def run_daemon_expecting_failure(db_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Start a daemon that must refuse to start; return its finished process."""
    return subprocess.run(
        [sys.executable, "-m", "jarvis_memory_server", "serve", "--addr", "127.0.0.1:0",
         "--db", str(db_path), *args],
        capture_output=True, text=True, timeout=START_TIMEOUT,
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by a test module."""
    d = Daemon(tmp_path_factory.mktemp("db") / "jarvis.db").start()
    yield d
    code = d.stop()
    assert code == 0, d.output


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of the test's own, on a new file."""
    d = Daemon(tmp_path / "jarvis.db").start()
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
