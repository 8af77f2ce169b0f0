"""The committed generated protobuf/gRPC modules must match proto/ exactly.

Regenerates everything into a temporary directory with tools/gen_proto.py and compares
byte for byte with the committed jumpstarter/v1/*_pb2*.py(i) and
jumpstarter/client/v1/*_pb2*.py(i). On failure: run `python tools/gen_proto.py`.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REGEN_HINT = "regenerate with: python tools/gen_proto.py (from the repository root) and commit the result"


def _load_gen_proto():
    spec = importlib.util.spec_from_file_location("_gen_proto", REPO_ROOT / "tools" / "gen_proto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    gen_proto = _load_gen_proto()
    expected = gen_proto.generate(tmp_path)
    assert expected, "tools/gen_proto.py generated nothing: are there .proto files under proto/?"
    committed = gen_proto.generated_files(REPO_ROOT)

    problems: list[str] = []
    for rel in sorted(set(expected) - set(committed)):
        problems.append(f"missing generated file: {rel}")
    for rel in sorted(set(committed) - set(expected)):
        problems.append(f"extra generated file (no .proto produces it): {rel}")
    for rel in sorted(set(expected) & set(committed)):
        fresh = (tmp_path / rel).read_bytes()
        ours = (REPO_ROOT / rel).read_bytes()
        if fresh != ours:
            diff = difflib.unified_diff(
                ours.decode(errors="replace").splitlines(),
                fresh.decode(errors="replace").splitlines(),
                fromfile=f"{rel} (committed)",
                tofile=f"{rel} (regenerated)",
                lineterm="",
                n=1,
            )
            # Serialized descriptors are one huge line: keep the excerpt readable.
            excerpt = "\n".join(line if len(line) <= 200 else line[:200] + " ..." for line in list(diff)[:40])
            problems.append(f"stale generated file: {rel}\n{excerpt}")

    assert not problems, "\n\n".join(problems) + f"\n\n{REGEN_HINT}"
