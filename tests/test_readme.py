"""Every ```python block of README.md, run as pasted, in README order, against one fresh daemon.

Each block runs in a fresh interpreter from the project's top directory; the only change made
to its text is the address: "127.0.0.1:50051" (where `make run` serves) becomes the test
daemon's. Blocks indented inside list items are dedented first.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, Daemon

README_ADDR = "127.0.0.1:50051"
MIN_BLOCKS = 11  # the README's python blocks when this was written: a test that finds none fails
BLOCK_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    line: int  # README line of the opening fence, 1-based
    code: str

    @property
    def first_line(self) -> str:
        return next((s for s in self.code.splitlines() if s.strip()), "")


def readme_blocks() -> list[Block]:
    """The ```python blocks of README.md in order, each dedented by its fence's indentation."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i]
            if line.strip() and not line.startswith(indent):
                raise AssertionError(f"README.md:{i + 1}: less indented than its ```python fence")
            body.append(line[len(indent):])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start}: a ```python block is never closed")
        blocks.append(Block(start, "\n".join(body) + "\n"))
        i += 1
    return blocks


BLOCKS = readme_blocks()


def test_readme_has_its_blocks() -> None:
    assert len(BLOCKS) >= MIN_BLOCKS, f"found {len(BLOCKS)} python blocks in README.md"


@pytest.mark.parametrize(
    "index", range(len(BLOCKS)), ids=[f"block{i}-line{b.line}" for i, b in enumerate(BLOCKS)])
def test_readme_block(daemon: Daemon, tmp_path: Path, index: int) -> None:
    block = BLOCKS[index]
    # A block that does not name the address would reach whatever serves on the default one.
    assert README_ADDR in block.code, (
        f"README block {index} (line {block.line}) does not connect to {README_ADDR}: "
        f"{block.first_line}")
    if daemon.on_postgres and ".backup(" in block.code:
        pytest.skip("backups copy the SQLite file; PostgreSQL has its own tools (test_admin)")
    script = tmp_path / f"readme_block{index}.py"  # a file, so tracebacks quote the lines
    script.write_text(block.code.replace(README_ADDR, daemon.addr))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"README block {index} (line {block.line}: {block.first_line}) exited "
        f"{result.returncode}:\n{result.stderr}{result.stdout}")
