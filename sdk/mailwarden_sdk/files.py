"""Writing a file so that readers and crashes see the old content or the new, never a mix.

One helper for the gateway and plugins alike: a config or state file, a key, an index entry.
:func:`atomic_write` writes a temporary file beside the target under a name no other writer
can pick, fsyncs it, renames it over the target and fsyncs the folder. Temporary files left
by a crash between the write and the rename match :data:`TEMP_GLOB`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["TEMP_GLOB", "atomic_write", "fsync_dir"]

#: The names of :func:`atomic_write`'s temporary files in a folder (``.NAME.RANDOM.tmp``):
#: hidden, so listings of the folder's records skip them; a crash may leave one behind.
TEMP_GLOB = ".*.tmp"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush the directory entries of the folder ``path``, so a file created, renamed or
    removed in it stays so after a crash (fsync of a file makes its bytes durable, not its
    name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int = 0o600,
    durable: bool = True,
    temp_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Replace the content of ``path`` with ``data`` (``str`` is written as UTF-8), all or
    nothing.

    The file is created with permissions ``mode`` from the start (never briefly readable by
    others, whatever the umask). Its folder must exist. The temporary file has a unique name
    in the same folder (``tempfile.mkstemp``), so concurrent writers of one target never
    write into each other's file: the last rename wins with a whole file. On any failure the
    old file is left as it was and the temporary file is removed before the exception
    propagates.

    ``durable`` (the default) fsyncs the file before the rename and the folder after it, so
    the new content survives a power loss once this returns; ``durable=False`` keeps the
    atomicity for readers and skips both fsyncs, for files that are cheap to lose (caches).
    ``temp_dir`` puts the temporary file in another folder of the same file system, where a
    protocol says so (a Maildir's ``tmp/``).
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    folder = target.parent if temp_dir is None else Path(temp_dir)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        try:
            # mkstemp creates 0600; fchmod is not narrowed by the umask, so ``mode`` is exact.
            if mode != 0o600:
                os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        fsync_dir(target.parent)
