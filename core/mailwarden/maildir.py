"""Local delivery into a Maildir, durable before the SMTP 250 is sent.

The Maildir protocol (write in ``tmp/``, fsync, rename into ``new/``, fsync the directory) makes
a message either fully there or absent after a crash, which is what lets the gateway answer
250 only after the message is safe.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from mailwarden_sdk.files import atomic_write

from .errors import DeliveryError

__all__ = ["Maildir"]

_counter = itertools.count()


class Maildir:
    """A Maildir at ``root`` (``tmp``, ``new``, ``cur`` created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def _ensure(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def deliver(self, data: bytes) -> str:
        """Store ``data`` durably and return its unique file name."""
        try:
            self._ensure()
            now = time.time()
            name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{self._host}"
            # The Maildir protocol: written in tmp/, renamed into new/ under a unique name.
            atomic_write(self.root / "new" / name, data, temp_dir=self.root / "tmp")
        except OSError as exc:
            # A full disk or a permission problem is temporary from the sender's point of view:
            # answering 4xx keeps the message at the client until an admin fixes it.
            raise DeliveryError(f"Maildir delivery failed: {exc.strerror or exc}") from exc
        return name

    def messages(self) -> list[Path]:
        """Delivered message files, oldest first."""
        files = [
            p
            for sub in ("new", "cur")
            if (self.root / sub).is_dir()
            for p in (self.root / sub).iterdir()
        ]
        return sorted(files, key=lambda p: p.stat().st_mtime)
