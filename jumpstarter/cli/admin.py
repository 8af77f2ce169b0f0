"""`jumpstarter admin …`: manage the controller from the controller host.

Talks to controllerd's admin socket (`--admin-socket`, default
/run/jumpstarter-controllerd/admin.sock); access is whoever may open that
socket (root or the controller's user). Created clients and exporters come
out as ready-to-use upstream-format configs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any

from jumpstarter import names
from jumpstarter.cli.remote import duration_seconds, key_values, table
from jumpstarter.errors import ConfigError, JumpstarterError
from jumpstarter.names import InvalidName, check_labels

DEFAULT_SOCKET = "/run/jumpstarter-controllerd/admin.sock"


def call(socket: str, op: str, **args: Any) -> Any:
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
            reply = method(json.dumps({"op": op, "args": args}).encode(), timeout=30)
        except grpc.RpcError as exc:
            raise JumpstarterError(f"{op}: {exc.details()}") from None
    return json.loads(reply)["result"]


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
        print(f"wrote {output} (mode 0600; it holds the {kind}'s token)", file=sys.stderr)
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(document, sort_keys=False))


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
    print(
        f"wrote {out}/router.crt, router.key (mode 0600) and ca.crt for {', '.join(hosts)};\n"
        "copy them to the router host's tls directory (tls.cert, tls.key in routerd.yaml)",
        file=sys.stderr,
    )
    return 0


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    table([[_cell(r.get(c)) for c in columns] for r in rows], [c.upper() for c in columns])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, float) and value > 1e9:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(value))
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


COLUMNS = {
    "clients": ["namespace", "name", "labels"],
    "exporters": ["namespace", "name", "online", "enabled", "status", "labels"],
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
    stamp = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["time"]))
        + f".{int(event['time'] % 1 * 1000):03d}Z"
    )
    return [stamp if c == "time" else _cell(event.get(c)) for c in AUDIT_COLUMNS]


def add_admin_parser(sub: Any) -> None:
    admin = sub.add_parser(
        "admin",
        help="manage the controller (on the controller host)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    admin.add_argument("--admin-socket", default=os.environ.get("JUMPSTARTER_ADMIN_SOCKET", DEFAULT_SOCKET))
    admin.add_argument("-n", "--namespace", default="default")
    commands = admin.add_subparsers(title="commands", metavar="COMMAND")
    admin.set_defaults(func=lambda a: (admin.print_help(sys.stderr), 2)[1], needs_board=False)

    create = commands.add_parser("create", help="create a client or an exporter; prints its config")
    create.add_argument("kind", choices=["client", "exporter"])
    create.add_argument("name")
    create.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument(
        "-o", "--output", metavar="FILE", help="write the config here (mode 0600) instead of stdout"
    )

    def run_create(a: argparse.Namespace) -> int:
        labels = _checked_labels(a.label)
        check_name(a.namespace, "namespace")
        check_name(a.name, f"{a.kind} name")
        result = call(a.admin_socket, f"create_{a.kind}", namespace=a.namespace, name=a.name, labels=labels)
        _emit_config(a.kind, result, a.output)
        return 0

    create.set_defaults(func=run_create, needs_board=False)

    get = commands.add_parser("get", help="list clients, exporters, leases, policies or tokens")
    get.add_argument("kind", choices=sorted(COLUMNS))
    get.add_argument("--all", action="store_true", help="leases: include ended ones")
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")

    def run_get(a: argparse.Namespace) -> int:
        rows = call(a.admin_socket, "get", kind=a.kind, namespace=a.namespace, all=a.all)
        if a.output == "json":
            print(json.dumps(rows, indent=2))
        else:
            _table(rows, COLUMNS[a.kind])
        return 0

    get.set_defaults(func=run_get, needs_board=False)

    delete = commands.add_parser(
        "delete", help="delete a client or an exporter (its leases end, its tokens are revoked)"
    )
    delete.add_argument("kind", choices=["client", "exporter"])
    delete.add_argument("name")
    delete.set_defaults(
        func=lambda a: (
            print(call(a.admin_socket, "delete", kind=a.kind + "s", namespace=a.namespace, name=a.name)) or 0
        ),
        needs_board=False,
    )

    for verb, enabled in (("enable", True), ("disable", False)):
        cmd = commands.add_parser(verb, help=f"{verb} an exporter for new leases")
        cmd.add_argument("kind", choices=["exporter"])
        cmd.add_argument("name")
        cmd.set_defaults(
            func=lambda a, enabled=enabled: (
                print(
                    call(
                        a.admin_socket, "enable_exporter", namespace=a.namespace, name=a.name, enabled=enabled
                    )
                )
                or 0
            ),
            needs_board=False,
        )

    label = commands.add_parser("label", help="set an exporter's selector labels (replaces them)")
    label.add_argument("kind", choices=["exporter"])
    label.add_argument("name")
    label.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    label.set_defaults(
        func=lambda a: (
            print(
                call(
                    a.admin_socket,
                    "label_exporter",
                    namespace=a.namespace,
                    name=a.name,
                    labels=_checked_labels(a.label),
                )
            )
            or 0
        ),
        needs_board=False,
    )

    policy = commands.add_parser(
        "policy", help="access policies: who may lease which exporters, priority, max duration"
    )
    policy_cmds = policy.add_subparsers(title="commands", metavar="COMMAND")
    policy.set_defaults(func=lambda a: (policy.print_help(sys.stderr), 2)[1], needs_board=False)
    pset = policy_cmds.add_parser("set", help="create or replace a policy")
    pset.add_argument("name")
    pset.add_argument(
        "--exporters", default="", metavar="SELECTOR", help="exporter label selector (empty = all)"
    )
    pset.add_argument("--clients", default="", metavar="SELECTOR", help="client label selector (empty = all)")
    pset.add_argument("--priority", type=int, default=0, help="higher goes first in the lease queue")
    pset.add_argument("--max-duration", metavar="DURATION", help="longest lease allowed (e.g. 2h)")
    pset.set_defaults(
        func=lambda a: (
            print(
                json.dumps(
                    call(
                        a.admin_socket,
                        "set_policy",
                        namespace=a.namespace,
                        name=a.name,
                        exporter_selector=a.exporters,
                        client_selector=a.clients,
                        priority=a.priority,
                        maximum_duration=(duration_seconds(a.max_duration) if a.max_duration else None),
                    )
                )
            )
            or 0
        ),
        needs_board=False,
    )
    pdel = policy_cmds.add_parser("delete", help="delete a policy")
    pdel.add_argument("name")
    pdel.set_defaults(
        func=lambda a: print(call(a.admin_socket, "delete_policy", namespace=a.namespace, name=a.name)) or 0,
        needs_board=False,
    )

    revoke = commands.add_parser(
        "revoke", help="revoke every token of a client or exporter (takes effect at once)"
    )
    revoke.add_argument("kind", choices=["client", "exporter"])
    revoke.add_argument("name")
    revoke.set_defaults(
        func=lambda a: (
            print(call(a.admin_socket, "revoke", kind=a.kind, namespace=a.namespace, name=a.name)) or 0
        ),
        needs_board=False,
    )

    rotate = commands.add_parser(
        "rotate", help="issue a new token (older ones are revoked); prints the new config"
    )
    rotate.add_argument("kind", choices=["client", "exporter"])
    rotate.add_argument("name")
    rotate.add_argument("-o", "--output", metavar="FILE")

    def run_rotate(a: argparse.Namespace) -> int:
        _emit_config(
            a.kind, call(a.admin_socket, "rotate", kind=a.kind, namespace=a.namespace, name=a.name), a.output
        )
        return 0

    rotate.set_defaults(func=run_rotate, needs_board=False)

    issue = commands.add_parser(
        "issue-router-cert",
        help="sign a certificate for a routerd on another host with the lab CA",
        description="Write DIR/router.crt, DIR/router.key (mode 0600) and DIR/ca.crt; copy them to the"
        " router host's /var/lib/jumpstarter/tls/ (owned by the jumpstarter user) before its first start.",
    )
    issue.add_argument(
        "--host", action="append", required=True, metavar="NAME", help="a name or IP clients use (repeatable)"
    )
    issue.add_argument("--out", required=True, metavar="DIR", help="directory for the files (created 0700)")
    issue.set_defaults(func=run_issue_router_cert, needs_board=False)

    audit = commands.add_parser(
        "audit", help="the audit history: lease and exporter transitions and admin actions, oldest first"
    )
    audit.add_argument("--lease", metavar="ID")
    audit.add_argument("--exporter", metavar="NAME")
    audit.add_argument("--client", metavar="NAME")
    audit.add_argument("--since", metavar="TIME", help="ISO time (UTC) or a duration back from now: 10m, 2h")
    audit.add_argument("--limit", type=int, default=1000, help="the newest N records (at most 10000)")
    audit.add_argument("-o", "--output", choices=["table", "json"], default="table")

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
        if a.output == "json":
            print(json.dumps(events, indent=2))
        elif not events:
            print("(none)")
        else:
            table([_audit_row(e) for e in events], [c.upper() for c in AUDIT_COLUMNS])
        return 0

    audit.set_defaults(func=run_audit, needs_board=False)

    release = commands.add_parser("release", help="end a lease now")
    release.add_argument("kind", choices=["lease"])
    release.add_argument("name")
    release.set_defaults(
        func=lambda a: print(call(a.admin_socket, "release_lease", namespace=a.namespace, name=a.name)) or 0,
        needs_board=False,
    )
