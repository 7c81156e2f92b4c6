"""A template mailwarden detector: attachments whose names end in an executable extension."""

from __future__ import annotations

import msgspec

from mailwarden_sdk import Finding, Host, ScanContext, findings, hookimpl

__all__ = ["ExampleConfig", "RiskyAttachmentDetector"]


class ExampleConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[example]``: which extensions are risky and what a hit scores."""

    extensions: list[str] = msgspec.field(
        default_factory=lambda: [".exe", ".scr", ".js", ".vbs", ".bat", ".cmd", ".com", ".pif"]
    )
    score: float = 6.0


class RiskyAttachmentDetector:
    """Scores attachments named like executables."""

    requires_sdk = ">=1.0,<2"

    def __init__(self) -> None:
        self.config = ExampleConfig()

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return "example", ExampleConfig

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.config = host.config_for("example")

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        risky = tuple(ext.lower() for ext in self.config.extensions)
        return [
            findings.spam_rule(
                "example",
                "EXAMPLE_RISKY_ATTACHMENT",
                self.config.score,
                part=part.index,
                filename=part.filename,
            )
            for part in ctx.message.attachments()
            if part.filename and part.filename.lower().endswith(risky)
        ]
