"""Plugins whose output is hostile or overlaps the gateway's own work, written against the SDK
only: what the gateway passes on must stay well-formed whatever a detector names or tags."""

from __future__ import annotations

import msgspec

from mailwarden_sdk import (
    Action,
    ActionKind,
    Category,
    Finding,
    ScanContext,
    SpamStatus,
    Verdict,
    hookimpl,
)

HOSTILE_MARKER = b"MAILWARDEN-HOSTILE-NAME"
#: A signature name as a compromised signature feed or scanner could report it.
HOSTILE_NAME = "Evil.Test\r\nX-Injected: 1"


class HostileNameDetector:
    """Reports the marker as a virus whose name carries a line break and a header line."""

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        if not any(HOSTILE_MARKER in part.decoded() for part in ctx.message.leaves()):
            return []
        return [
            Finding(
                code="VIRUS",
                detector="hostilename",
                category=Category.ANTIVIRUS,
                status="infected",
                details={"signature": HOSTILE_NAME},
            )
        ]


class SpamSubjectTagger:
    """Delivers spam with ``[SPAM]`` before its subject, as a site's tagging plugin would."""

    @hookimpl
    def mailwarden_action(
        self, ctx: ScanContext, verdict: Verdict, action: Action
    ) -> Action | None:
        if verdict.spam is SpamStatus.SPAM and action.kind is ActionKind.DELIVER:
            return msgspec.structs.replace(action, subject_tag="[SPAM]")
        return None
