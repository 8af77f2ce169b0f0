"""The lab user every exporterd runs as, and the directories it must (and must not) own.

Exporterds, and so every `power.command`, shell method and hook a board user
triggers, run as this unprivileged user (inventory `user:`, default
`jumpstarter`); device access comes from its groups (dialout, disk, plugdev,
gpio), which `scripts/install --lab-host` and the udev rule set up. supervisord
stays root (it switches each program to the user) and keeps its control socket
to root. There is no fallback to root: a missing user stops the render.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass

from jumpstarter.config.inventory import Inventory
from jumpstarter.errors import ConfigError
from jumpstarter.files import make_dirs

SOCKET_DIR_MODE = 0o750  # the lab user creates sockets; its group (board users) may reach them
LOG_DIR_MODE = 0o750


@dataclass(frozen=True)
class LabAccount:
    name: str
    uid: int
    gid: int  # the user's primary group: board sockets and the status file belong to it


def lab_account(inventory: Inventory) -> LabAccount:
    """The inventory's lab user; ConfigError when it does not exist or is root."""
    try:
        entry = pwd.getpwnam(inventory.user)
    except KeyError:
        raise ConfigError(
            f"{inventory.path}: user {inventory.user!r} (who runs the exporterds) does not exist on "
            "this host: create it with `sudo scripts/install --lab-host`, or name another unprivileged "
            "user with `user:` in the inventory"
        ) from None
    if entry.pw_uid == 0:
        raise ConfigError(
            f"{inventory.path}: user {inventory.user!r} is root: exporterds run the commands board "
            "users trigger, so they never run as root; name an unprivileged user with `user:`"
        )
    return LabAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)


def prepare_dirs(inventory: Inventory, account: LabAccount) -> None:
    """Create the lab's directories; as root, hand the socket directory to the lab user.

    The socket directory belongs to the lab user (its exporterds create and
    remove their sockets there), group = its primary group, so board users in
    that group reach the 0660 sockets and nobody else does. The device records
    and logs stay root's (written by hotplug and supervisord).
    """
    for path, mode in (
        (inventory.socket_dir, SOCKET_DIR_MODE),
        (inventory.device_dir, 0o755),
        (inventory.log_dir, LOG_DIR_MODE),
    ):
        try:
            make_dirs(path, mode)
            if os.geteuid() == 0 and path == inventory.socket_dir:
                os.chown(path, account.uid, account.gid)
                os.chmod(path, mode)
            elif os.geteuid() == 0 and path == inventory.log_dir:
                os.chown(path, 0, account.gid)
        except OSError as exc:  # supervisord or exporterd will say what they cannot open
            print(f"warning: cannot prepare the directory {path}: {exc.strerror}", file=sys.stderr)
