"""The built-in antispam detector: scored checks folded against thresholds.

This first version carries the GTUBE test pattern (the spam counterpart of EICAR, used by every
filter's acceptance tests) through the native matcher and maps the summed antispam score to a
spam status with the admin's thresholds. Rules, authentication, DNS lists and Bayes are added by
the antispam issue on the same structure.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from mailwarden_sdk import (
    Finding,
    Host,
    Matcher,
    ScanContext,
    SpamStatus,
    StoreDescriptor,
    Verdict,
    WhenFull,
    hookimpl,
)
from mailwarden_sdk.findings import spam_rule

__all__ = ["AntispamConfig", "AntispamPlugin"]

DETECTOR = "antispam"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class AntispamConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[antispam]``: score thresholds (a total at or above a threshold earns the status)."""

    probable_spam_score: float = 5.0
    spam_score: float = 10.0
    gtube: bool = True
    # The spam quarantine (<home>/antispam/quarantine): the core removes the oldest above this.
    quarantine_max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1 << 30

    def __post_init__(self) -> None:
        if self.spam_score < self.probable_spam_score:
            raise ValueError("spam_score must not be below probable_spam_score")


class AntispamPlugin:
    """Emits scored antispam findings and turns the total score into a spam status."""

    requires_sdk = ">=1.0,<2"

    def __init__(self) -> None:
        self.config = AntispamConfig()
        self._matcher = Matcher([GTUBE])

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return DETECTOR, AntispamConfig

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.config = host.config_for(DETECTOR) or AntispamConfig()

    @hookimpl
    def mailwarden_data_stores(self, host: Host) -> list[StoreDescriptor]:
        config: AntispamConfig = host.config_for(DETECTOR) or AntispamConfig()
        return [
            StoreDescriptor(
                name="spam quarantine",
                path=str(host.data_dir / DETECTOR / "quarantine"),
                holds="messages held as spam, in full (one file each)",
                max_bytes=config.quarantine_max_bytes,
                when_full=WhenFull.REMOVE_OLDEST,
                read_permission="queues.view",
            )
        ]

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        if not self.config.gtube:
            return []
        for part in ctx.message.leaves():
            if part.content_type.startswith("text/") and self._matcher.first(part.decoded()):
                # GTUBE is decisive by definition: the status is spam whatever the thresholds.
                return [
                    spam_rule(
                        DETECTOR,
                        "GTUBE",
                        1000.0,
                        part=part.index,
                        status=SpamStatus.SPAM,
                        rule="GTUBE test pattern",
                    )
                ]
        return []

    @hookimpl(trylast=True)
    def mailwarden_verdict(self, verdict: Verdict) -> None:
        # Explicit statuses (the admin's block/allow lists, GTUBE) stand; otherwise the score
        # summed over every antispam and reputation finding decides.
        if verdict.spam is not SpamStatus.CLEAN:
            return
        if verdict.spam_score >= self.config.spam_score:
            verdict.spam = SpamStatus.SPAM
        elif verdict.spam_score >= self.config.probable_spam_score:
            verdict.spam = SpamStatus.PROBABLE_SPAM
