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
from collections.abc import Callable, Iterator
from pathlib import Path

from mailwarden_sdk.files import TEMP_GLOB, atomic_write

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
        atomic_write(target, data)
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
                    if not path.name.startswith("."):
                        yield path.name

    def remove_unreferenced(self, referenced: Callable[[str], bool]) -> int:
        """Delete bodies no index names and temp files of interrupted writes; how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        # ".tmp-*": temporary files of earlier releases, which named them so.
        for pattern in (TEMP_GLOB, ".tmp-*"):
            for temp in self.root.glob(f"*/{pattern}"):
                temp.unlink(missing_ok=True)
                removed += 1
        for digest in list(self.digests()):
            if not referenced(digest):
                self.remove(digest)
                removed += 1
        return removed
