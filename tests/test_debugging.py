"""The README's "Debugging with grpcurl" commands, run exactly as written (address aside)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Daemon

TOOLS = {"grpcurl": Path(sys.executable).parent / "grpcurl",
         "buf": ROOT / ".tools" / "node_modules" / ".bin" / "buf"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Debugging with grpcurl", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the section has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


COMMANDS = readme_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command(daemon: Daemon, command: str) -> None:
    argv = shlex.split(command.replace("127.0.0.1:50051", daemon.addr))
    tool = TOOLS[argv[0]]
    if not tool.exists():
        pytest.fail(f"{tool} is missing: run `make setup` and `make lint` first")
    with daemon.client() as jm:  # something for the Watch commands to replay
        jm.add_memory("seen by the watch commands", category="fact", source="user_explicit")
    result = subprocess.run([str(tool), *argv[1:]], capture_output=True, text=True, timeout=60)
    output = result.stdout
    if "Watch" in command:  # ended by its time limit after printing the replay
        assert '"kind": "memory"' in output and "CHANGE_OPERATION_CREATE" in output, output
        assert '"memory": {' in output, output  # the typed resource, beside the deprecated one
        assert "deadline" in (result.stderr + output).lower()
    else:
        assert result.returncode == 0, result.stderr
    if command.endswith(" list"):
        assert "jarvis.memory.v1.MemoryService" in output and "grpc.health.v1.Health" in output
    if "describe jarvis.memory.v1.MemoryService.AddMemory" in command:
        assert "rpc AddMemory" in output and "ACCESS_WRITE" in output
    elif "describe" in command:
        assert "service MemoryService" in output
    if "--list-methods" in command:
        assert "jarvis.memory.v1.WatchService/Watch" in output
    if "MemoryService/SearchMemories" in command:
        hits = json.loads(output)["hits"]
        assert "**watch** **commands**" in hits[0]["snippet"]
    if "MemoryService/AddMemory" in command:
        memory = json.loads(output)["memory"]
        assert memory["content"] in command
        if "attributes_json" in command:  # exact text back; the deprecated Struct lost the ".0"
            assert memory["attributes_json"] == '{"cups":2,"temp_c":80.0}', memory
            assert memory["attributes"] == {"cups": 2, "temp_c": 80}, memory
