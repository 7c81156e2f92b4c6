"""Making a file's existence durable: what "acknowledged only when durable" rests on."""

from __future__ import annotations

from pathlib import Path

# One implementation for the core and plugins (the SDK's); the core's modules import it here.
from mailwarden_sdk.files import fsync_dir

__all__ = ["PRIVATE_FILE", "fsync_dir", "private_dir"]

#: Files of stores: the service account's alone.
PRIVATE_FILE = 0o600


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
