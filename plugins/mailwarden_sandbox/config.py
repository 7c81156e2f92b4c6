"""The ``[sandbox]`` config section: the analysis server, what is sent, and how held mail waits.

``SandboxConfig.for_rule`` folds a rule's ``[sandbox.rules.NAME]`` overrides into the
section's keys, giving the :class:`Policy` the other modules act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

__all__ = ["DETECTOR", "Policy", "RuleSettings", "SandboxConfig"]

# The detector's name: its config section, findings' detector and data directory.
DETECTOR = "sandbox"

Seconds = Annotated[float, msgspec.Meta(ge=60, le=86400)]
Mode = Literal["mirror", "hold"]
Send = Literal["attachments", "message"]
TimeoutAction = Literal["deliver", "hold"]
FullAction = Literal["deliver", "tempfail"]
Size = Annotated[int, msgspec.Meta(gt=0)]


class RuleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[sandbox.rules.NAME]``: overrides for the rule called NAME (unset keys inherit)."""

    enabled: bool | None = None
    mode: Mode | None = None
    send: Send | None = None
    send_clean: bool | None = None
    send_detected: bool | None = None
    verdict_timeout: Seconds | None = None
    timeout_action: TimeoutAction | None = None
    full_action: FullAction | None = None
    max_object_size: Size | None = None


@dataclass(frozen=True)
class Policy:
    """What the sandbox does under one rule (the section's keys with the rule's overrides)."""

    enabled: bool
    mode: str
    send: str
    send_clean: bool
    send_detected: bool
    verdict_timeout: float
    timeout_action: str
    full_action: str
    max_object_size: int


class SandboxConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[sandbox]``: the analysis server, what is sent, and how held mail waits for it.

    The first nine keys apply to every rule unless ``[sandbox.rules.NAME]`` overrides them.
    ``mode``: ``mirror`` sends copies and delivers at once; ``hold`` keeps the message in the
    sandbox quarantine until the verdict. ``send``: ``attachments`` (each attachment) or
    ``message`` (the whole message); ``send_clean`` / ``send_detected``: messages the other
    detectors found clean / found something in. Objects above ``max_object_size`` bytes are not
    sent (``SANDBOX_NOT_SCANNED``). ``timeout_action``: after ``verdict_timeout`` seconds
    without a verdict, ``deliver`` (with an ``X-Mailwarden-Sandbox`` header) or ``hold`` for an
    admin. ``full_action``: when the quarantine is full, ``deliver`` with a header or
    ``tempfail`` (451, the sender retries).

    ``backend``: ``icap`` (``icap_url``, RESPMOD or REQMOD) or ``http`` (``http_url``, submit
    and poll every ``poll_interval`` seconds; ``malicious_score`` / ``suspicious_score`` on the
    report's 0-10 score).
    """

    enabled: bool = False
    mode: Mode = "mirror"
    send: Send = "attachments"
    send_clean: bool = True
    send_detected: bool = False
    verdict_timeout: Seconds = 600.0
    timeout_action: TimeoutAction = "deliver"
    full_action: FullAction = "deliver"
    max_object_size: Size = 200 * 1024 * 1024
    backend: Literal["icap", "http"] = "icap"
    icap_url: str = "icap://127.0.0.1:1344/avscan"
    icap_method: Literal["respmod", "reqmod"] = "respmod"
    http_url: str = "http://127.0.0.1:8090"
    http_token: str = ""
    request_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    malicious_score: float = 7.0
    suspicious_score: float = 4.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    cache_ttl: Annotated[float, msgspec.Meta(ge=0)] = 86400.0
    cache_max_entries: Size = 100_000
    # The hold quarantine: when full, new messages are not placed and full_action applies.
    quarantine_max_bytes: Size = 1 << 30
    quarantine_max_messages: Size = 5000
    rules: dict[str, RuleSettings] = msgspec.field(default_factory=dict)

    def for_rule(self, rule: str) -> Policy:
        """The settings that apply under ``rule``."""
        base = {name: getattr(self, name) for name in Policy.__dataclass_fields__}
        override = self.rules.get(rule)
        if override is not None:
            base.update(
                {
                    name: value
                    for name in Policy.__dataclass_fields__
                    if (value := getattr(override, name)) is not None
                }
            )
        return Policy(**base)
