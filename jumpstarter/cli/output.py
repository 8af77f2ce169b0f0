"""What the CLI prints for several commands: aligned tables, JSON, YAML, times, progress on stderr.

Results go to stdout (tables, `-o json`, configs); progress and notes go to stderr so
`jumpstarter ... -o json | jq` and `-o name` stay machine-readable.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from jumpstarter.cli.builder import Arg, arg

NONE = "(none)"


def output_arg(*choices: str) -> Arg:
    """The `-o/--output` option: the first choice is the default."""
    return arg(
        "-o",
        "--output",
        choices=list(choices),
        default=choices[0],
        help=f"output format (default: {choices[0]})",
    )


#: `-o` choices of every command that lists or changes something: a table (or a line) for people, data for scripts.
FORMATS = ("table", "json", "yaml")


def print_data(data: Any, output: str) -> bool:
    """Print `data` as JSON or YAML when `output` asks for it; False when a person's format is wanted."""
    if output == "json":
        print_json(data)
    elif output == "yaml":
        print_yaml(data)
    else:
        return False
    return True


def message_dicts(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Protobuf messages as dicts with their proto field names (enums by name)."""
    from google.protobuf.json_format import MessageToDict

    return [MessageToDict(m, preserving_proto_field_name=True) for m in messages]


def exporter_status(value: Any) -> str:
    """An ExporterStatus number as its name (`available`, `lease_ready`, ...); names pass through."""
    from jumpstarter.v1 import common_pb2

    if isinstance(value, str) and not value.isdigit():
        return value.removeprefix("EXPORTER_STATUS_").lower()
    try:
        name = common_pb2.ExporterStatus.Name(int(value))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return str(value)
    return name.removeprefix("EXPORTER_STATUS_").lower()


def table(rows: Sequence[Sequence[str]], columns: Sequence[str]) -> None:
    """Print `format_table(rows, columns)`."""
    print(format_table(rows, columns))


def format_table(rows: Sequence[Sequence[str]], columns: Sequence[str]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks; a heading line first."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in (columns, *rows)
    )


def record_table(records: list[dict[str, Any]], columns: list[str]) -> None:
    """Dicts as a table of `columns` (upper-cased headings), or `(none)`."""
    if not records:
        print(NONE)
        return
    table([[cell(r.get(c)) for c in columns] for r in records], [c.upper() for c in columns])


def cell(value: Any) -> str:
    """One table cell: `-` for nothing, k=v lists for labels, UTC minutes for epoch times."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, float) and value > 1e9:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(value))
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def labels_cell(labels: Any) -> str:
    """A label map (dict or protobuf map) as `k=v,k=v`, or `-`."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def utc_millis(seconds: float) -> str:
    """An epoch time as ISO 8601 UTC with milliseconds, e.g. 2026-01-02T03:04:05.678Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def when(ts: Any) -> str:
    """A protobuf Timestamp in local time, or `-` when unset."""
    if ts is None or not (ts.seconds or ts.nanos):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts.seconds))


def print_json(data: Any, indent: int | None = 2) -> None:
    print(json.dumps(data, indent=indent))


def print_yaml(document: Any) -> None:
    import yaml

    sys.stdout.write(yaml.safe_dump(document, sort_keys=False))


def note(text: str) -> None:
    """A message for the person at the terminal, not for a pipe: stderr."""
    print(text, file=sys.stderr, flush=True)


def print_wait(reason: str, message: str) -> None:
    """Progress while a lease waits (queue position, reason)."""
    note(f"waiting: {message or reason}")
