#!/usr/bin/env python3
"""Regenerate the Python protobuf/gRPC modules from proto/.

    python tools/gen_proto.py            # writes into the repository root
    python tools/gen_proto.py --out DIR  # writes into DIR (used by the staleness test)

Runs grpc_tools.protoc with `-I proto` (plus grpc_tools' bundled include dir for
google/protobuf/*.proto) and emits, for every proto/jumpstarter/**/*.proto,
`<name>_pb2.py`, `<name>_pb2.pyi` and `<name>_pb2_grpc.py` next to each other, e.g.
jumpstarter/v1/jumpstarter_pb2.py, which import each other as
`from jumpstarter.v1 import common_pb2`.

The committed modules must be byte-identical to what this script produces with the
pinned grpcio-tools (tests/unit/test_proto_generated.py checks that).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
# Where generated modules live, relative to the output root.
GENERATED_PACKAGES = ("jumpstarter/v1", "jumpstarter/client/v1")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[str]:
    """All our .proto files, as paths relative to proto/ (sorted, for stable output)."""
    return sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))


def is_generated(path: Path) -> bool:
    return path.is_file() and path.name.endswith(GENERATED_SUFFIXES)


def generated_files(root: Path) -> list[str]:
    """Generated files present under root, relative to root (sorted)."""
    found = []
    for pkg in GENERATED_PACKAGES:
        d = root / pkg
        if d.is_dir():
            found.extend(p.relative_to(root).as_posix() for p in d.iterdir() if is_generated(p))
    return sorted(found)


def generate(out: Path) -> list[str]:
    """Generate all modules into out; returns the generated files relative to out."""
    import grpc_tools
    from grpc_tools import protoc

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Drop old output first so a removed/renamed .proto leaves no stale module behind.
    for rel in generated_files(out):
        (out / rel).unlink()

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *proto_files(),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    return generated_files(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: repository root)")
    ns = parser.parse_args(argv)
    files = generate(ns.out)
    for f in files:
        print(f"wrote {ns.out / f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
