"""Regenerate the committed gRPC stubs in `proto/helix_proto/` from `proto/*.proto`.

    python -m helix_worker.transport.codegen            # rewrite proto/helix_proto/*_pb2*.py[i]
    python -m helix_worker.transport.codegen --out DIR  # write elsewhere (the staleness test does)

Beside each `.py` stub goes its `.pyi` type stub, written by mypy-protobuf's protoc plugins
(`protoc-gen-mypy`, `protoc-gen-mypy_grpc`, installed next to this Python by the `codegen` extra),
so that `mypy --strict` checks every message field and gRPC call.

Two rewrites follow protoc: generated `import x_pb2` lines become package imports
(`from helix_proto import x_pb2`), and each file registers its descriptors in a private
descriptor pool. The KServe messages share Triton's names (`inference.*`, file
`grpc_service.proto`), and tritonclient registers its own copy in the default pool; two
registrations of one name in one pool fail, while the wire format only needs field numbers.
"""

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[3] / "proto"
PACKAGE = "helix_proto"
PROTO_FILES = ("grpc_service.proto", "helix_stage.proto")
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile"
_PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile"
_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def _plugin(name: str) -> str:
    """The protoc plugin `name` installed beside this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install mypy-protobuf (the codegen extra)")
    return found


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc on every proto file and write the rewritten stubs (.py and .pyi) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        args = ["protoc", f"-I{proto_dir}", f"--python_out={raw}", f"--grpc_python_out={raw}",
                f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}", f"--mypy_out=quiet:{raw}",
                f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}", f"--mypy_grpc_out=quiet:{raw}"]
        if protoc.main(args + [str(proto_dir / name) for name in PROTO_FILES]) != 0:
            raise RuntimeError(f"protoc failed on {proto_dir}")
        written = []
        for path in sorted(Path(raw).glob("*.py*")):
            target = out_dir / path.name
            target.write_text(rewrite(path.read_text()))
            written.append(target)
    return written


def rewrite(source: str) -> str:
    """Package-relative imports and a private descriptor pool (see the module docstring)."""
    source = _IMPORT.sub(rf"from {PACKAGE} import \1 as \2", source)
    return source.replace(_DEFAULT_POOL, _PRIVATE_POOL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_DIR / PACKAGE, help="output directory")
    parser.add_argument("--proto-dir", type=Path, default=PROTO_DIR, help="directory with the .proto files")
    args = parser.parse_args(argv)
    for path in generate(args.out, args.proto_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
