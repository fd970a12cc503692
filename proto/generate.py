"""Compile proto/ into the Python stubs shipped in client/ (run by `make proto`).

Also writes the protos as a FileDescriptorSet with their comments (source info) and imports
into the server package (server/jarvis_memory_server/descriptors.binpb): server reflection
answers from it, so grpcurl and buf describe the API with its documentation.

With --check, compile into a temporary folder and fail when the committed stubs or the
descriptor set differ.
"""

import filecmp
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterable

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "client"
PACKAGE = pathlib.Path("jarvis/memory/v1")
# The descriptor set server reflection serves (package data of the server).
DESCRIPTORS = ROOT / "server" / "jarvis_memory_server" / "descriptors.binpb"


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
        # The same protos give the same bytes (protoc's and our serialization are stable).
        f"--descriptor_set_out={out / DESCRIPTORS.name}",
        "--include_source_info",
        "--include_imports",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    strip_default_json_names(out / DESCRIPTORS.name)


def default_json_name(name: str) -> str:
    """protoc's JSON name of a field: lowerCamelCase of its name."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def strip_default_json_names(path: pathlib.Path) -> None:
    """Leave out the json_names the descriptors of the generated modules leave out.

    Reflection then describes exactly the API the stubs serve, comments added: grpcurl
    (1.8.6) prints JSON with a descriptor's json_name when it has one, and with the proto
    name otherwise, so keeping them would turn its "attributes_json" into "attributesJson".
    """
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())

    def strip(fields: Iterable[descriptor_pb2.FieldDescriptorProto]) -> None:
        for field in fields:
            if field.json_name == default_json_name(field.name):
                field.ClearField("json_name")

    def strip_messages(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            strip(message.field)
            strip(message.extension)
            strip_messages(message.nested_type)

    for file in fds.file:
        strip(file.extension)
        strip_messages(file.message_type)
    path.write_bytes(fds.SerializeToString(deterministic=True))


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
            if not DESCRIPTORS.exists() or not filecmp.cmp(
                    fresh / DESCRIPTORS.name, DESCRIPTORS, shallow=False):
                changed.add(str(DESCRIPTORS.relative_to(ROOT)))
            if differ := sorted((new ^ old) | changed):
                sys.exit(f"stubs drifted from proto/ (run `make proto`): {', '.join(differ)}")
            print("generated stubs and descriptor set match proto/")
            return
        target = OUT_DIR / PACKAGE
        target.mkdir(parents=True, exist_ok=True)
        for name in old - new:
            (target / name).unlink()
        for name in new:
            shutil.copyfile(fresh / PACKAGE / name, target / name)
        shutil.copyfile(fresh / DESCRIPTORS.name, DESCRIPTORS)
        print(f"generated {len(new)} files into {target.relative_to(ROOT)}, "
              f"and {DESCRIPTORS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
