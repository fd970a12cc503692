"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader, loading proto/) against the daemon.

tests/node/client.mjs checks most of what it sees itself (node:assert) and prints it; this
test also checks it from the Python side: exact JSON both ways, typed values, error details.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import grpc_tools
import pytest
from google.rpc import status_pb2

from conftest import ROOT, Daemon
from jarvis.memory.v1 import state_pb2, state_pb2_grpc

WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"
# googleapis' google/rpc/*.proto, as the googleapis-common-protos package installs them.
GOOGLEAPIS = Path(status_pb2.__file__).parent.parent.parent
CLIENT = ROOT / "tests" / "node" / "client.mjs"

# The value the Python tests use, as client.mjs writes it.
VALUE: dict[str, Any] = {
    "step": 4, "ids": [2**60 + 1, -7, 2**63 - 1, -(2**63)], "ratio": 0.5, "whole": 4.0,
    "done": False, "note": None, "nested": [[1, {"a": "é"}]],
}
# What this test writes for the Node client to read: floats written by Python next to integers.
FROM_PYTHON: dict[str, Any] = {"step": 4, "whole": 4.0, "ratio": 0.5, "big": 2**60 + 1,
                               "huge": 1e300, "min": -(2**63)}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def assert_identical(got: Any, want: Any, path: str = "$") -> None:
    """Equal and of the same types all the way down (4 is not 4.0), keys in the same order."""
    assert type(got) is type(want), f"{path}: {got!r} is not {want!r}"
    if isinstance(want, dict):
        assert list(got) == list(want), f"{path}: keys {list(got)} are not {list(want)}"
        for key in want:
            assert_identical(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: {got!r} is not {want!r}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_identical(a, b, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} is not {want!r}"


def readme_snippets() -> list[str]:
    """The js blocks of the README's "Node.js" section."""
    text = (ROOT / "README.md").read_text()
    assert "\n## Node.js\n" in text, "the README has no Node.js section"
    section = text.split("\n## Node.js\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```js\n(.*?)```", section, re.S)


def test_readme_node_snippets_are_the_code_the_test_runs() -> None:
    snippets = readme_snippets()
    assert len(snippets) >= 5
    source = CLIENT.read_text()
    for snippet in snippets:
        assert snippet in source, f"this README snippet is not in {CLIENT.name}:\n{snippet}"


def test_node_client(daemon: Daemon) -> None:
    if not (ROOT / ".tools" / "node_modules" / "lossless-json").exists():
        pytest.fail("the Node.js packages are missing: run `rm -f .tools/.installed-node && "
                    "make .tools/.installed-node` (the Makefile's NODE_PACKAGES)")
    node = shutil.which("node")
    assert node, "node is not installed"
    assert (GOOGLEAPIS / "google" / "rpc" / "error_details.proto").exists()
    with grpc.insecure_channel(daemon.addr) as channel:
        state = state_pb2_grpc.StateServiceStub(channel)
        state.PutState(state_pb2.PutStateRequest(namespace="node-json", key="from-python",
                                                 value_json=compact(FROM_PYTHON)))
        result = subprocess.run([node, str(CLIENT), daemon.addr, str(WELL_KNOWN),
                                 str(GOOGLEAPIS)], capture_output=True, text=True, timeout=60,
                                cwd=ROOT)
        assert result.returncode == 0, result.stderr
        # What Node wrote, read by Python: the same values, types included.
        from_node = state.GetState(state_pb2.GetStateRequest(namespace="node-json",
                                                             key="from-node")).entry
        echo = state.GetState(state_pb2.GetStateRequest(namespace="node-json", key="echo")).entry
    assert_identical(json.loads(from_node.value_json), VALUE)
    assert from_node.value_json == compact(VALUE)
    assert_identical(json.loads(echo.value_json), FROM_PYTHON)
    seen = json.loads(result.stdout)

    # memories: attributes_json exact; the deprecated Struct still answers
    assert seen["added"]["content"] == "Added from Node.js"
    assert seen["attributesJson"] == compact({"lang": "js", **VALUE})
    assert seen["added"]["attributes_json"] == seen["attributesJson"]
    fields = seen["added"]["attributes"]["fields"]
    assert fields["lang"]["stringValue"] == "js"
    assert fields["ratio"]["numberValue"] == 0.5
    assert fields["ids"]["listValue"]["values"][1]["numberValue"] == -7
    assert seen["deduplicated"] is True
    assert seen["got"] == "Added from Node.js" and seen["listed"] == 1

    # errors, with their ErrorInfo decoded from the trailer
    assert seen["notFound"]["code"] == "NOT_FOUND"
    assert seen["notFound"]["reason"] == "MEMORY_NOT_FOUND"
    assert seen["notFound"]["domain"] == "jarvis-memory"
    assert seen["invalid"]["code"] == "INVALID_ARGUMENT"
    assert seen["invalid"]["details"].startswith("content: is required")
    assert seen["invalid"]["field"] == "content"
    assert seen["nan"]["code"] == "INVALID_ARGUMENT"
    assert seen["nan"]["domain"] == "jarvis-memory"
    assert re.fullmatch(r"[A-Z][A-Z_]+", seen["nan"]["reason"])
    assert seen["nan"]["metadata"]["field"] == "value.x"
    assert "NaN" in seen["nan"]["details"]
    assert seen["mismatch"]["code"] == "INVALID_ARGUMENT"
    assert "dimension 3" in seen["mismatch"]["details"]
    assert seen["mismatch"]["reason"] == "EMBEDDING_DIMENSION_MISMATCH"

    assert seen["messages"] == ["hello from node"]
    assert seen["searched"] == ["Added from **Node**.**js**"]
    assert seen["hybrid"][0] == [True, True]

    # state: Node's own value round trips exactly; Python's floats stay floats in Node
    assert seen["state"]["read"] == seen["state"]["written"] == compact(VALUE)
    assert seen["state"]["version"] == "1"  # an int64: a string
    assert seen["fromPython"]["text"] == compact(FROM_PYTHON)
    assert seen["fromPython"]["kinds"] == {"step": "integer", "whole": "float",
                                           "ratio": "float", "big": "integer",
                                           "huge": "float", "min": "integer"}
    assert seen["fromPython"]["texts"] == {"step": "4", "whole": "4.0", "ratio": "0.5",
                                           "big": str(2**60 + 1), "huge": "1e+300",
                                           "min": str(-(2**63))}
    assert math.isclose(float(seen["fromPython"]["texts"]["huge"]), 1e300)

    # collections: typed values, int64 exact, a timestamp, a null
    collection = seen["collection"]
    assert len(collection["ids"]) == 2 and all(isinstance(i, str) for i in collection["ids"])
    assert collection["filtered"] == [str(2**60 + 1)]
    assert collection["qty"] == [str(2**60), str(2**60 + 1)]
    assert collection["kinds"] == [
        {"symbol": "string_value", "qty": "integer_value", "meta": "json_value",
         "at": "timestamp_value"},
        {"symbol": "string_value", "qty": "integer_value", "meta": "null_value",
         "at": "null_value"}]
    assert_identical(json.loads(collection["meta"]), {"fee": 4.0, "lots": [2**60 + 1]})
    assert collection["metaKinds"] == {"fee": "float", "lots": "object"}
    assert collection["lot"] == str(2**60 + 1)
    assert collection["at"] == {"seconds": "1795000000", "nanos": 123456000}
    assert collection["nullAt"]["kind"] == "null_value"
    assert seen["rowChange"]["fields"]["qty"]["integer_value"] == str(2**60)

    # watch: the typed change is the message GetMemory returned
    assert seen["changes"] == [
        "memory:CHANGE_OPERATION_CREATE", "memory:CHANGE_OPERATION_UPDATE",
        "session:CHANGE_OPERATION_CREATE", "session_event:CHANGE_OPERATION_CREATE",
        "message:CHANGE_OPERATION_CREATE"]
    assert seen["typed"] == ["memory", "memory", "session", "session_event", "message"]
    assert seen["watchedMemory"] == seen["gotMemory"]
    assert seen["watchedMemory"]["attributes_json"] == compact({"lang": "js", **VALUE})
    assert seen["unknownKind"]["code"] == "INVALID_ARGUMENT"
    assert seen["unknownKind"]["field"] == "kinds[1]"
    assert "'memorys' is not a kind of change" in seen["unknownKind"]["details"]
