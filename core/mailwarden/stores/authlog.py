"""The auth log: web and API logins with account and client IP, kept 5 weeks.

"Weekly rotation" in the design becomes removal by age of each record past 35 days, which
keeps exactly the promised span instead of up to a week more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from mailwarden_sdk import StoreDescriptor, WhenFull

from .recordlog import RecordLog

__all__ = ["AuthEvent", "AuthLog"]


class AuthEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One login attempt."""

    time: float
    user: str
    client_address: str
    success: bool
    method: str = "password"


class AuthLog(RecordLog[AuthEvent]):
    """Append with :meth:`login`; search by user or client IP with :meth:`search`."""

    def __init__(
        self,
        root: Path,
        *,
        retention_days: float | None = 35.0,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            StoreDescriptor(
                name="auth log",
                path=str(root),
                holds="login attempts: account name, client IP, success, method",
                retention_days=retention_days,
                max_bytes=max_bytes,
                when_full=WhenFull.REMOVE_OLDEST,
                read_permission="events.auth.view",
            ),
            AuthEvent,
            time_of=lambda event: event.time,
            index_terms=lambda event: {"user": [event.user], "client": [event.client_address]},
            indices=("user", "client"),
            clock=clock,
        )

    def login(
        self, user: str, client_address: str, *, success: bool, method: str = "password"
    ) -> AuthEvent:
        """Record one login attempt now."""
        event = AuthEvent(
            time=self.clock(),
            user=user,
            client_address=client_address,
            success=success,
            method=method,
        )
        self.append(event)
        return event

    def search(
        self,
        *,
        since: float | None = None,
        user: str | None = None,
        client_address: str | None = None,
        limit: int | None = 100,
    ) -> list[AuthEvent]:
        """Attempts newest first."""
        terms = [(n, v) for n, v in (("user", user), ("client", client_address)) if v]
        return self.select(since=since, terms=terms, limit=limit)
