"""`jumpstarter login` and `jumpstarter config client create|use|list|delete`: client configs."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from jumpstarter.cli.output import table
from jumpstarter.errors import ConfigError

if TYPE_CHECKING:
    from jumpstarter.config.client import ClientConfig


def config_from_token(args: argparse.Namespace, endpoint: str | None) -> ClientConfig:
    """A ClientConfig from `--token` (endpoint from its `aud`, namespace/name from its `sub`)."""
    import base64

    from jumpstarter.config.client import ClientConfig, decode_claims

    token = sys.stdin.readline().strip() if args.token == "-" else (args.token or "").strip()
    if not token:
        raise ConfigError("--token is required")
    claims = decode_claims(token)
    audience = claims.get("aud")
    if isinstance(audience, list):
        audience = audience[0] if audience else None
    endpoint = endpoint or (str(audience) if audience else "")
    if not endpoint:
        raise ConfigError("the token names no endpoint (no `aud` claim): pass the controller's HOST:PORT")
    parts = str(claims.get("sub", "")).split(":")
    namespace, name = (parts[1], parts[2]) if len(parts) == 4 and parts[0] == "client" else ("", "")
    namespace, name = args.namespace or namespace, args.client_name or name
    if not namespace or not name:
        raise ConfigError(
            f"the token's subject {claims.get('sub')!r} is not client:NAMESPACE:NAME:UID:"
            " pass --namespace and --client-name"
        )
    ca = ""
    if args.ca:
        try:
            with open(args.ca, "rb") as handle:
                pem = handle.read()
        except OSError as exc:
            raise ConfigError(f"--ca: {exc}") from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ConfigError(f"--ca {args.ca}: not a PEM certificate")
        ca = base64.b64encode(pem).decode()
    return ClientConfig(namespace, name, endpoint, token, ca=ca, insecure=args.insecure, unsafe=args.unsafe)


def cmd_login(args: argparse.Namespace) -> int:
    from jumpstarter.client.remote import ControllerClient
    from jumpstarter.config.client import save_client

    config = config_from_token(args, args.endpoint)
    if not args.no_check:
        with ControllerClient(config) as client:
            client.check()
    path = save_client(config, args.alias, make_current=True)
    print(
        f"logged in to {config.endpoint} as {config.namespace}/{config.name}; client {args.alias!r} ({path}) is current"
    )
    return 0


def cmd_config_create(args: argparse.Namespace) -> int:
    from jumpstarter.config.client import client_path, load_client_config, save_client

    if os.path.exists(client_path(args.alias)):
        raise ConfigError(f"client config {args.alias!r} exists ({client_path(args.alias)}); delete it first")
    config = load_client_config(args.source) if args.source else config_from_token(args, args.endpoint)
    path = save_client(config, args.alias, make_current=args.current)
    print(
        f"created client config {args.alias!r} ({path}) for {config.namespace}/{config.name} at {config.endpoint}"
    )
    return 0


def cmd_config_use(args: argparse.Namespace) -> int:
    from jumpstarter.config.client import client_path, list_clients, use_client

    if not os.path.exists(client_path(args.alias)):
        raise ConfigError(f"no client config {args.alias!r} (have: {', '.join(list_clients()) or 'none'})")
    use_client(args.alias)
    print(f"current client: {args.alias}")
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    from jumpstarter.config.client import client_path, current_client, list_clients, load_client_config

    current = current_client()
    rows = []
    for alias in list_clients():
        try:
            config = load_client_config(client_path(alias))
            rows.append(
                ["*" if alias == current else "", alias, config.endpoint, f"{config.namespace}/{config.name}"]
            )
        except ConfigError as exc:
            rows.append(["*" if alias == current else "", alias, f"(broken: {exc})", "-"])
    if not rows:
        print("no client configs (create one with `jumpstarter login --token TOKEN`)")
        return 0
    table(rows, ["CURRENT", "NAME", "ENDPOINT", "CLIENT"])
    return 0


def cmd_config_delete(args: argparse.Namespace) -> int:
    from jumpstarter.config.client import client_path, current_client, list_clients, use_client

    path = client_path(args.alias)
    if not os.path.exists(path):
        raise ConfigError(f"no client config {args.alias!r} (have: {', '.join(list_clients()) or 'none'})")
    os.unlink(path)
    if current_client() == args.alias:
        remaining = list_clients()
        use_client(remaining[0] if remaining else None)
        print(f"deleted {args.alias!r}; current client: {remaining[0] if remaining else 'none'}")
    else:
        print(f"deleted {args.alias!r}")
    return 0
