"""Traces for diagnostics: per-stream text segments, rotated, 150 MB per stream.

A stream (``smtp``, ``pipeline``, a detector's name) appends lines to its newest segment file;
a segment past a fifth of the cap starts the next one, and past the cap the oldest segments
are removed, so a stream never holds more than its cap plus one segment being written. Traces
may include message text, which is why they exist only while diagnostics are on.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mailwarden_sdk import StoreDescriptor, WhenFull

from ..durable import private_dir
from .bounded import BoundedStore, Usage, enforce
from .files import FileStore

__all__ = ["TraceStreams"]

_STREAM = re.compile(r"^[a-z0-9_.-]{1,64}$")
_SEGMENTS = 5


class TraceStreams(BoundedStore):
    """``write(stream, line)``; each stream is a :class:`FileStore` of segment files."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes_per_stream: int = 150 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.clock = clock
        self.evictions = 0
        self.max_bytes_per_stream = max_bytes_per_stream
        self.descriptor = StoreDescriptor(
            name="traces",
            path=str(root),
            holds="processing details for diagnostics, per stream; may include message text",
            max_bytes=max_bytes_per_stream,
            when_full=WhenFull.REMOVE_OLDEST,
            read_permission="diagnostics.get",
        )
        self._lock = threading.Lock()

    def _stream(self, name: str) -> FileStore:
        return FileStore(
            StoreDescriptor(
                name=f"traces/{name}",
                path=str(self.root / name),
                holds=self.descriptor.holds,
                max_bytes=self.max_bytes_per_stream,
                when_full=WhenFull.REMOVE_OLDEST,
            ),
            clock=self.clock,
        )

    def streams(self) -> list[str]:
        """The streams that have segments."""
        return (
            sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        )

    def segments(self, stream: str) -> list[Path]:
        """The segment files of ``stream``, oldest first."""
        folder = self.root / stream
        return sorted(folder.glob("*.log")) if folder.is_dir() else []

    def write(self, stream: str, line: str) -> None:
        """Append one line (a newline is added) to ``stream``, rotating past a segment's size."""
        if not _STREAM.match(stream):
            raise ValueError(f"bad trace stream name {stream!r}")
        data = (line.rstrip("\n") + "\n").encode("utf-8", "replace")
        with self._lock:
            folder = self.root / stream
            private_dir(folder)
            segments = self.segments(stream)
            current = segments[-1] if segments else folder / f"{0:012d}.log"
            if (
                segments
                and current.stat().st_size + len(data) > self.max_bytes_per_stream // _SEGMENTS
            ):
                current = folder / f"{int(current.stem) + 1:012d}.log"
                self.evictions += enforce(self._stream(stream))
            fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def usage(self) -> Usage:
        parts = [self._stream(name).usage() for name in self.streams()]
        oldest = [u.oldest for u in parts if u.oldest is not None]
        return Usage(
            bytes=sum(u.bytes for u in parts),
            count=sum(u.count for u in parts),
            oldest=min(oldest) if oldest else None,
        )

    def remove_older_than(self, horizon: float) -> int:
        return sum(self._stream(name).remove_older_than(horizon) for name in self.streams())

    def remove_oldest_until(self, max_bytes: int | None, max_entries: int | None) -> int:
        # The cap is per stream: each stream is trimmed to it on its own.
        return sum(
            self._stream(name).remove_oldest_until(self.max_bytes_per_stream, None)
            for name in self.streams()
        )
