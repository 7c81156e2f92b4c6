"""Message bodies as files named by their SHA-256, written and fsynced before any index names
them.

``put`` writes a temporary file, fsyncs it, renames it to its hash and fsyncs the folder, so
once it returns the body survives a crash under its name; only then does the caller commit the
index entry that references it. A crash before the commit leaves an unreferenced body, which
:meth:`BlobStore.remove_unreferenced` deletes; the reverse (an index naming a missing body)
cannot happen. Identical bodies are stored once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from ..durable import fsync_dir as _fsync_dir
from ..durable import private_dir

__all__ = ["BlobStore"]


class BlobStore:
    """Content-addressed files under ``root/ab/abcdef...`` (two-hex-digit fan-out)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, digest: str) -> Path:
        """Where the body with ``digest`` lives."""
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` durably; its hex SHA-256."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_of(digest)
        if target.exists():
            return digest
        folder = target.parent
        private_dir(folder)
        temp = folder / f".tmp-{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
        _fsync_dir(folder)
        return digest

    def get(self, digest: str) -> bytes:
        """The body with ``digest`` (``FileNotFoundError`` if absent)."""
        return self.path_of(digest).read_bytes()

    def remove(self, digest: str) -> None:
        """Delete the body with ``digest`` if present."""
        self.path_of(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        """Every stored digest (temporary files excluded)."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                for path in folder.iterdir():
                    if not path.name.startswith(".tmp-"):
                        yield path.name

    def remove_unreferenced(self, referenced: Callable[[str], bool]) -> int:
        """Delete bodies no index names and temp files of interrupted writes; how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for temp in self.root.glob("*/.tmp-*"):
            temp.unlink(missing_ok=True)
            removed += 1
        for digest in list(self.digests()):
            if not referenced(digest):
                self.remove(digest)
                removed += 1
        return removed
