"""`jumpstarter get exporters` and `jumpstarter lease create|list|get|extend|transfer|release`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jumpstarter.cli.output import (
    exporter_status,
    labels_cell,
    message_dicts,
    print_data,
    print_wait,
    table,
    when,
)
from jumpstarter.cli.remote import controller, duration_seconds, key_values, selector_text
from jumpstarter.errors import ConfigError

BOARD_STATE_LABELS = ("jumpstarter.dev/health", "jumpstarter.dev/health-reason")  # controllerd/convert.py


def _board_state(labels: Any) -> str:
    """STATE: healthy, unhealthy, maintenance or unknown, with the reason when there is one."""
    state = labels.get(BOARD_STATE_LABELS[0], "unknown")
    reason = labels.get(BOARD_STATE_LABELS[1], "")
    return f"{state}: {reason}" if reason else state


def cmd_get_exporters(args: argparse.Namespace) -> int:
    from jumpstarter.client.remote import short_name

    selector = selector_text(args.selector)
    with controller(args) as client:
        exporters = client.list_exporters(selector)
    if print_data(message_dicts(exporters), args.output):
        return 0
    if args.output == "name":
        for exporter in exporters:
            print(short_name(exporter.name))
    else:
        rows = [
            [
                short_name(e.name),
                "yes" if e.online else "no",
                exporter_status(e.status),
                _board_state(e.labels),
                labels_cell({k: v for k, v in e.labels.items() if k not in BOARD_STATE_LABELS}),
            ]
            for e in exporters
        ]
        table(rows, ["NAME", "ONLINE", "STATUS", "STATE", "LABELS"])
    return 0


def _lease_rows(leases: list[Any]) -> list[list[str]]:
    from jumpstarter.client.remote import lease_state, short_name

    rows = []
    for le in leases:
        state, reason, _ = lease_state(le)
        status = {"ready": "ready", "pending": "pending", "failed": "failed", "ended": "ended"}[state]
        if reason and state != "ready":
            status += f" ({reason})"
        rows.append(
            [
                short_name(le.name),
                short_name(le.client) if le.client else "-",
                short_name(le.exporter) if le.exporter else "-",
                le.selector or (f"name={le.exporter_name}" if le.exporter_name else "-"),
                status,
                when(le.effective_begin_time if le.HasField("effective_begin_time") else None),
                when(le.effective_end_time if le.HasField("effective_end_time") else _planned_end(le)),
            ]
        )
    return rows


def _planned_end(lease: Any) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    if lease.HasField("end_time"):
        return lease.end_time
    if lease.HasField("effective_begin_time") and lease.HasField("duration"):
        end = Timestamp()
        end.FromNanoseconds(lease.effective_begin_time.ToNanoseconds() + lease.duration.ToNanoseconds())
        return end
    return None


def _show_leases(leases: list[Any], output: str) -> None:
    from jumpstarter.client.remote import short_name

    if print_data(message_dicts(leases), output):
        return
    if output == "name":
        for le in leases:
            print(short_name(le.name))
    else:
        table(_lease_rows(leases), ["NAME", "CLIENT", "EXPORTER", "SELECTOR", "STATUS", "BEGIN", "END"])


def cmd_lease_create(args: argparse.Namespace) -> int:
    selector = selector_text(args.selector)
    if not selector and not args.exporter:
        raise ConfigError("lease create needs -l SELECTOR or --exporter NAME")
    options: dict[str, Any] = {
        "tags": key_values(args.tag, "--tag"),
        "context": key_values(args.context, "--context"),
        "lease_id": args.lease_id,
        "allow_disabled": args.allow_disabled,
    }
    if args.begin_time:
        from datetime import datetime

        try:
            options["begin_time"] = datetime.fromisoformat(args.begin_time).timestamp()
        except ValueError as exc:
            raise ConfigError(f"--begin-time: {exc}") from None
    duration = duration_seconds(args.duration)
    with controller(args) as client:
        if args.wait:
            lease = client.acquire(selector, args.exporter, duration, on_wait=print_wait, **options)
        else:
            lease = client.create_lease(selector, args.exporter, duration, **options)
    _show_leases([lease], args.output)
    return _failed(lease)


def _failed(lease: Any) -> int:
    """1 (with the reason on stderr) when the controller refused the lease, else 0."""
    from jumpstarter.client.remote import lease_state, short_name

    state, reason, message = lease_state(lease)
    if state != "failed":
        return 0
    print(f"jumpstarter: error: lease {short_name(lease.name)} failed: {message or reason}", file=sys.stderr)
    return 1


def cmd_lease_list(args: argparse.Namespace) -> int:
    with controller(args) as client:
        leases = client.list_leases(
            only_active=not args.all, selector=selector_text(args.selector), tag_filter=args.tag_filter
        )
        if not args.all_clients:
            leases = [le for le in leases if client.owns(le)]
    _show_leases(leases, args.output)
    return 0


def cmd_lease_get(args: argparse.Namespace) -> int:
    with controller(args) as client:
        _show_leases([client.get_lease(args.name)], args.output)
    return 0


def cmd_lease_extend(args: argparse.Namespace) -> int:
    extra = duration_seconds(args.duration)
    with controller(args) as client:
        lease = client.get_lease(args.name)
        if lease.HasField("end_time") and not lease.HasField("duration"):
            lease = client.update_lease(args.name, end_time=lease.end_time.ToNanoseconds() / 1e9 + extra)
        else:
            current = lease.duration.ToNanoseconds() / 1e9 if lease.HasField("duration") else 0.0
            lease = client.update_lease(args.name, duration=current + extra)
    print(f"lease {args.name} now ends {when(_planned_end(lease))}")
    return 0


def cmd_lease_transfer(args: argparse.Namespace) -> int:
    with controller(args) as client:
        client.update_lease(args.name, client=args.to)
    print(f"lease {args.name} transferred to {args.to}")
    return 0


def cmd_lease_release(args: argparse.Namespace) -> int:
    import grpc

    from jumpstarter.client.remote import RemoteError

    missing = 0
    with controller(args) as client:
        for name in args.names:
            try:
                client.delete_lease(name)
                print(f"released {name}")
            except RemoteError as exc:
                if exc.code == grpc.StatusCode.FAILED_PRECONDITION:  # ended already: nothing to do
                    print(f"{name} had already ended", file=sys.stderr)
                elif exc.code == grpc.StatusCode.NOT_FOUND:
                    print(f"jumpstarter: error: lease {name} does not exist", file=sys.stderr)
                    missing += 1
                else:
                    raise
    return 1 if missing else 0
