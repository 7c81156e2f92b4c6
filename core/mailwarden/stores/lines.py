"""Append-only line files with a size cap: the JSON events export and the web's audit copy.

A file past half its cap is renamed to ``NAME.1`` (replacing the previous one) and a new file
is started, as logrotate does, so the two together never hold more than the cap and a log
shipper following the file by name sees an ordinary rotation. Worker processes share the file:
each line is one ``O_APPEND`` write under ``flock``, and a writer that finds the file renamed
under it (another worker rotated) opens the new one.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from mailwarden_sdk import StoreDescriptor, WhenFull

from .bounded import BoundedStore, Usage

__all__ = ["CappedLines", "LinesStore", "rotated_path"]

# A writer retries this many times when other workers keep rotating under it.
_ATTEMPTS = 16


def rotated_path(path: Path) -> Path:
    """Where the older half of ``path`` lives."""
    return path.with_name(path.name + ".1")


class CappedLines:
    """Lines appended to ``path`` (mode 0600), the file and its ``.1`` at most ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int | None) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def descriptors(self, name: str, holds: str, read_permission: str) -> list[StoreDescriptor]:
        """The file and its older half as inventory entries."""
        when_full = WhenFull.REMOVE_OLDEST if self.max_bytes else WhenFull.NOT_CAPPED
        return [
            StoreDescriptor(
                name=name,
                path=str(self.path),
                holds=holds,
                max_bytes=self.max_bytes,
                when_full=when_full,
                read_permission=read_permission,
            ),
            StoreDescriptor(
                name=f"{name} (older half)",
                path=str(rotated_path(self.path)),
                holds=f"the older lines of {self.path.name}, replaced at the next rotation",
                max_bytes=self.max_bytes // 2 if self.max_bytes else None,
                when_full=when_full,
                read_permission=read_permission,
            ),
        ]

    def append(self, line: bytes) -> None:
        """Append ``line`` (with its newline), rotating first when it would pass half the cap."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _ in range(_ATTEMPTS):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                try:
                    current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
                if not current:
                    continue  # rotated since we opened it
                if self.max_bytes and size and size + len(line) > self.max_bytes // 2:
                    os.replace(self.path, rotated_path(self.path))
                    continue
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                return
            finally:
                os.close(fd)
        raise OSError(f"{self.path}: kept being rotated by other writers")

    def rotate(self) -> None:
        """Start a new file now (the current one becomes the older half)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                os.replace(self.path, rotated_path(self.path))
        finally:
            os.close(fd)

    def lines(self) -> list[bytes]:
        """Every line kept, oldest first."""
        out: list[bytes] = []
        for path in (rotated_path(self.path), self.path):
            try:
                out += [line for line in path.read_bytes().splitlines() if line]
            except FileNotFoundError:
                continue
        return out


class LinesStore(BoundedStore):
    """A :class:`CappedLines` file in the retention engine: measured for the metrics, and back
    under its cap at the next enforcement after the cap was lowered (writers only keep the
    cap they were given). Records are its two files; the older half is removed first."""

    def __init__(
        self,
        lines: CappedLines,
        descriptor: StoreDescriptor,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lines = lines
        self.descriptor = descriptor
        self.clock = clock
        self.evictions = 0

    def _files(self) -> list[os.stat_result]:
        found = []
        for path in (rotated_path(self.lines.path), self.lines.path):
            try:
                found.append(path.stat())
            except FileNotFoundError:
                continue
        return found

    def usage(self) -> Usage:
        files = self._files()
        return Usage(
            bytes=sum(f.st_size for f in files),
            count=len(files),
            oldest=min((f.st_mtime for f in files), default=None),
        )

    def remove_older_than(self, horizon: float) -> int:
        older = rotated_path(self.lines.path)
        try:
            if older.stat().st_mtime < horizon:
                older.unlink()
                return 1
        except FileNotFoundError:
            pass
        return 0

    def remove_oldest_until(self, max_bytes: int | None, max_entries: int | None) -> int:
        removed = 0
        for _ in range(2):
            usage = self.usage()
            if (max_bytes is None or usage.bytes <= max_bytes) and (
                max_entries is None or usage.count <= max_entries
            ):
                break
            older = rotated_path(self.lines.path)
            if not older.exists():
                self.lines.rotate()
            older.unlink(missing_ok=True)
            removed += 1
        return removed
