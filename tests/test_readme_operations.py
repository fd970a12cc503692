"""The README's "Operations" commands, run as written (address and ports aside), in order."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Daemon

BIN = Path(sys.executable).parent
README_ADDR, README_METRICS = "127.0.0.1:50051", "127.0.0.1:9464"


def section_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Operations\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the Operations section has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_operations_commands_as_written(tmp_path: Path) -> None:
    serve, *commands = section_commands()
    assert serve.startswith("jarvis-memory serve ")
    metrics = f"127.0.0.1:{free_port()}"
    argv = shlex.split(serve.replace(README_METRICS, metrics))[2:]  # the flags after "serve"
    daemon = Daemon(tmp_path / "jarvis.db", *argv).start()
    try:
        outputs = {}
        for command in commands:
            line = command.replace(README_ADDR, daemon.addr).replace(README_METRICS, metrics)
            if line.startswith("jarvis-memory "):
                line = f"{BIN / 'jarvis-memory'} {line.removeprefix('jarvis-memory ')} " \
                       f"--addr {daemon.addr}"
            if " watch " in f"{line} ":
                outputs[command] = watched(line)
                continue
            result = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            outputs[command] = result.stdout
        check(outputs)
        # The access log, in JSON: a line for the CLI's AddMemory, with the call's fields.
        calls = [json.loads(line) for line in daemon.output.splitlines()
                 if line.startswith("{") and '"method"' in line]
        added = next(c for c in calls if c["method"] == "AddMemory")
        assert added["code"] == "OK" and added["namespace"] == "default"
        assert "Prefers espresso" not in daemon.output  # never a request body
    finally:
        assert daemon.stop() == 0, daemon.output


def watched(line: str) -> str:
    """Run a watch until it has printed the replayed changes, then stop it as Ctrl-C would."""
    proc = subprocess.Popen(shlex.split(line), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline()]  # the replayed create of memory 1 (pytest-timeout bounds it)
    proc.send_signal(signal.SIGINT)
    rest, errors = proc.communicate(timeout=30)
    assert proc.returncode == 0, errors
    return "".join(lines) + rest


def check(outputs: dict[str, str]) -> None:
    def output(start: str) -> str:
        (found,) = [out for command, out in outputs.items() if command.startswith(start)]
        return found

    assert re.search(r'grpc_server_handled_total\{grpc_code="OK",grpc_method="\w+"',
                     output("curl -s 127.0.0.1:9464/metrics"))
    assert output("curl -s 127.0.0.1:9464/readyz").strip() == "ready"
    assert "Prefers espresso" in output("jarvis-memory get memory 1")
    (listed,) = [json.loads(line) for line in
                 output("jarvis-memory list memories").splitlines()]
    assert (listed["id"], listed["content"], listed["category"]) == (
        1, "Prefers espresso", "preference")
    assert "Prefers espresso" in output("jarvis-memory search")
    changes = output("jarvis-memory watch")
    assert "memory" in changes and "Prefers espresso" in changes, changes
    assert output("jarvis-memory stats").strip()
    assert "SERVING" in output("jarvis-memory health")


if not (ROOT / "README.md").exists():  # pragma: no cover - the README ships with the tests
    pytest.skip("no README", allow_module_level=True)
