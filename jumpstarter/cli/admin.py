"""`jumpstarter admin …`: manage the controller from its host, or its cluster with --kubeconfig.

Talks to controllerd's admin socket (`--admin-socket`, default
/run/jumpstarter-controllerd/admin.sock); access is whoever may open that
socket (root or the controller's user). Created clients and exporters come
out as ready-to-use upstream-format configs.

With --kubeconfig FILE [--context NAME] it talks to the Kubernetes cluster
instead (the controller's Kubernetes store): `create client|exporter NAME`
makes the resource and prints the config once controllerd has published its
credential (`--service-account`: a ServiceAccount token from TokenRequest),
`get clients|exporters|leases` and `delete client|exporter NAME` act on the
resources. Every other command needs the admin socket on the controller
(kubectl exec into the controllerd pod).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from typing import Any

from jumpstarter import names
from jumpstarter.cli import admin_kube
from jumpstarter.cli.output import (
    NONE,
    cell,
    exporter_status,
    note,
    print_data,
    print_yaml,
    record_table,
    table,
    utc_millis,
)
from jumpstarter.cli.remote import duration_seconds, key_values
from jumpstarter.errors import ConfigError, JumpstarterError
from jumpstarter.names import InvalidName, check_labels

DEFAULT_SOCKET = "/run/jumpstarter-controllerd/admin.sock"


def default_socket() -> str:
    return os.environ.get("JUMPSTARTER_ADMIN_SOCKET", DEFAULT_SOCKET)


def call(socket: str, op: str, rpc_timeout: float = 30, **args: Any) -> Any:
    import grpc

    if not os.path.exists(socket):
        raise JumpstarterError(
            f"no controller admin socket at {socket} (is jumpstarter-controllerd running here?)"
        )
    if not os.access(socket, os.R_OK | os.W_OK):
        raise JumpstarterError(f"permission denied on {socket}: run as root or the controller's user")
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        method = channel.unary_unary("/jumpstarter.admin.v1.Admin/Call")
        try:
            reply = method(json.dumps({"op": op, "args": args}).encode(), timeout=rpc_timeout)
        except grpc.RpcError as exc:
            raise JumpstarterError(f"{op}: {exc.details()}") from None
    return json.loads(reply)["result"]


def _call_named(a: argparse.Namespace, op: str, **args: Any) -> Any:
    """`op` on the object named by `a.namespace` and `a.name`."""
    return call(a.admin_socket, op, namespace=a.namespace, name=a.name, **args)


def _checked_labels(items: list[str]) -> dict[str, str]:
    """`-l KEY=VALUE` options, refused here with the controller's own rules before any call."""
    try:
        return check_labels(key_values(items, "labels"))
    except InvalidName as exc:
        raise ConfigError(str(exc)) from None


def check_name(value: str, what: str) -> str:
    try:
        return names.check_name(value, what)
    except InvalidName as exc:
        raise ConfigError(str(exc)) from None


def _emit_config(kind: str, result: dict[str, Any], output: str | None) -> None:
    from jumpstarter.config.client import ClientConfig, exporter_document, write_private

    if kind == "viewer":  # no config file: a token to paste into the dashboard's login form
        document = {k: result[k] for k in ("namespace", "name", "token", "dashboard")}
        if output:
            write_private(output, document)
            note(f"wrote {output} (mode 0600; it holds the viewer's token)")
        else:
            print_yaml(document)
        return
    ca = base64.b64encode(result["ca"].encode()).decode()
    if kind == "client":
        document = ClientConfig(
            result["namespace"], result["name"], result["endpoint"], result["token"], ca
        ).to_document()
    else:
        document = exporter_document(
            result["namespace"], result["name"], result["endpoint"], result["token"], ca
        )
    if output:
        write_private(output, document)
        note(f"wrote {output} (mode 0600; it holds the {kind}'s token)")
    else:
        print_yaml(document)


COLUMNS = {
    "clients": ["namespace", "name", "labels"],
    "exporters": ["namespace", "name", "online", "enabled", "status", "health", "health_reason", "labels"],
    "leases": ["namespace", "name", "client", "exporter", "selector", "ended"],
    "policies": ["namespace", "name", "exporter_selector", "client_selector", "priority", "maximum_duration"],
    "tokens": ["kind", "namespace", "name", "issued", "expires", "revoked", "jti"],
}


AUDIT_COLUMNS = ["id", "time", "kind", "name", "action", "actor", "exporter", "client", "reason", "message"]


def since_seconds(text: str, now: float | None = None) -> float:
    """`--since`: an ISO time (UTC unless it says otherwise) or a duration back from now (`10m`, `2h`)."""
    import datetime

    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            return (time.time() if now is None else now) - duration_seconds(text)
        except ConfigError:
            raise ConfigError(f"--since: expected an ISO time or a duration like 10m, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _audit_row(event: dict[str, Any]) -> list[str]:
    return [utc_millis(event["time"]) if c == "time" else cell(event.get(c)) for c in AUDIT_COLUMNS]


# -- handlers: one per command row ------------------------------------------------------------


def run_create(a: argparse.Namespace) -> int:
    labels = _checked_labels(a.label)
    check_name(a.namespace, "namespace")
    check_name(a.name, f"{a.kind} name")
    if admin_kube.wanted(a):
        return admin_kube.run_create(a, labels, _emit_config)
    if a.service_account or a.duration is not None:
        raise ConfigError(
            "--service-account and --duration need --kubeconfig (ServiceAccounts are the cluster's)"
        )
    result = _call_named(a, f"create_{a.kind}", labels=labels)
    _emit_config(a.kind, result, a.output)
    return 0


def run_get(a: argparse.Namespace) -> int:
    if admin_kube.wanted(a):
        check_name(a.namespace, "namespace")
        return admin_kube.run_get(a)
    rows = call(a.admin_socket, "get", kind=a.kind, namespace=a.namespace, all=a.all)
    if not print_data(rows, a.output):
        for row in rows:
            if "status" in row:
                row["status"] = exporter_status(row["status"])
        record_table(rows, COLUMNS[a.kind])
    return 0


def _report(a: argparse.Namespace, result: Any, text: str) -> int:
    """An admin action's result: one line for people, the controller's answer for `-o json|yaml`."""
    if not print_data(result, a.output):
        print(text)
    return 0


def _tokens(count: int) -> str:
    return f"{count} token{'' if count == 1 else 's'}"


def run_delete(a: argparse.Namespace) -> int:
    if admin_kube.wanted(a):
        check_name(a.namespace, "namespace")
        check_name(a.name, f"{a.kind} name")
        return admin_kube.run_delete(a)
    result = _call_named(a, "delete", kind=a.kind + "s")
    return _report(
        a, result, f"deleted {a.kind} {result['deleted']} ({_tokens(result['tokens_revoked'])} revoked)"
    )


def _set_enabled(a: argparse.Namespace, enabled: bool) -> int:
    result = _call_named(a, "enable_exporter", enabled=enabled)
    return _report(a, result, f"exporter {a.name} {'enabled' if result['enabled'] else 'disabled'}")


def run_enable(a: argparse.Namespace) -> int:
    return _set_enabled(a, True)


def run_disable(a: argparse.Namespace) -> int:
    return _set_enabled(a, False)


def run_label(a: argparse.Namespace) -> int:
    labels = _checked_labels(a.label)
    result = _call_named(a, "label_exporter", labels=labels)
    return _report(a, result, f"exporter {a.name} labels: {cell(result['labels'])}")


def run_policy_set(a: argparse.Namespace) -> int:
    result = _call_named(
        a,
        "set_policy",
        exporter_selector=a.exporters,
        client_selector=a.clients,
        priority=a.priority,
        maximum_duration=duration_seconds(a.max_duration) if a.max_duration else None,
    )
    maximum = result.get("maximum_duration")
    return _report(
        a,
        result,
        f"policy {a.name} set: exporters {result.get('exporter_selector') or '*'}, "
        f"clients {result.get('client_selector') or '*'}, priority {result.get('priority')}, "
        f"maximum duration {f'{maximum:g}s' if maximum else 'none'}",
    )


def run_policy_delete(a: argparse.Namespace) -> int:
    result = _call_named(a, "delete_policy")
    return _report(a, result, f"deleted policy {a.name}")


def run_revoke(a: argparse.Namespace) -> int:
    result = _call_named(a, "revoke", kind=a.kind)
    return _report(a, result, f"revoked {_tokens(result['revoked'])} of {a.kind} {a.name}")


def run_rotate(a: argparse.Namespace) -> int:
    result = _call_named(a, "rotate", kind=a.kind)
    _emit_config(a.kind, result, a.output)
    return 0


def run_issue_router_cert(a: argparse.Namespace) -> int:
    from jumpstarter.files import write_atomic

    try:
        hosts = [names.check_host(h) for h in a.host]
    except InvalidName as exc:
        raise ConfigError(str(exc)) from None
    result = call(a.admin_socket, "issue_server_cert", hosts=hosts)
    out = os.path.abspath(a.out)
    for name, data, mode in (
        ("router.key", result["key"], 0o600),
        ("router.crt", result["cert"], 0o644),
        ("ca.crt", result["ca"], 0o644),
    ):
        write_atomic(os.path.join(out, name), data.encode(), mode, dir_mode=0o700)
    note(
        f"wrote {out}/router.crt, router.key (mode 0600) and ca.crt for {', '.join(hosts)};\n"
        "copy them to the router host's tls directory (tls.cert, tls.key in routerd.yaml)"
    )
    return 0


def run_audit(a: argparse.Namespace) -> int:
    since = since_seconds(a.since) if a.since else None
    events = call(
        a.admin_socket,
        "audit",
        namespace=a.namespace,
        lease=a.lease,
        exporter=a.exporter,
        client=a.client,
        since=since,
        limit=a.limit,
    )
    if print_data(events, a.output):
        return 0
    if not events:
        print(NONE)
    else:
        table([_audit_row(e) for e in events], [c.upper() for c in AUDIT_COLUMNS])
    return 0


def run_release(a: argparse.Namespace) -> int:
    result = _call_named(a, "release_lease")
    return _report(a, result, f"lease {a.name} {'ended' if result.get('ended') else 'released'}")


def run_maintenance(a: argparse.Namespace) -> int:
    if a.done == (a.reason is not None):
        raise ConfigError("give --reason TEXT to take the board out of service, or --done to put it back")
    check_name(a.name, "exporter name")
    result = _call_named(a, "exporter_maintenance", reason=a.reason, done=a.done)
    return _report(
        a,
        result,
        f"{result['name']}: {result['state']}" + (f" ({result['reason']})" if result["reason"] else ""),
    )


def run_lease_create(a: argparse.Namespace) -> int:
    result = call(
        a.admin_socket,
        "create_lease",
        namespace=a.namespace,
        client=check_name(a.client, "client name"),
        exporter=check_name(a.exporter, "exporter name"),
        duration=duration_seconds(a.duration),
    )
    state = f"acquired {result['exporter']}" if result["ready"] else f"waiting for {result['exporter']}"
    return _report(a, result, f"{result['name']} ({state}; client {result['client']})")


def run_health(a: argparse.Namespace) -> int:
    check_name(a.name, "exporter name")
    result = _call_named(a, "health_run", rpc_timeout=a.timeout)
    if not print_data(result, a.output):
        verdict = "passed" if result["ok"] else "FAILED"
        print(f"{result['name']}: health check {verdict} in {result['duration']:g}s; state {result['state']}")
        if result["output"]:
            print(result["output"])
    return 0 if result["ok"] else 1
