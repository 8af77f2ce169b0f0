"""The remote commands' table: login, config client …, get exporters, lease …, and shell/run on a leased board.

The handlers live in `clientconfig.py` (login, config client), `leases.py` (get, lease) and
`remote.py` (shell/run -l); this table is apart from them because `leases.py` imports `remote.py`.
"""

from __future__ import annotations

import argparse

from jumpstarter.cli import clientconfig, leases, remote
from jumpstarter.cli.builder import Arg, Command, arg, one_of
from jumpstarter.cli.output import FORMATS, output_arg

CLIENT = arg(
    "--client",
    metavar="ALIAS|FILE",
    help="client config alias or file (default: $JMP_CLIENT_CONFIG, else the current client)",
)
OUTPUT = output_arg(*FORMATS, "name")
ALIAS = arg("alias", metavar="ALIAS", help="the client config's name")
LEASE_NAME = arg("name", metavar="NAME", help="the lease's name")


def selector(help: str) -> Arg:
    return arg(
        "-l", "--selector", action="append", default=[], metavar="SELECTOR", help=help + " (repeatable)"
    )


#: Where a client config's controller and identity come from: a token, with overrides.
TOKEN = (
    arg("--token", metavar="TOKEN", help="the client token (`-` reads it from stdin)"),
    arg("--namespace", help="override the namespace (default: from the token)"),
    arg("--client-name", metavar="NAME", help="override the client name (default: from the token)"),
    one_of(
        arg("--ca", metavar="FILE", help="PEM file of the CA that signed the controller's certificate"),
        arg("--insecure", action="store_true", help="trust whatever certificate the controller presents"),
    ),
    arg("--unsafe", action="store_true", help="let upstream tools load any driver client class"),
)

#: Which board a new lease is for.
LEASE_TARGET = (
    selector("lease any exporter matching this label selector"),
    arg("-n", "--exporter", metavar="NAME", help="lease this exporter"),
)

LOGIN = Command(
    "login",
    "save a client config from a token and make it current",
    clientconfig.cmd_login,
    description="Save a client config (~/.config/jumpstarter/clients/ALIAS.yaml, mode 0600) from a "
    "controller-issued token, check it against the controller, and make it current. "
    "The endpoint defaults to the token's audience, the namespace and name to its subject.",
    args=(
        arg("endpoint", nargs="?", metavar="ENDPOINT", help="controller HOST:PORT"),
        *TOKEN,
        arg(
            "--name", dest="alias", default="default", metavar="ALIAS", help="config name (default: default)"
        ),
        arg("--no-check", action="store_true", help="save without contacting the controller"),
    ),
)

CONFIG_CLIENT = Command(
    "client",
    "client configs",
    commands=(
        Command(
            "create",
            "create a client config from a token or a config file",
            clientconfig.cmd_config_create,
            args=(
                ALIAS,
                arg("--from", dest="source", metavar="FILE", help="copy this ClientConfig file"),
                arg("--endpoint", help="controller HOST:PORT (default: the token's audience)"),
                *TOKEN,
                arg("--current", action="store_true", help="make it the current client"),
            ),
        ),
        Command("use", "make a client config current", clientconfig.cmd_config_use, args=(ALIAS,)),
        Command("list", "list client configs (* = current)", clientconfig.cmd_config_list),
        Command("delete", "delete a client config", clientconfig.cmd_config_delete, args=(ALIAS,)),
    ),
)

CONFIG = Command(
    "config",
    "client configs: create, use, list, delete",
    commands=(CONFIG_CLIENT,),
    title="kinds",
    metavar="KIND",
)

GET = Command(
    "get",
    "list the controller's exporters",
    commands=(
        Command(
            "exporters",
            "exporters matching a selector",
            leases.cmd_get_exporters,
            args=(selector("label selector, e.g. board=rpi4"), OUTPUT, CLIENT),
        ),
    ),
    title="kinds",
    metavar="KIND",
)

LEASE = Command(
    "lease",
    "create, list, extend, transfer and release leases",
    commands=(
        Command(
            "create",
            "request a lease on a board",
            leases.cmd_lease_create,
            args=(
                *LEASE_TARGET,
                arg("--duration", required=True, help="e.g. 30m, 2h, 1h30m, PT1H"),
                arg("--begin-time", metavar="ISO8601", help="start later, e.g. 2025-06-01T08:00:00Z"),
                arg(
                    "--wait",
                    action="store_true",
                    help="wait until the lease is acquired (shows the queue position)",
                ),
                arg("--tag", action="append", default=[], metavar="KEY=VALUE", help="lease tag (repeatable)"),
                arg(
                    "--context",
                    action="append",
                    default=[],
                    metavar="KEY=VALUE",
                    help="lease context (repeatable)",
                ),
                arg("--lease-id", default="", metavar="NAME", help="choose the lease name"),
                arg("--allow-disabled", action="store_true", help="accept disabled exporters"),
                OUTPUT,
                CLIENT,
            ),
        ),
        Command(
            "list",
            "your active leases",
            leases.cmd_lease_list,
            args=(
                arg("--all", action="store_true", help="include ended leases"),
                arg(
                    "-A",
                    "--all-clients",
                    action="store_true",
                    help="leases of every client of the namespace",
                ),
                selector("only leases whose selector has these labels"),
                arg("--tag-filter", default="", metavar="SELECTOR", help="only leases with these tags"),
                OUTPUT,
                CLIENT,
            ),
        ),
        Command("get", "show one lease", leases.cmd_lease_get, args=(LEASE_NAME, OUTPUT, CLIENT)),
        Command(
            "extend",
            "make a lease longer",
            leases.cmd_lease_extend,
            args=(LEASE_NAME, arg("--duration", required=True, help="time to add, e.g. 30m"), CLIENT),
        ),
        Command(
            "transfer",
            "hand a lease to another client of the namespace",
            leases.cmd_lease_transfer,
            args=(LEASE_NAME, arg("to", metavar="CLIENT", help="the client that gets the lease"), CLIENT),
        ),
        Command(
            "release",
            "end leases now",
            leases.cmd_lease_release,
            args=(arg("names", nargs="+", metavar="NAME", help="the leases' names"), CLIENT),
        ),
    ),
)

#: The remote commands, in `--help` order.
REMOTE_COMMANDS = (LOGIN, CONFIG, GET, LEASE)

#: `shell`/`run` options for a leased board; the first is the board, the last the command.
SHELL_ARGS = (
    *LEASE_TARGET,
    arg("--lease", metavar="NAME", help="use this existing lease (it is not released on exit)"),
    arg("--duration", default="30m", help="lease duration (default 30m)"),
    arg(
        "--acquisition-timeout",
        default="2h",
        metavar="DURATION",
        help="give up waiting after this (default 2h)",
    ),
    CLIENT,
    arg("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments"),
)
#: The options that make `shell`/`run` lease a board (`remote.wants_remote`): one list, so none is forgotten.
SHELL_OPTIONS = frozenset(
    flag for a in SHELL_ARGS if isinstance(a, Arg) for flag in a.flags if flag.startswith("-")
)
SHELL_HELP = "lease a board and open a shell (or run CMD) with JUMPSTARTER_HOST set to it"
RUN_HELP = "lease a board, run CMD with JUMPSTARTER_HOST set to it, exit with CMD's code"
RELEASED = "; the lease is released on exit."

#: `shell`/`run` on a leased board, used instead of the board's own when their options ask for one.
REMOTE_SHELL_COMMANDS = (
    Command("shell", SHELL_HELP, remote.cmd_remote_shell, args=SHELL_ARGS, description=SHELL_HELP + RELEASED),
    Command("run", RUN_HELP, remote.cmd_remote_run, args=SHELL_ARGS, description=RUN_HELP + RELEASED),
)
