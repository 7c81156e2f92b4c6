"""What people did through the web interface and API: logins, releases, rule edits.

One JSON line per act (time, act, who, details), appended with O_APPEND so worker processes can
share the file. Each act also goes to the application event log (searchable, 1,100 days) and
each login attempt to the auth log (5 weeks), the stores docs/privacy.md lists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..stores.lines import CappedLines

if TYPE_CHECKING:
    from ..stores.applog import AppEventKind, ApplicationLog
    from ..stores.authlog import AuthLog

__all__ = ["AuditLog"]


class AuditLog:
    """Append-only JSON lines at ``path`` (mode 0600)."""

    def __init__(
        self,
        path: Path,
        *,
        app_log: ApplicationLog | None = None,
        auth_log: AuthLog | None = None,
        max_bytes: int | None = 64 << 20,
    ) -> None:
        self.path = path
        # Capped with its rotated older half (``[stores] audit_max_bytes``).
        self.lines = CappedLines(path, max_bytes)
        self.app_log = app_log
        self.auth_log = auth_log

    def write(self, act: str, who: str, **details: Any) -> None:
        """Record that ``who`` did ``act``."""
        record = {"time": time.time(), "act": act, "who": who, **details}
        line = (json.dumps(record, default=str) + "\n").encode()
        self.lines.append(line)
        client = str(details.get("client") or "") or None
        if self.app_log is not None:
            kind: AppEventKind = "login" if act.startswith("login") or act == "logout" else "admin"
            detail = json.dumps({k: v for k, v in details.items() if k != "client"}, default=str)
            self.app_log.write(kind, act, actor=who, client_address=client, detail=detail)
        if self.auth_log is not None and act in ("login", "login.failed"):
            method = str(details.get("source") or "password")
            self.auth_log.login(who, client or "", success=act == "login", method=method)

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        return [json.loads(line) for line in self.lines.lines()]
