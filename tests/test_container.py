"""The container: Dockerfile, .dockerignore and compose.yaml.

Without a container engine, the command lines they hold run here as they would in the
container (the daemon, its health check, `token create`), with the image's and compose's
environment, the database in a temporary folder and the port one the OS picks. The image
itself is built only where docker or podman can build.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import BACKENDS, ROOT, START_TIMEOUT, Daemon, Postgres
from jarvis_memory import Client, JarvisMemoryError

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
BIN = Path(sys.executable).parent  # where the image's commands are installed here
IMAGE_COMMAND = ["jarvis-memory", "serve", "--addr", "0.0.0.0:50051", "--db", "/data/jarvis.db"]


# -- reading the files ------------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"no {instruction} in the stage FROM {self.base}"
        return found[-1]


def dockerfile_stages(text: str) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions (continuations joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{instruction} before any FROM"
            stages[-1].instructions.append((instruction, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list; the shell form would need a shell in PID 1."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        words = shlex.split(args)
        if "=" not in words[0]:  # the legacy form: ENV NAME value
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def healthcheck_of(stage: Stage) -> list[str]:
    options, cmd, command = stage.last("HEALTHCHECK").partition("CMD ")
    assert cmd, "HEALTHCHECK without CMD"
    assert all(o.startswith("--") for o in options.split()), options
    return exec_form(command)


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return dockerfile_stages(DOCKERFILE.read_text())[-1]


def image_command(runtime: Stage) -> list[str]:
    return exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD"))


def load_compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml unchecked")
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default}, with the defaults (as where nothing is set)."""
    def default(match: re.Match[str]) -> str:
        return match.group(2) or ""

    return re.sub(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}", default, value)


# -- running their command lines here ---------------------------------------------------------

def local(argv: list[str]) -> list[str]:
    """An image command line with its program as installed here (in the virtualenv)."""
    program = BIN / argv[0]
    assert program.exists(), f"{argv[0]} is not installed in {BIN}"
    return [str(program), *argv[1:]]


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    at = argv.index(option)
    return [*argv[:at + 1], value, *argv[at + 2:]]


def environment(*layers: dict[str, str]) -> dict[str, str]:
    """This machine's environment without JARVIS_MEMORY_* settings, then the layers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JARVIS_MEMORY_")}
    env["PYTHONUNBUFFERED"] = "1"
    for layer in layers:
        env.update(layer)
    return env


class CommandDaemon(Daemon):
    """A daemon started from a given command line (the conftest one fixes its own)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(argv[argv.index("--db") + 1])
        self.argv = argv
        self.env = env

    def start(self) -> CommandDaemon:
        self.log = []
        self._ready.clear()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=self.env)
        self._drainer = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._drainer.start()
        if not self._ready.wait(START_TIMEOUT) or not self.addr:
            self.kill()
            raise RuntimeError(f"{shlex.join(self.argv)} did not start:\n{self.output}")
        return self

    @property
    def port(self) -> str:
        return self.addr.rsplit(":", 1)[1]

    def client(self, **kwargs: object) -> Client:
        return Client(f"127.0.0.1:{self.port}", **kwargs)  # type: ignore[arg-type]


def serve_command(argv: list[str], db: str) -> list[str]:
    """The command with the database at ``db`` and the port 0 (the OS picks a free one)."""
    host = argv[argv.index("--addr") + 1].rsplit(":", 1)[0]
    return with_option(with_option(local(argv), "--db", db), "--addr", f"{host}:0")


def health_command_exists() -> bool:
    result = subprocess.run([str(BIN / "jarvis-memory"), "health", "--help"],
                            capture_output=True, text=True, timeout=60)
    return result.returncode == 0


NO_HEALTH_COMMAND = ("`jarvis-memory health` does not exist yet (`jarvis-memory health --help` "
                     "fails): the health check command line cannot run")


def run_health_check(argv: list[str], port: str, env: dict[str, str]
                     ) -> subprocess.CompletedProcess[str]:
    """A health check command line, aimed at ``port`` instead of the container's 50051."""
    aimed = [re.sub(r":50051$", f":{port}", arg) for arg in argv]
    return subprocess.run(local(aimed), capture_output=True, text=True, env=env, timeout=60)


def serving(port: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=10)
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


# -- the Dockerfile ---------------------------------------------------------------------------

def test_dockerfile_builds_a_wheel_then_a_slim_non_root_runtime(runtime: Stage) -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2
    build = stages[0]
    assert build.name and any("pip wheel" in args for args in build.all("RUN"))
    assert runtime.base.startswith("python:3.11") and "slim" in runtime.base
    assert any(f"from={build.name}" in args and "pip install" in args
               for args in runtime.all("RUN")) or any(
        f"--from={build.name}" in args for args in runtime.all("COPY"))
    user = runtime.last("USER").split(":")[0]
    assert user not in ("root", "0"), user
    assert "/data" in runtime.last("VOLUME").replace('"', " ").replace("[", " ").split()
    assert "50051" in runtime.last("EXPOSE").split()
    assert image_command(runtime) == IMAGE_COMMAND
    assert healthcheck_of(runtime)[:2] == ["jarvis-memory", "health"]


@pytest.fixture(scope="module")
def image_daemon(runtime: Stage, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[CommandDaemon]:
    """The image's command line, run here with the image's environment."""
    data = tmp_path_factory.mktemp("data")  # the /data volume
    argv = serve_command(image_command(runtime), str(data / "jarvis.db"))
    d = CommandDaemon(argv, environment(env_of(runtime))).start()
    yield d
    assert d.stop() == 0, d.output


def test_image_command_serves_with_auth_on(image_daemon: CommandDaemon) -> None:
    assert image_daemon.addr.startswith("0.0.0.0:")  # beyond loopback, as in a container
    assert "auth on" in image_daemon.output, image_daemon.output
    assert serving(image_daemon.port)
    with image_daemon.client(retry=None) as jm, pytest.raises(JarvisMemoryError) as error:
        jm.get_memory(1)
    assert error.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_token_create_as_the_dockerfile_says(image_daemon: CommandDaemon) -> None:
    """`docker exec <container> jarvis-memory token create --db /data/jarvis.db ...`"""
    created = subprocess.run(
        local(["jarvis-memory", "token", "create", "--db", str(image_daemon.db_path),
               "--role", "writer", "--namespace", "home"]),
        capture_output=True, text=True, env=image_daemon.env, timeout=START_TIMEOUT)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    with image_daemon.client(token=token, namespace="home") as jm:
        memory = jm.add_memory("Keeps the boat in the harbour", category="fact",
                               source="user_explicit")
        assert jm.get_memory(memory.id).content == "Keeps the boat in the harbour"


def test_image_healthcheck_passes_while_serving(runtime: Stage,
                                                image_daemon: CommandDaemon) -> None:
    if not health_command_exists():
        pytest.skip(NO_HEALTH_COMMAND)
    result = run_health_check(healthcheck_of(runtime), image_daemon.port, image_daemon.env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_healthcheck_fails_without_a_daemon(runtime: Stage) -> None:
    if not health_command_exists():
        pytest.skip(NO_HEALTH_COMMAND)
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    result = run_health_check(healthcheck_of(runtime), port, environment(env_of(runtime)))
    assert result.returncode != 0, result.stdout + result.stderr


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [line.strip().lstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not checked here"

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        return any(
            fnmatch.fnmatch(prefix, p) or (
                p.startswith("**/") and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], p[3:]))
            for prefix in prefixes for p in patterns)

    build = dockerfile_stages(DOCKERFILE.read_text())[0]
    copied = [src for args in build.all("COPY") for src in args.split()[:-1]
              if not src.startswith("--")]
    assert {"pyproject.toml", "README.md", "client", "server"} <= set(copied)
    needed = [*copied, "server/jarvis_memory_server/descriptors.binpb",
              "client/jarvis/memory/v1/memory_pb2.py", "server/jarvis_memory_server/cli.py"]
    assert not [path for path in needed if ignored(path)]
    for path in (".git", ".venv", ".tools", "data/jarvis.db", "tests",
                 "server/jarvis_memory_server/__pycache__/cli.cpython-311.pyc"):
        assert ignored(path), f"{path} would be sent to the build"


def test_the_build_stage_wheel_ships_the_descriptor_set(tmp_path: Path) -> None:
    """The wheel the build stage makes, from the files it copies, made here offline."""
    build = dockerfile_stages(DOCKERFILE.read_text())[0]
    context = tmp_path / "src"
    context.mkdir()
    for args in build.all("COPY"):
        *sources, _ = args.split()
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / source,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(ROOT / source, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("jarvis_memory-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
        shipped = archive.read("jarvis_memory_server/descriptors.binpb")
    assert shipped == (ROOT / "server" / "jarvis_memory_server" / "descriptors.binpb").read_bytes()
    assert {"jarvis/memory/v1/memory_pb2.py", "jarvis_memory_server/daemon.py",
            "jarvis_memory/client.py"} <= names
    assert "jarvis-memory = jarvis_memory_server.cli:main" in entry_points


# -- compose.yaml -----------------------------------------------------------------------------

def test_compose_structure(runtime: Stage) -> None:
    compose = load_compose()
    services = compose["services"]
    volumes = compose.get("volumes") or {}
    daemon = services["daemon"]
    assert "profiles" not in daemon  # `docker compose up` starts it
    data = [v for v in daemon["volumes"] if v.endswith(":/data")]
    assert data and data[0].split(":")[0] in volumes, "/data is not a named volume"
    assert any(str(p).endswith(":50051") for p in daemon["ports"])
    assert daemon["healthcheck"]["test"][0] == "CMD"
    assert daemon["healthcheck"]["test"][1:3] == ["jarvis-memory", "health"]
    assert "command" not in daemon or exec_form(runtime.last("ENTRYPOINT")) + list(
        daemon["command"]) == IMAGE_COMMAND

    postgres = services["postgres"]
    assert postgres["profiles"] == ["postgres"]
    image, _, tag = postgres["image"].partition(":")
    assert image == "pgvector/pgvector" and int(re.match(r"pg(\d+)", tag)[1]) >= 17  # type: ignore[index]
    assert "--encoding=UTF8" in postgres["environment"]["POSTGRES_INITDB_ARGS"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert any(v.split(":")[0] in volumes for v in postgres["volumes"])

    variant = services["daemon-postgres"]
    assert variant["profiles"] == ["postgres"]
    assert variant["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = list(variant["command"])
    url = command[command.index("--db") + 1]
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    assert with_option(command, "--db", "/data/jarvis.db") == IMAGE_COMMAND[1:]
    assert variant["healthcheck"] == daemon["healthcheck"]
    published = {str(p).rsplit(":", 1)[0] for s in (daemon, variant) for p in s["ports"]}
    assert len(published) == 2, "both daemons publish the same host port"


@pytest.mark.parametrize("service", ["daemon", "daemon-postgres"])
def test_compose_daemon_serves(service: str, runtime: Stage, tmp_path: Path,
                               request: pytest.FixtureRequest) -> None:
    """The service's command line, with the image's environment and its own."""
    spec = load_compose()["services"][service]
    argv = exec_form(runtime.last("ENTRYPOINT")) + list(
        spec.get("command") or exec_form(runtime.last("CMD")))
    db = argv[argv.index("--db") + 1]
    if db.startswith("postgresql://"):
        if "postgresql" not in BACKENDS:
            pytest.skip("PostgreSQL is not in JARVIS_TEST_BACKENDS")
        server: Postgres = request.getfixturevalue("postgres")
        db = server.new_database()  # the compose one's host is its postgres service
    else:
        db = str(tmp_path / "jarvis.db")
    env = environment(env_of(runtime), {k: interpolate(str(v))
                                        for k, v in (spec.get("environment") or {}).items()})
    d = CommandDaemon(serve_command(argv, db), env).start()
    try:
        assert serving(d.port)
        if health_command_exists():
            check = run_health_check(spec["healthcheck"]["test"][1:], d.port, env)
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        code = d.stop()
    assert code == 0, d.output
    assert "stopped cleanly" in d.output, d.output


def test_compose_file_validates() -> None:
    for tool in (["docker", "compose"], ["podman", "compose"], ["docker-compose"]):
        if shutil.which(tool[0]) is None:
            continue
        if subprocess.run([*tool, "version"], capture_output=True, timeout=60).returncode:
            continue
        result = subprocess.run([*tool, "-f", str(COMPOSE), "--profile", "postgres", "config",
                                 "--quiet"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return
    pytest.skip("no compose tool (docker compose, podman compose, docker-compose) here")


# -- the image, where it can be built -----------------------------------------------------------

def container_engine() -> str | None:
    for engine in ("docker", "podman"):
        if shutil.which(engine) and subprocess.run(
                [engine, "info"], capture_output=True, timeout=60).returncode == 0:
            return engine
    return None


def test_image_builds() -> None:
    engine = container_engine()
    if engine is None:
        found = [e for e in ("docker", "podman") if shutil.which(e)]
        pytest.skip(f"{' and '.join(found)} cannot reach a container engine (`info` fails)"
                    if found else "no docker or podman here: the image is not built")
    tag = "jarvis-memory:test"
    built = subprocess.run([engine, "build", "--tag", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stdout + built.stderr
    inspected = subprocess.run([engine, "image", "inspect", tag],
                               capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)[0]["Config"]
    assert config["User"] not in ("", "root", "0") and "/data" in config["Volumes"]
    assert "50051/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] + config["Cmd"] == IMAGE_COMMAND
    helped = subprocess.run([engine, "run", "--rm", tag, "serve", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--db" in helped.stdout, helped.stderr
