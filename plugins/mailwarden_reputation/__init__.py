"""The built-in reputation detector (the KSN role): hash, URL and IP reputation with consent.

Nothing is looked up or sent anywhere until the admin records consent. This foundation version
declares the plugin and its configuration contract; the DNS and HTTP backends, the LMDB cache
and the statistics arrive with the reputation issue, so it implements no scan hook yet.
"""

from __future__ import annotations

import msgspec

from mailwarden_sdk import hookimpl

__all__ = ["ReputationConfig", "ReputationPlugin"]


class ReputationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[reputation]``: consent is recorded with who gave it and when (ISO 8601)."""

    consent: bool = False
    consent_by: str = ""
    consent_at: str = ""

    def __post_init__(self) -> None:
        if self.consent and not (self.consent_by and self.consent_at):
            raise ValueError("consent needs consent_by and consent_at (who agreed, and when)")


class ReputationPlugin:
    """Declares the ``[reputation]`` section; lookups come with the reputation issue."""

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return "reputation", ReputationConfig
