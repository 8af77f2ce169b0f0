#!/usr/bin/env python3
"""Make the files of the cluster's three Secrets, with the project's own key and certificate code.

    python3 deploy/kubernetes/make_secrets.py jumpstarter.lab.example secrets/

writes secrets/tls/{tls.crt,tls.key,ca.crt} (one certificate for HOST, served by controllerd and every
routerd), secrets/signing/signing.pem (ES256 key of client and exporter tokens) and
secrets/router/router.key (HMAC key shared by controllerd and routerd). The lab CA stays in
secrets/ca/ and never goes into the cluster. Existing files are kept, so running it again is safe.
Then: kubectl -n jumpstarter create secret generic jumpstarter-tls --from-file=secrets/tls (and
jumpstarter-signing-key from secrets/signing, jumpstarter-router-key from secrets/router).
"""

from __future__ import annotations

import argparse
import os
import shutil


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("host", help="the public host of controllerd and the routers (no port)")
    parser.add_argument("directory", help="where to write (created 0700)")
    args = parser.parse_args(argv)
    from controllerd.auth import load_or_create_key
    from jumpstarter import routertoken, tls

    os.makedirs(args.directory, mode=0o700, exist_ok=True)
    ca_dir, tls_dir = os.path.join(args.directory, "ca"), os.path.join(args.directory, "tls")
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    ca_cert, ca_key = os.path.join(ca_dir, "ca.crt"), os.path.join(ca_dir, "ca.key")
    cert = os.path.join(tls_dir, "tls.crt")
    tls.load_or_issue(cert, os.path.join(tls_dir, "tls.key"), [args.host], ca_cert, ca_key)
    shutil.copyfile(ca_cert, os.path.join(tls_dir, "ca.crt"))
    load_or_create_key(os.path.join(args.directory, "signing", "signing.pem"))
    router_key = os.path.join(args.directory, "router", "router.key")
    if not os.path.exists(router_key):
        routertoken.generate_key(router_key)
    print(f"{args.directory}: tls/ (for {args.host}), signing/, router/; the lab CA stays in ca/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
