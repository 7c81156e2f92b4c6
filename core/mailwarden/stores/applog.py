"""The application event log: admin actions, logins, updates and errors (1,100 days / 1 GB).

Records are :class:`AppEvent` in a :class:`~.recordlog.RecordLog` indexed by kind and actor,
so an auditor's "what did this account do" is one index walk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from mailwarden_sdk import StoreDescriptor, WhenFull

from .recordlog import RecordLog

__all__ = ["AppEvent", "AppEventKind", "ApplicationLog"]

AppEventKind = Literal["admin", "login", "update", "error", "start", "stop"]


class AppEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One thing that happened to the gateway (not to a message)."""

    time: float
    kind: AppEventKind
    action: str
    actor: str = ""
    client_address: str | None = None
    detail: str = ""


class ApplicationLog(RecordLog[AppEvent]):
    """Append with :meth:`write`; search with :meth:`search`."""

    def __init__(
        self,
        root: Path,
        *,
        retention_days: float | None = 1100.0,
        max_bytes: int | None = 1 << 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            StoreDescriptor(
                name="application event log",
                path=str(root),
                holds="admin actions, logins, updates and errors, with account names and "
                "client IPs",
                retention_days=retention_days,
                max_bytes=max_bytes,
                when_full=WhenFull.REMOVE_OLDEST,
                read_permission="events.app.view",
            ),
            AppEvent,
            time_of=lambda event: event.time,
            index_terms=lambda event: {"kind": [event.kind], "actor": [event.actor]},
            indices=("kind", "actor"),
            clock=clock,
        )

    def write(
        self,
        kind: AppEventKind,
        action: str,
        *,
        actor: str = "",
        client_address: str | None = None,
        detail: str = "",
    ) -> AppEvent:
        """Record one event now."""
        event = AppEvent(
            time=self.clock(),
            kind=kind,
            action=action,
            actor=actor,
            client_address=client_address,
            detail=detail,
        )
        self.append(event)
        return event

    def search(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        actor: str | None = None,
        limit: int | None = 100,
    ) -> list[AppEvent]:
        """Events newest first."""
        terms = [(n, v) for n, v in (("kind", kind), ("actor", actor)) if v]
        return self.select(since=since, until=until, terms=terms, limit=limit)
