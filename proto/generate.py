"""Compile proto/ into the Python stubs shipped in client/ (run by `make proto`).

With --check, compile into a temporary folder and fail when the committed stubs differ.
"""

import filecmp
import pathlib
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "client"
PACKAGE = pathlib.Path("jarvis/memory/v1")


def compile_into(out: pathlib.Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / PACKAGE).glob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = pathlib.Path(sys.executable).parent  # mypy-protobuf's plugins live beside python
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def generated_files(base: pathlib.Path) -> set[str]:
    folder = base / PACKAGE
    if not folder.exists():
        return set()
    return {p.name for p in folder.iterdir() if p.suffix in {".py", ".pyi"}}


def main() -> None:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        compile_into(fresh)
        new, old = generated_files(fresh), generated_files(OUT_DIR)
        if check:
            changed = {
                name for name in new & old
                if not filecmp.cmp(fresh / PACKAGE / name, OUT_DIR / PACKAGE / name, shallow=False)
            }
            if differ := sorted((new ^ old) | changed):
                sys.exit(f"stubs drifted from proto/ (run `make proto`): {', '.join(differ)}")
            print("generated stubs match proto/")
            return
        target = OUT_DIR / PACKAGE
        target.mkdir(parents=True, exist_ok=True)
        for name in old - new:
            (target / name).unlink()
        for name in new:
            shutil.copyfile(fresh / PACKAGE / name, target / name)
        print(f"generated {len(new)} files into {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
