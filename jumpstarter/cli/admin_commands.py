"""The `jumpstarter admin` command table: every subcommand, its arguments and its --help."""

from __future__ import annotations

from jumpstarter.cli import admin, admin_kube
from jumpstarter.cli.admin import (
    COLUMNS,
    default_socket,
    run_audit,
    run_create,
    run_delete,
    run_disable,
    run_enable,
    run_get,
    run_health,
    run_issue_router_cert,
    run_label,
    run_lease_create,
    run_maintenance,
    run_policy_delete,
    run_policy_set,
    run_release,
    run_revoke,
    run_rotate,
)
from jumpstarter.cli.builder import Arg, Command, arg
from jumpstarter.cli.output import FORMATS, output_arg

# -- the command table ------------------------------------------------------------------------


def _kind(*kinds: str) -> Arg:
    listed = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
    return arg("kind", choices=list(kinds), help=f"what to act on: {listed}")


NAME = arg("name", help="its name in the namespace")
LABELS = arg(
    "-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="selector label (repeatable)"
)
RESULT = output_arg("text", "json", "yaml")  # an action's outcome: a line for people, data for scripts
CONFIG_OUT = arg("-o", "--output", metavar="FILE", help="write the config here (mode 0600) instead of stdout")

POLICY = Command(
    "policy",
    "access policies: who may lease which exporters, priority, max duration",
    commands=(
        Command(
            "set",
            "create or replace a policy",
            admin_kube.socket_only("policy set", run_policy_set),
            args=(
                arg("name", help="the policy's name"),
                arg(
                    "--exporters",
                    default="",
                    metavar="SELECTOR",
                    help="exporter label selector (empty = all)",
                ),
                arg("--clients", default="", metavar="SELECTOR", help="client label selector (empty = all)"),
                arg("--priority", type=int, default=0, help="higher goes first in the lease queue"),
                arg("--max-duration", metavar="DURATION", help="longest lease allowed (e.g. 2h)"),
                RESULT,
            ),
        ),
        Command(
            "delete",
            "delete a policy",
            admin_kube.socket_only("policy delete", run_policy_delete),
            args=(arg("name", help="the policy's name"), RESULT),
        ),
    ),
)

ADMIN = Command(
    "admin",
    "manage the controller (on its host, or a Kubernetes cluster with --kubeconfig)",
    description=admin.__doc__,
    raw_description=True,
    args=(
        arg(
            "--admin-socket",
            metavar="PATH",
            default_from=default_socket,
            help="controllerd's admin socket (default $JUMPSTARTER_ADMIN_SOCKET or %(default)s)",
        ),
        arg(
            "-n",
            "--namespace",
            default=admin_kube.DefaultNamespace("default"),
            help="the namespace to act in (default: default; with --kubeconfig, the context's namespace if it names one)",
        ),
        *admin_kube.CLUSTER_ARGS,
    ),
    commands=(
        Command(
            "create",
            "create a client, an exporter or a dashboard viewer (read-only); prints its config",
            run_create,
            args=(
                _kind("client", "exporter", "viewer"),
                NAME,
                LABELS,
                CONFIG_OUT,
                *admin_kube.CREATE_ARGS,
            ),
        ),
        Command(
            "get",
            "list clients, exporters, leases, policies or tokens",
            run_get,
            args=(
                _kind(*sorted(COLUMNS)),
                arg("--all", action="store_true", help="leases: include ended ones"),
                output_arg(*FORMATS),
            ),
        ),
        Command(
            "delete",
            "delete a client or an exporter (its leases end, its tokens are revoked)",
            run_delete,
            args=(_kind("client", "exporter"), NAME, RESULT),
        ),
        Command(
            "enable",
            "enable an exporter for new leases",
            admin_kube.socket_only("enable", run_enable),
            args=(_kind("exporter"), NAME, RESULT),
        ),
        Command(
            "disable",
            "disable an exporter for new leases",
            admin_kube.socket_only("disable", run_disable),
            args=(_kind("exporter"), NAME, RESULT),
        ),
        Command(
            "label",
            "set an exporter's selector labels (replaces them)",
            admin_kube.socket_only("label", run_label),
            args=(_kind("exporter"), NAME, LABELS, RESULT),
        ),
        POLICY,
        Command(
            "revoke",
            "revoke every token of a client, exporter or viewer (takes effect at once)",
            admin_kube.socket_only("revoke", run_revoke),
            args=(_kind("client", "exporter", "viewer"), NAME, RESULT),
        ),
        Command(
            "rotate",
            "issue a new token (older ones are revoked); prints the new config",
            admin_kube.socket_only("rotate", run_rotate),
            args=(_kind("client", "exporter"), NAME, CONFIG_OUT),
        ),
        Command(
            "issue-router-cert",
            "sign a certificate for a routerd on another host with the lab CA",
            admin_kube.socket_only("issue-router-cert", run_issue_router_cert),
            description="Write DIR/router.crt, DIR/router.key (mode 0600) and DIR/ca.crt; copy them to the"
            " router host's /var/lib/jumpstarter/tls/ (owned by the jumpstarter user) before its first start.",
            args=(
                arg(
                    "--host",
                    action="append",
                    required=True,
                    metavar="NAME",
                    help="a name or IP clients use (repeatable)",
                ),
                arg("--out", required=True, metavar="DIR", help="directory for the files (created 0700)"),
            ),
        ),
        Command(
            "audit",
            "the audit history: lease and exporter transitions and admin actions, oldest first",
            admin_kube.socket_only("audit", run_audit),
            args=(
                arg("--lease", metavar="ID", help="only this lease"),
                arg("--exporter", metavar="NAME", help="only this exporter"),
                arg("--client", metavar="NAME", help="only this client"),
                arg("--since", metavar="TIME", help="ISO time (UTC) or a duration back from now: 10m, 2h"),
                arg("--limit", type=int, default=1000, help="the newest N records (at most 10000)"),
                output_arg(*FORMATS),
            ),
        ),
        Command(
            "release",
            "end a lease now",
            admin_kube.socket_only("release", run_release),
            args=(_kind("lease"), arg("name", help="the lease's name"), RESULT),
        ),
        Command(
            "exporter",
            "board states: take a board out of service and put it back",
            commands=(
                Command(
                    "maintenance",
                    "take a board out of service with a reason (ordinary leases stop getting it), or --done",
                    admin_kube.socket_only("exporter maintenance", run_maintenance),
                    args=(
                        NAME,
                        arg("--reason", metavar="TEXT", help="why (at most 200 printable characters)"),
                        arg("--done", action="store_true", help="put it back in service (state: unknown)"),
                        RESULT,
                    ),
                ),
            ),
        ),
        Command(
            "health",
            "board health checks (the exporter config's `health:` command)",
            commands=(
                Command(
                    "run",
                    "run a board's health check now and record the result (exit 1 if it failed)",
                    admin_kube.socket_only("health run", run_health),
                    args=(
                        NAME,
                        arg(
                            "--timeout",
                            type=float,
                            default=3600.0,
                            help="seconds to wait (default %(default)s)",
                        ),
                        RESULT,
                    ),
                ),
            ),
        ),
        Command(
            "lease",
            "an administrator's explicit leases",
            commands=(
                Command(
                    "create",
                    "lease one board for a client whatever its state (maintenance, unhealthy), ahead of the queue",
                    admin_kube.socket_only("lease create", run_lease_create),
                    args=(
                        arg("--client", required=True, metavar="NAME", help="the client that will use it"),
                        arg("--exporter", required=True, metavar="NAME", help="the board"),
                        arg("--duration", default="30m", help="how long (default %(default)s)"),
                        RESULT,
                    ),
                ),
            ),
        ),
    ),
)
