"""Stores that keep one file per record: quarantine Maildirs, backup bodies, trace segments,
and the file-based stores plugins declare.

The age of a record is its file's modification time; the oldest files go first. Measuring
walks the directory, which is fine for the tens of thousands of files a 1 GB store of messages
holds and keeps no second bookkeeping that could disagree with the disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mailwarden_sdk import StoreDescriptor

from .bounded import BoundedStore, Usage

__all__ = ["FileStore", "walk_files"]


def walk_files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every regular file under ``root`` with its stat (files removed meanwhile are skipped)."""
    if root.is_file():
        try:
            yield root, root.stat()
        except OSError:
            pass
        return
    if not root.is_dir():
        return
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                yield path, path.stat()
            except OSError:
                continue  # removed while we walked


class FileStore(BoundedStore):
    """A directory whose files are the records of ``descriptor``.

    ``ignore`` names files that are bookkeeping, not records (an LMDB index beside the bodies),
    so they are neither counted nor removed.
    """

    def __init__(
        self,
        descriptor: StoreDescriptor,
        *,
        clock: Callable[[], float] = time.time,
        ignore: frozenset[str] = frozenset(),
    ) -> None:
        self.descriptor = descriptor
        self.root = Path(descriptor.path)
        self.clock = clock
        self.evictions = 0
        self._ignore = ignore

    def _records(self) -> list[tuple[float, int, Path]]:
        return sorted(
            (stat.st_mtime, stat.st_size, path)
            for path, stat in walk_files(self.root)
            if path.name not in self._ignore
        )

    def usage(self) -> Usage:
        records = self._records()
        return Usage(
            bytes=sum(size for _, size, _ in records),
            count=len(records),
            oldest=records[0][0] if records else None,
        )

    def remove_older_than(self, horizon: float) -> int:
        removed = 0
        for mtime, _size, path in self._records():
            if mtime >= horizon:
                break
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def remove_oldest_until(self, max_bytes: int | None, max_entries: int | None) -> int:
        records = self._records()
        total = sum(size for _, size, _ in records)
        count = len(records)
        removed = 0
        for _mtime, size, path in records:
            if (max_bytes is None or total <= max_bytes) and (
                max_entries is None or count <= max_entries
            ):
                break
            path.unlink(missing_ok=True)
            total -= size
            count -= 1
            removed += 1
        return removed
