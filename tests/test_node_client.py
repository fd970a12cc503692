"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader, loading proto/) against the daemon."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import grpc_tools
import pytest

from conftest import ROOT, Daemon

WELL_KNOWN = pathlib.Path(grpc_tools.__file__).parent / "_proto"


def test_node_client(daemon: Daemon) -> None:
    if not (ROOT / ".tools" / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.fail("the Node.js packages are missing: run `make pytest` (it installs them)")
    node = shutil.which("node")
    assert node, "node is not installed"
    result = subprocess.run([node, str(ROOT / "tests" / "node" / "client.mjs"), daemon.addr,
                             str(WELL_KNOWN)], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["added"]["content"] == "Added from Node.js"
    assert seen["added"]["attributes"]["fields"]["lang"]["stringValue"] == "js"
    assert seen["deduplicated"] is True
    assert seen["got"] == "Added from Node.js" and seen["listed"] == 1
    assert seen["notFound"] == "NOT_FOUND"
    assert seen["invalid"].startswith("content: is required")
    assert seen["messages"] == ["hello from node"]
    assert seen["searched"] == ["Added from **Node**.**js**"]
    assert seen["hybrid"][0] == [True, True]
    assert "dimension 3" in seen["mismatch"]
    assert seen["changes"] == [
        "memory:CHANGE_OPERATION_CREATE", "memory:CHANGE_OPERATION_UPDATE",
        "session:CHANGE_OPERATION_CREATE", "session_event:CHANGE_OPERATION_CREATE",
        "message:CHANGE_OPERATION_CREATE"]
