"""Writing files that readers and crashes never see half-written."""

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
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
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
