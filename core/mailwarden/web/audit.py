"""What people did through the web interface and API: logins, releases, rule edits.

One JSON line per act (time, act, who, details), appended with O_APPEND so worker processes can
share the file; the application event log of the stores issue takes these records over.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]


class AuditLog:
    """Append-only JSON lines at ``path`` (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, act: str, who: str, **details: Any) -> None:
        """Record that ``who`` did ``act``."""
        record = {"time": time.time(), "act": act, "who": who, **details}
        line = (json.dumps(record, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
