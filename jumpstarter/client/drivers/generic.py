"""`GenericClient`: drives any driver, known or not, through `call()` and `stream()`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jumpstarter.client.base import DriverClient


class GenericClient(DriverClient):
    """A driver without a dedicated client: call its methods by name."""


def parse_arg(text: str) -> Any:
    """CLI arguments are JSON when they parse as JSON (42, true, [1,2], {"a":1}), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def print_result(result: Any) -> None:
    if result is None:
        return
    if isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2, sort_keys=True))


def add_generic_cli(client: DriverClient, parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_call_commands(client, sub)
    pipe = sub.add_parser("pipe", help="connect stdin/stdout to a byte stream of the driver")
    pipe.add_argument("method", nargs="?", default="connect")

    def run_pipe(a: argparse.Namespace) -> int:
        from jumpstarter.client.pipes import pipe_stdio

        with client.stream(a.method) as stream:
            return pipe_stdio(stream, send_input=not sys.stdin.isatty())

    pipe.set_defaults(func=run_pipe)


def subcommands(parser: argparse.ArgumentParser) -> Any:
    """The parser's subparsers action (added when a typed client made none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def add_call_commands(client: DriverClient, sub: Any) -> None:
    """`call METHOD ARGS...` and `stream-call METHOD ARGS...`: every driver has them, typed or not."""
    if "call" in sub.choices:
        return
    methods = client.methods_description
    listing = "\n".join(f"  {name:<20} {text}" for name, text in sorted(methods.items()))
    call = sub.add_parser(
        "call",
        help="call a method by name",
        description="Call a method of this driver. Arguments are parsed as JSON when possible."
        + (f"\n\nmethods reported by the exporter:\n{listing}" if listing else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("method")
    call.add_argument("args", nargs="*", metavar="ARG")
    call.set_defaults(func=lambda a: print_result(client.call(a.method, *map(parse_arg, a.args))))
    streaming = sub.add_parser("stream-call", help="call a streaming method; prints one result per line")
    streaming.add_argument("method")
    streaming.add_argument("args", nargs="*", metavar="ARG")

    def run_streaming(a: argparse.Namespace) -> None:
        for item in client.streamingcall(a.method, *map(parse_arg, a.args)):
            print(json.dumps(item, sort_keys=True), flush=True)

    streaming.set_defaults(func=run_streaming)
