"""Making a file's existence durable: what "acknowledged only when durable" rests on."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir"]


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries, so a file created or renamed in it survives a crash
    (fsync of the file alone makes its bytes durable, not its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
