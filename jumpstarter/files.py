"""Writing files that readers and crashes never see half-written, in directories born with their mode."""

from __future__ import annotations

import contextlib
import os
import secrets


def write_atomic(
    path: str,
    data: bytes,
    mode: int,
    *,
    exclusive: bool = False,
    dir_mode: int = 0o755,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write `data` to `path`: readers see the old file or the new one, never a partial one.

    The file is born with `mode` (the umask can only narrow it, so it is set
    again before the rename) and synced to disk first. With `exclusive`, an
    existing `path` is never replaced (FileExistsError): for keys that must not
    be clobbered by a concurrent creator. `owner` (uid, gid) is set before the
    rename too, so no reader ever sees the file with the wrong owner.
    """
    directory = os.path.dirname(os.path.abspath(path))
    make_dirs(directory, dir_mode)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        if owner is not None:
            os.chown(temporary, *owner)
        if exclusive:
            os.link(temporary, path)
            os.unlink(temporary)
        else:
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def make_dirs(path: str, mode: int = 0o700) -> None:
    """Create `path` and its missing parents with exactly `mode`, whatever the umask.

    `os.makedirs` gives only the last directory its mode (parents get 0777 minus
    the umask); directories that already exist are left as their owner set them.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        make_dirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{path}: exists and is not a directory") from None
        return  # a concurrent creator won; its mode stands
    os.chmod(path, mode)  # the umask may have narrowed it
