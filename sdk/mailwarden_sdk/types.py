"""The data that flows through the pipeline, as msgspec Structs.

Every object a hook receives or returns is defined here so that plugin authors, the core and
anything that ships events elsewhere agree on one typed, serialisable shape.
"""

from __future__ import annotations

import enum
import math
import time
from typing import Any

import msgspec

__all__ = [
    "Action",
    "ActionKind",
    "AntivirusStatus",
    "Category",
    "Envelope",
    "Finding",
    "MessageEvent",
    "SpamStatus",
    "Verdict",
]


class Category(enum.StrEnum):
    """Which part of the verdict a finding feeds.

    The decision step folds findings per category: antivirus findings decide the antivirus
    status, antispam findings add to the spam score, and so on. ``OTHER`` findings are recorded
    and shown but only change the verdict through a ``mailwarden_verdict`` wrapper.
    """

    ANTIVIRUS = "antivirus"
    ANTISPAM = "antispam"
    REPUTATION = "reputation"
    SANDBOX = "sandbox"
    CONTENT = "content"
    OTHER = "other"


class AntivirusStatus(enum.StrEnum):
    """Antivirus status of a message, worst first in :data:`AntivirusStatus.severity`."""

    CLEAN = "clean"
    INFECTED = "infected"
    SUSPICIOUS = "suspicious"
    ENCRYPTED = "encrypted"
    CORRUPTED = "corrupted"
    NOT_SCANNED = "not_scanned"
    ERROR = "error"

    @property
    def severity(self) -> int:
        """Rank used to fold several findings into one status (higher wins)."""
        return _AV_SEVERITY[self]


_AV_SEVERITY = {
    AntivirusStatus.CLEAN: 0,
    AntivirusStatus.ERROR: 1,
    AntivirusStatus.NOT_SCANNED: 2,
    AntivirusStatus.CORRUPTED: 3,
    AntivirusStatus.ENCRYPTED: 4,
    AntivirusStatus.SUSPICIOUS: 5,
    AntivirusStatus.INFECTED: 6,
}


class SpamStatus(enum.StrEnum):
    """Spam status of a message, from the summed antispam score and the admin's lists."""

    CLEAN = "clean"
    PROBABLE_SPAM = "probable_spam"
    SPAM = "spam"
    BULK = "bulk"
    BLOCKED = "blocked"
    ALLOWED = "allowed"
    ERROR = "error"


class Envelope(msgspec.Struct, kw_only=True):
    """What the ingress knows about a message besides its bytes.

    Built by the SMTP gateway, the milter, the content filter, ``mailwarden scan`` and the
    library call ``Gateway.scan``. Addresses are as given by the client, without angle brackets;
    the null sender is the empty string.
    """

    mail_from: str = ""
    rcpt_to: list[str] = msgspec.field(default_factory=list)
    client_address: str | None = None
    client_name: str | None = None
    helo: str | None = None
    queue_id: str | None = None
    tls: bool = False
    authenticated_user: str | None = None
    received_at: float = msgspec.field(default_factory=time.time)


class Finding(msgspec.Struct, kw_only=True, frozen=True):
    """One thing a detector found (or failed to do).

    ``code`` is a stable UPPER_SNAKE identifier (``AV_INFECTED``, ``DETECTOR_TIMEOUT``) that
    rules, reports and searches refer to; it must not change between releases. ``status`` uses
    the vocabulary of the finding's category (an :class:`AntivirusStatus` value for antivirus
    findings, a :class:`SpamStatus` value or ``"hit"`` for antispam rule hits). ``score`` adds
    to the spam score for antispam findings. ``details`` carries short strings such as the
    signature name or the part's filename; it is stored in the message event log, so it must
    never hold message text. A ``score`` that is not a finite number (NaN, ``inf``, ``-inf``)
    raises ``ValueError``: one ``-inf`` would make any message clean, and JSON stores it as
    ``null``, which no reader can take back as a number.
    """

    code: str
    detector: str
    category: Category
    status: str
    score: float = 0.0
    details: dict[str, str] = msgspec.field(default_factory=dict)
    part: int | None = None

    def __post_init__(self) -> None:
        if not _is_upper_snake(self.code):
            raise ValueError(f"finding code must be UPPER_SNAKE, got {self.code!r}")
        if not math.isfinite(self.score):
            raise ValueError(
                f"finding {self.code} of detector {self.detector!r} has a score that is not "
                f"a finite number: {self.score!r}"
            )


def _is_upper_snake(code: str) -> bool:
    return (
        bool(code)
        and code[0].isalpha()
        and all(c.isupper() or c.isdigit() or c == "_" for c in code)
        and code.upper() == code
    )


class ActionKind(enum.StrEnum):
    """What happens to a message (for the recipients a rule covers)."""

    DELIVER = "deliver"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    QUARANTINE = "quarantine"


class Action(msgspec.Struct, kw_only=True, frozen=True):
    """The decided action, in terms every ingress can carry out.

    ``reason`` is the status that chose it (``infected``, ``spam``, ``error``, ``clean``...).
    ``smtp_code``/``smtp_text`` are used when the ingress answers a client (SMTP, milter); the
    header changes and the subject tag apply to messages that are delivered or quarantined.

    ``remove_parts`` (SDK 1.3) lists the MIME part indexes the rule's ``remove`` action takes
    out; a ``mailwarden_action`` implementation then supplies ``replace_message``, the message
    delivered instead of the one received (without a replacement the gateway quarantines the
    message rather than deliver what was to be removed). ``backup`` asks for a copy of the
    original before it is changed or dropped; the gateway keeps it in its backup store (the
    ``backup`` store of the data inventory, shown on the web interface's backup page) when it
    acts, and ``backup_id`` (SDK 1.8) is the copy's id, set before ``mailwarden_action`` runs
    so that a notice can cite it. A dry run (``Gateway.scan``, ``mailwarden rules test``)
    names an id but keeps nothing. ``held_in`` (SDK 1.16) is set by a ``mailwarden_action``
    implementation that kept a quarantined message in its plugin's own quarantine (its view
    and actions there: the antispam plugin's spam quarantine): the gateway then does not hold
    it a second time in its own.
    """

    kind: ActionKind
    reason: str = "clean"
    smtp_code: int = 250
    smtp_text: str = "2.0.0 Ok"
    add_headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    subject_tag: str | None = None
    backup: bool = False
    backup_id: str | None = None
    remove_parts: list[int] = msgspec.field(default_factory=list)
    replace_message: bytes | None = None
    held_in: str | None = None


class Verdict(msgspec.Struct, kw_only=True):
    """All findings for a message folded into per-category statuses.

    ``mailwarden_verdict`` wrappers may adjust any field before the policy turns the verdict
    into an :class:`Action`.
    """

    antivirus: AntivirusStatus = AntivirusStatus.CLEAN
    virus_names: list[str] = msgspec.field(default_factory=list)
    spam: SpamStatus = SpamStatus.CLEAN
    spam_score: float = 0.0
    reputation: str | None = None
    #: ``clean``, ``suspicious`` or ``malicious`` from an analysis; ``hold`` (wait for the
    #: verdict: the message is handed to ``mailwarden_hold``), ``skipped`` (not analysed:
    #: delivered with a header) or ``deferred`` (not analysed: 451, the sender retries). SDK 1.5
    #: added the last three.
    sandbox: str | None = None
    #: ``"blocked"`` when the rule's content rules (names, detected types, sizes) matched.
    content: str | None = None
    errors: list[str] = msgspec.field(default_factory=list)
    findings: list[Finding] = msgspec.field(default_factory=list)
    #: Header fields detectors ask to add to mail that is delivered or quarantined (for
    #: example ``Authentication-Results``, ``X-Spam-Status``), when the rule adds headers.
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)

    @property
    def detected(self) -> bool:
        """True when anything other than "clean" was concluded (errors excluded)."""
        return (
            self.antivirus not in (AntivirusStatus.CLEAN, AntivirusStatus.ERROR)
            or self.spam not in (SpamStatus.CLEAN, SpamStatus.ALLOWED, SpamStatus.ERROR)
            or self.reputation not in (None, "clean")
            or self.sandbox not in (None, "clean")
            or self.content is not None
        )


class MessageEvent(msgspec.Struct, kw_only=True):
    """One record per processed message, as stored in the message event log.

    Holds envelope facts, the subject and attachment names, the findings and the outcome; never
    the body. ``timings_ms`` has one entry per pipeline stage and one per detector.
    """

    id: str
    time: float
    ingress: str
    mail_from: str
    rcpt_to: list[str]
    client_address: str | None
    helo: str | None
    queue_id: str | None
    message_id: str | None
    subject: str | None
    size: int
    attachments: list[str]
    rule: str
    verdict: Verdict
    action: ActionKind
    reply: str
    timings_ms: dict[str, float] = msgspec.field(default_factory=dict)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
