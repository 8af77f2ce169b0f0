"""Our generated descriptors must match the upstream protocol (jumpstarter-protocol 0.9.0).

Both sides register the same proto file names (e.g. `jumpstarter/v1/jumpstarter.proto`) in
the default descriptor pool, so each side is loaded in its own subprocess, which prints a
flat JSON description: one entry per file, message (including map-entry types), field,
oneof, enum, enum value, service and method. The test then compares the two descriptions.

Everything upstream has must be in ours, identical. Ours may contain more only where
PROTOCOL.md section 1 states it (those fields/rpcs/files are newer than the 0.9.0 oracle):
they are listed, with their exact descriptions, in PROTOCOL_ADDITIONS below.

The upstream `google.api.*` annotations (HTTP bindings, field_behavior, resource options)
and the per-language file options are options only, not wire facts: they are not compared,
and the `google/api/*.proto` imports they need are ignored.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ORACLE_DIST = "jumpstarter-protocol"
ORACLE_VERSION = "0.9.0"
ORACLE_PACKAGE = "jumpstarter_protocol"

# Runs in a fresh interpreter: argv[1] is the root package whose *_pb2 modules to load
# ("jumpstarter" for ours, "jumpstarter_protocol" for upstream); prints JSON on stdout.
DUMPER = r"""
import importlib, importlib.util, json, sys, warnings
from pathlib import Path

warnings.simplefilter("ignore")  # gencode/runtime version notices
from google.protobuf import descriptor_pb2, descriptor_pool

root = sys.argv[1]
spec = importlib.util.find_spec(root)
if spec is None or not spec.submodule_search_locations:
    sys.exit(f"cannot find package {root!r}")
pkg_dir = Path(list(spec.submodule_search_locations)[0])
if root == "jumpstarter":
    # Only our generated packages: the rest of `jumpstarter` is unrelated code.
    candidates = [p for sub in ("v1", "client/v1") for p in (pkg_dir / sub).glob("*_pb2*.py")]
else:
    candidates = list(pkg_dir.rglob("*_pb2*.py"))
modules = sorted(
    root + "." + p.relative_to(pkg_dir).with_suffix("").as_posix().replace("/", ".") for p in candidates
)
if not modules:
    sys.exit(f"no *_pb2 modules under {pkg_dir}")

files = {}
module_files = {}
for name in modules:
    mod = importlib.import_module(name)  # *_pb2_grpc too: they must import cleanly
    module_files[name] = getattr(mod, "__file__", None)
    if name.endswith("_pb2"):
        files[mod.DESCRIPTOR.name] = mod.DESCRIPTOR

pool = descriptor_pool.Default()
LABEL = descriptor_pb2.FieldDescriptorProto.Label.Name
TYPE = descriptor_pb2.FieldDescriptorProto.Type.Name
out = {}

def message(fname, prefix, m):
    full = f"{prefix}.{m.name}"
    out[f"message {full}"] = f"in {fname}" + (" map_entry" if m.options.map_entry else "")
    live = pool.FindMessageTypeByName(full)
    for f in m.field:
        parts = [f"#{f.number}", LABEL(f.label), TYPE(f.type)]
        if f.type_name:
            parts.append(f.type_name.lstrip("."))
        parts.append("json=" + live.fields_by_name[f.name].json_name)
        if f.proto3_optional:
            parts.append("proto3_optional")
        if f.HasField("oneof_index"):
            parts.append("oneof=" + m.oneof_decl[f.oneof_index].name)
        if f.HasField("default_value"):
            parts.append("default=" + f.default_value)
        if f.options.deprecated:
            parts.append("deprecated")
        out[f"field {full}.{f.name}"] = " ".join(parts)
    for i, o in enumerate(m.oneof_decl):
        members = [f for f in m.field if f.HasField("oneof_index") and f.oneof_index == i]
        synthetic = bool(members) and all(f.proto3_optional for f in members)
        out[f"oneof {full}.{o.name}"] = ("synthetic" if synthetic else "real") + " fields=" + ",".join(
            f.name for f in members
        )
    for e in m.enum_type:
        enum(fname, full, e)
    for n in m.nested_type:
        message(fname, full, n)
    for x in m.extension:
        out[f"extension {full}.{x.name}"] = f"#{x.number} {TYPE(x.type)} extends {x.extendee}"

def enum(fname, prefix, e):
    full = f"{prefix}.{e.name}"
    out[f"enum {full}"] = f"in {fname}"
    for v in e.value:
        out[f"enumvalue {full}.{v.name}"] = str(v.number)

for fname, fd in sorted(files.items()):
    p = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(p)
    out[f"file {fname}"] = f"package={p.package} syntax={p.syntax or 'proto2'}"
    deps = sorted(d for d in p.dependency if not d.startswith("google/api/"))
    out[f"file {fname} imports"] = " ".join(deps)
    pkg = p.package
    for m in p.message_type:
        message(fname, pkg, m)
    for e in p.enum_type:
        enum(fname, pkg, e)
    for x in p.extension:
        out[f"extension {pkg}.{x.name}"] = f"#{x.number} {TYPE(x.type)} extends {x.extendee}"
    for s in p.service:
        sfull = f"{pkg}.{s.name}"
        out[f"service {sfull}"] = f"in {fname}"
        for md in s.method:
            cs = "stream " if md.client_streaming else ""
            ss = "stream " if md.server_streaming else ""
            out[f"method {sfull}.{md.name}"] = (
                f"{cs}{md.input_type.lstrip('.')} -> {ss}{md.output_type.lstrip('.')}"
            )

print(json.dumps({"modules": module_files, "files": sorted(files), "descr": out}))
"""

# Present in ours, absent from the 0.9.0 oracle, stated explicitly by PROTOCOL.md section 1.
PROTOCOL_ADDITIONS: dict[str, str] = {
    # jumpstarter/v1/jumpstarter.proto
    "field jumpstarter.v1.StatusResponse.context": "#4 LABEL_REPEATED TYPE_MESSAGE jumpstarter.v1.StatusResponse.ContextEntry json=context",
    "message jumpstarter.v1.StatusResponse.ContextEntry": "in jumpstarter/v1/jumpstarter.proto map_entry",
    "field jumpstarter.v1.StatusResponse.ContextEntry.key": "#1 LABEL_OPTIONAL TYPE_STRING json=key",
    "field jumpstarter.v1.StatusResponse.ContextEntry.value": "#2 LABEL_OPTIONAL TYPE_STRING json=value",
    "field jumpstarter.v1.GetReportResponse.motd": "#5 LABEL_OPTIONAL TYPE_STRING json=motd",
    "field jumpstarter.v1.LogStreamResponse.driver_type": "#5 LABEL_OPTIONAL TYPE_STRING json=driverType proto3_optional oneof=_driver_type",
    "field jumpstarter.v1.LogStreamResponse.operation": "#6 LABEL_OPTIONAL TYPE_STRING json=operation proto3_optional oneof=_operation",
    "field jumpstarter.v1.LogStreamResponse.timestamp": "#7 LABEL_OPTIONAL TYPE_MESSAGE google.protobuf.Timestamp json=timestamp proto3_optional oneof=_timestamp",
    "field jumpstarter.v1.LogStreamResponse.structured_fields": "#8 LABEL_REPEATED TYPE_MESSAGE jumpstarter.v1.LogStreamResponse.StructuredFieldsEntry json=structuredFields",
    "oneof jumpstarter.v1.LogStreamResponse._driver_type": "synthetic fields=driver_type",
    "oneof jumpstarter.v1.LogStreamResponse._operation": "synthetic fields=operation",
    "oneof jumpstarter.v1.LogStreamResponse._timestamp": "synthetic fields=timestamp",
    "message jumpstarter.v1.LogStreamResponse.StructuredFieldsEntry": "in jumpstarter/v1/jumpstarter.proto map_entry",
    "field jumpstarter.v1.LogStreamResponse.StructuredFieldsEntry.key": "#1 LABEL_OPTIONAL TYPE_STRING json=key",
    "field jumpstarter.v1.LogStreamResponse.StructuredFieldsEntry.value": "#2 LABEL_OPTIONAL TYPE_STRING json=value",
    "method jumpstarter.v1.ControllerService.GetServiceEndpoints": "jumpstarter.v1.GetServiceEndpointsRequest -> jumpstarter.v1.GetServiceEndpointsResponse",
    "message jumpstarter.v1.GetServiceEndpointsRequest": "in jumpstarter/v1/jumpstarter.proto",
    "message jumpstarter.v1.GetServiceEndpointsResponse": "in jumpstarter/v1/jumpstarter.proto",
    "field jumpstarter.v1.GetServiceEndpointsResponse.telemetry_endpoints": "#1 LABEL_REPEATED TYPE_MESSAGE jumpstarter.v1.TelemetryEndpoint json=telemetryEndpoints",
    "message jumpstarter.v1.TelemetryEndpoint": "in jumpstarter/v1/jumpstarter.proto",
    "field jumpstarter.v1.TelemetryEndpoint.endpoint": "#1 LABEL_OPTIONAL TYPE_STRING json=endpoint",
    "field jumpstarter.v1.TelemetryEndpoint.certificate": "#2 LABEL_OPTIONAL TYPE_STRING json=certificate",
    "field jumpstarter.v1.TelemetryEndpoint.min_severity": "#3 LABEL_OPTIONAL TYPE_STRING json=minSeverity",
    # jumpstarter/v1/telemetry.proto (whole file)
    "file jumpstarter/v1/telemetry.proto": "package=jumpstarter.v1 syntax=proto3",
    "file jumpstarter/v1/telemetry.proto imports": "google/protobuf/timestamp.proto",
    "service jumpstarter.v1.TelemetryService": "in jumpstarter/v1/telemetry.proto",
    "method jumpstarter.v1.TelemetryService.PushLogs": "jumpstarter.v1.PushLogsRequest -> jumpstarter.v1.PushLogsResponse",
    "message jumpstarter.v1.PushLogsRequest": "in jumpstarter/v1/telemetry.proto",
    "field jumpstarter.v1.PushLogsRequest.entries": "#1 LABEL_REPEATED TYPE_MESSAGE jumpstarter.v1.LogEntry json=entries",
    "message jumpstarter.v1.PushLogsResponse": "in jumpstarter/v1/telemetry.proto",
    "field jumpstarter.v1.PushLogsResponse.accepted": "#1 LABEL_OPTIONAL TYPE_UINT32 json=accepted",
    "field jumpstarter.v1.PushLogsResponse.dropped": "#2 LABEL_OPTIONAL TYPE_UINT32 json=dropped",
    "message jumpstarter.v1.LogEntry": "in jumpstarter/v1/telemetry.proto",
    "field jumpstarter.v1.LogEntry.timestamp": "#1 LABEL_OPTIONAL TYPE_MESSAGE google.protobuf.Timestamp json=timestamp",
    "field jumpstarter.v1.LogEntry.severity": "#2 LABEL_OPTIONAL TYPE_STRING json=severity",
    "field jumpstarter.v1.LogEntry.message": "#3 LABEL_OPTIONAL TYPE_STRING json=message",
    "field jumpstarter.v1.LogEntry.component": "#4 LABEL_OPTIONAL TYPE_STRING json=component",
    "field jumpstarter.v1.LogEntry.exporter": "#5 LABEL_OPTIONAL TYPE_STRING json=exporter",
    "field jumpstarter.v1.LogEntry.lease": "#6 LABEL_OPTIONAL TYPE_STRING json=lease",
    "field jumpstarter.v1.LogEntry.client": "#7 LABEL_OPTIONAL TYPE_STRING json=client",
    "field jumpstarter.v1.LogEntry.operation": "#8 LABEL_OPTIONAL TYPE_STRING json=operation",
    "field jumpstarter.v1.LogEntry.result": "#9 LABEL_OPTIONAL TYPE_STRING json=result",
    "field jumpstarter.v1.LogEntry.driver_type": "#10 LABEL_OPTIONAL TYPE_STRING json=driverType",
    "field jumpstarter.v1.LogEntry.extra_fields": "#11 LABEL_REPEATED TYPE_MESSAGE jumpstarter.v1.LogEntry.ExtraFieldsEntry json=extraFields",
    "field jumpstarter.v1.LogEntry.namespace": "#12 LABEL_OPTIONAL TYPE_STRING json=namespace",
    "message jumpstarter.v1.LogEntry.ExtraFieldsEntry": "in jumpstarter/v1/telemetry.proto map_entry",
    "field jumpstarter.v1.LogEntry.ExtraFieldsEntry.key": "#1 LABEL_OPTIONAL TYPE_STRING json=key",
    "field jumpstarter.v1.LogEntry.ExtraFieldsEntry.value": "#2 LABEL_OPTIONAL TYPE_STRING json=value",
    # jumpstarter/client/v1/client.proto
    "field jumpstarter.client.v1.Lease.context": "#15 LABEL_REPEATED TYPE_MESSAGE jumpstarter.client.v1.Lease.ContextEntry json=context",
    "message jumpstarter.client.v1.Lease.ContextEntry": "in jumpstarter/client/v1/client.proto map_entry",
    "field jumpstarter.client.v1.Lease.ContextEntry.key": "#1 LABEL_OPTIONAL TYPE_STRING json=key",
    "field jumpstarter.client.v1.Lease.ContextEntry.value": "#2 LABEL_OPTIONAL TYPE_STRING json=value",
}


def _dump(root_package: str, cwd: Path) -> dict:
    env = dict(os.environ)
    if root_package == "jumpstarter":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", DUMPER, root_package],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"loading the {root_package!r} descriptors failed (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()}\n{proc.stdout[-2000:]}"
        )
    return json.loads(proc.stdout)


def _require_oracle() -> None:
    # A missing oracle is a broken test environment, not a reason to skip.
    if importlib.util.find_spec(ORACLE_PACKAGE) is None:
        pytest.fail(
            f"conformance oracle {ORACLE_DIST}=={ORACLE_VERSION} (module {ORACLE_PACKAGE}) is not "
            f"installed; install the test extra: pip install -e '.[test]'"
        )
    version = importlib.metadata.version(ORACLE_DIST)
    if version != ORACLE_VERSION:
        pytest.fail(f"conformance oracle must be {ORACLE_DIST}=={ORACLE_VERSION}, found {version}")


def compare(upstream: dict[str, str], ours: dict[str, str], additions: dict[str, str]) -> list[str]:
    """Readable list of every difference; empty when ours conforms."""
    problems: list[str] = []
    for key in sorted(upstream.keys() | ours.keys() | additions.keys(), key=lambda k: k.split(" ", 1)[::-1]):
        up, us = upstream.get(key), ours.get(key)
        if up is not None:
            if us is None:
                problems.append(f"missing in ours:  {key}\n    upstream: {up}")
            elif us != up:
                problems.append(f"differs:          {key}\n    upstream: {up}\n    ours:     {us}")
            if key in additions:
                problems.append(f"PROTOCOL_ADDITIONS entry is now in the oracle, drop it: {key}")
        elif key in additions:
            if us is None:
                problems.append(
                    f"missing in ours (PROTOCOL.md addition): {key}\n    expected: {additions[key]}"
                )
            elif us != additions[key]:
                problems.append(
                    f"differs from PROTOCOL.md addition: {key}\n    expected: {additions[key]}\n    ours:     {us}"
                )
        else:
            problems.append(f"extra in ours (neither upstream nor PROTOCOL_ADDITIONS): {key}\n    ours: {us}")
    return problems


def test_descriptors_match_upstream_oracle(tmp_path: Path) -> None:
    _require_oracle()
    upstream = _dump(ORACLE_PACKAGE, cwd=tmp_path)
    ours = _dump("jumpstarter", cwd=REPO_ROOT)

    for module, path in ours["modules"].items():
        assert path and Path(path).resolve().is_relative_to(REPO_ROOT), (
            f"{module} loaded from {path}, not the repo"
        )
    # Same registered file names as upstream (ours may add files listed in PROTOCOL_ADDITIONS).
    missing_files = sorted(set(upstream["files"]) - set(ours["files"]))
    assert not missing_files, f"proto files upstream registers but we do not: {missing_files}"

    problems = compare(upstream["descr"], ours["descr"], PROTOCOL_ADDITIONS)
    assert not problems, (
        f"{len(problems)} difference(s) between our descriptors and {ORACLE_DIST}=={ORACLE_VERSION}:\n\n"
        + "\n".join(problems)
    )


def test_compare_reports_each_kind_of_difference() -> None:
    upstream = {
        "field a.M.x": "#1 LABEL_OPTIONAL TYPE_STRING json=x",
        "field a.M.y": "#2 LABEL_OPTIONAL TYPE_BOOL json=y",
    }
    ours = {
        "field a.M.x": "#3 LABEL_OPTIONAL TYPE_STRING json=x",
        "field a.M.z": "#4 LABEL_OPTIONAL TYPE_BOOL json=z",
    }
    problems = "\n".join(compare(upstream, ours, {}))
    assert "differs:          field a.M.x" in problems
    assert "missing in ours:  field a.M.y" in problems
    assert "extra in ours (neither upstream nor PROTOCOL_ADDITIONS): field a.M.z" in problems
    assert compare(upstream, dict(upstream, **{"field a.M.z": "v"}), {"field a.M.z": "v"}) == []
