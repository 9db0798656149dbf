"""Regenerate the committed gRPC stubs in `proto/helix_proto/` from `proto/*.proto`.

    python -m helix_worker.transport.codegen            # rewrite proto/helix_proto/*_pb2*.py
    python -m helix_worker.transport.codegen --out DIR  # write elsewhere (the staleness test does)

Two rewrites follow protoc: generated `import x_pb2` lines become package imports
(`from helix_proto import x_pb2`), and each file registers its descriptors in a private
descriptor pool. The KServe messages share Triton's names (`inference.*`, file
`grpc_service.proto`), and tritonclient registers its own copy in the default pool; two
registrations of one name in one pool fail, while the wire format only needs field numbers.
"""

import argparse
import re
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


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc on every proto file and write the rewritten stubs into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        args = ["protoc", f"-I{proto_dir}", f"--python_out={raw}", f"--grpc_python_out={raw}"]
        if protoc.main(args + [str(proto_dir / name) for name in PROTO_FILES]) != 0:
            raise RuntimeError(f"protoc failed on {proto_dir}")
        written = []
        for path in sorted(Path(raw).glob("*.py")):
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
