"""Temp files: what an interrupted process left half-written is removed at start."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..durable import private_dir

__all__ = ["clean_temp"]


def clean_temp(folder: Path) -> int:
    """Empty ``folder`` (created if missing); how many entries were removed.

    Called by ``mailwarden serve`` before any worker starts, so nothing is writing there yet.
    """
    private_dir(folder)
    removed = 0
    for entry in list(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed
