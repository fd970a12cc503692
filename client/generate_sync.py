"""Generate the synchronous client (jarvis_memory/client.py) from the asyncio one (aio.py).

    python client/generate_sync.py          # rewrite client.py
    python client/generate_sync.py --check  # exit 1, with a diff, when client.py is stale

aio.py is the one hand-written description of the public methods; this script rewrites its
tokens as httpcore's "unasync" does (``async def`` -> ``def``, ``await x`` -> ``x``,
``AsyncIterator`` -> ``Iterator``, ``grpc.aio.`` -> ``grpc.``, ...), so both clients keep
their own exact type hints under mypy.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "jarvis_memory"
SOURCE = PACKAGE / "aio.py"
TARGET = PACKAGE / "client.py"

HEADER = '''"""The synchronous client: generated from aio.py by client/generate_sync.py.

Do not edit: every public method is written once, in aio.py (the asyncio client). Edit that
file, then run ``python client/generate_sync.py`` (``make lint`` fails while this is stale).
"""
'''

# Applied in order to every line after the module docstring; \b keeps them to whole words.
LINE_RULES: list[tuple[str, str]] = [
    (r"^import asyncio\n", ""),
    (r"An asyncio connection to a jarvis-memory daemon; use it inside a running event loop\.",
     "A connection to a jarvis-memory daemon; each call blocks until it is answered."),
    (r"\bAsyncClient\b", "Client"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\basync def\b", "def"),
    (r"\basync for\b", "for"),
    (r"\basync with\b", "with"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\bgrpc\.aio\.", "grpc."),
    (r"\basyncio\.sleep\b", "time.sleep"),
]
# Applied to the whole text: a loop that only re-yields becomes ``yield from``.
TEXT_RULES: list[tuple[str, str]] = [
    (r"(?m)^( *)for (\w+) in (.+):\n\1    yield \2\n", r"\1yield from \3\n"),
]
LEFTOVER = re.compile(r"\b(async|await|asyncio|aio)\b")


def generate(source: str) -> str:
    """The text of client.py for the text of aio.py."""
    if not source.startswith('"""'):
        raise SystemExit(f"{SOURCE} must open with its module docstring")
    body = source[source.index('"""', 3) + 3:].lstrip("\n")
    lines = []
    for line in body.splitlines(keepends=True):
        for pattern, replacement in LINE_RULES:
            line = re.sub(pattern, replacement, line)
        lines.append(line)
    text = "".join(lines)
    for pattern, replacement in TEXT_RULES:
        text = re.sub(pattern, replacement, text)
    leftovers = [line.strip() for line in text.splitlines() if LEFTOVER.search(line)]
    if leftovers:
        raise SystemExit("generate_sync.py has no rule for: " + "; ".join(leftovers))
    return HEADER + "\n" + text


def main() -> int:
    """Write client.py, or with --check report whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="fail when client.py differs from what aio.py generates")
    args = parser.parse_args()
    wanted = generate(SOURCE.read_text())
    current = TARGET.read_text() if TARGET.exists() else ""
    if args.check:
        if current != wanted:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), wanted.splitlines(keepends=True),
                str(TARGET), f"{TARGET} (generated from {SOURCE.name})"))
            print(f"{TARGET} is stale: run python client/generate_sync.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        TARGET.write_text(wanted)
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
