"""README "Scaling out", run as written: one PostgreSQL, three daemons, a TCP load balancer.

The commands of the section's ```sh block run one by one (a trailing ``&`` starts a daemon
and waits until it serves), with two changes: ``DB`` is the test server's database, and the
ports are free ones. The load balancer is a plain TCP round robin (a few lines of asyncio
below), as HAProxy or a cloud load balancer would be.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BACKENDS, READY, ROOT, Daemon, Postgres

pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL only")


def scaling_out_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's Scaling out section has no sh block"
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()
            if line.split("  #", 1)[0].strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RoundRobin:
    """A TCP load balancer: each new connection goes to the next backend, bytes both ways."""

    def __init__(self, backends: list[str]) -> None:
        self._next = itertools.cycle(backends)
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connect, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._writers: list[asyncio.StreamWriter] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = next(self._next).rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        self._writers += [writer, upstream_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def _close(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A folder holding data/jarvis.db with some data: what a SQLite user moves from."""
    d = Daemon(tmp_path / "data" / "jarvis.db").start()
    with d.client(namespace="alice") as jm:
        jm.add_memory("Moved from SQLite", category="fact", source="user_explicit")
        jm.set_preference("theme", "dark")
    assert d.stop() == 0
    yield tmp_path


def test_readme_scaling_out_commands(postgres: Postgres, workdir: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # createdb (PostgreSQL's, from the pgserver wheel) connects as the environment says.
    env.update(PGHOST=str(postgres.folder), PGUSER="postgres")
    env["PATH"] = f"{_pg_bin()}:{env['PATH']}"
    daemons: list[subprocess.Popen[str]] = []
    drains: list[threading.Thread] = []
    addrs: list[str] = []
    token = ""
    try:
        for command in scaling_out_commands():
            if command.startswith("DB="):
                env["DB"] = postgres.url("jarvis")
                continue
            if command.endswith("&"):  # a daemon: on a free port, until it serves
                command = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{free_port()}", command)
                proc = subprocess.Popen(["bash", "-c", "exec " + command[:-1]], env=env,
                                        cwd=workdir, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                daemons.append(proc)
                assert proc.stdout is not None
                for line in proc.stdout:
                    if match := READY.search(line):
                        addrs.append(match.group(1))
                        break
                else:
                    raise AssertionError(f"{command}: the daemon did not start")
                drain = threading.Thread(target=proc.stdout.read, daemon=True)
                drain.start()
                drains.append(drain)
                continue
            result = subprocess.run(["bash", "-c", command], env=env, cwd=workdir,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
            if " token create " in f" {command} ":
                token = result.stdout.strip()
        assert len(addrs) == 3 and token
        balancer = RoundRobin(addrs)
        try:
            _through_the_balancer(f"127.0.0.1:{balancer.port}", token)
        finally:
            balancer.stop()
    finally:
        for proc in daemons:
            proc.terminate()
        for proc, drain in zip(daemons, drains, strict=False):
            assert proc.wait(30) == 0
            drain.join(10)
            assert proc.stdout is not None
            proc.stdout.close()


def _through_the_balancer(target: str, token: str) -> None:
    from jarvis_memory import Client

    clients = [Client(target, token=token, namespace="alice") for _ in range(3)]
    try:
        for i, jm in enumerate(clients):  # one connection each: a daemon each
            jm.add_memory(f"through the balancer {i}", category="fact", source="user_explicit")
        for jm in clients:
            contents = {m.content for m in jm.list_memories()}
            assert {"Moved from SQLite", *(f"through the balancer {i}" for i in range(3))} <= contents
            assert jm.get_preference("theme").value == "dark"
    finally:
        for jm in clients:
            jm.close()


def _pg_bin() -> Path:
    import pgserver  # type: ignore[import-untyped]

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def test_the_section_is_what_the_test_runs() -> None:
    commands = scaling_out_commands()
    assert sum(c.startswith("jarvis-memory serve --db $DB") for c in commands) == 3
    assert any(shlex.split(c)[:2] == ["jarvis-memory", "import"] for c in commands)
