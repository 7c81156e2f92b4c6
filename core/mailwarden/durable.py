"""Making a file's existence durable: what "acknowledged only when durable" rests on."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_FILE", "fsync_dir", "private_dir"]

#: Files of stores: the service account's alone.
PRIVATE_FILE = 0o600


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries, so a file created or renamed in it survives a crash
    (fsync of the file alone makes its bytes durable, not its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents as store folders, mode 0700; ``path``.

    The service runs with umask 077 anyway; this keeps library callers (a ``Gateway`` in
    someone's program) to the same modes. Existing folders are left as they are: ``serve``
    narrows those at start.
    """
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    return path
