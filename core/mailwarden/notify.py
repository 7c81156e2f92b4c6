"""Notifications a rule sends when it does more than deliver: to the admin, sender, recipients.

Each notice is a new message from the null sender (RFC 3834: ``Auto-Submitted:
auto-replied``), so no notice is ever answered with another one, and none is sent about a
message that is itself automatic. Notices are built from templates (``string.Template``; a
first block of headers, a blank line, the body) that an admin can replace per rule.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import HeaderParser
from email.policy import SMTP
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from mailwarden_sdk import ActionKind, Envelope

from .config import NotifyConfig

if TYPE_CHECKING:
    from .decide import Decision

__all__ = ["TEMPLATE_NAMES", "Notice", "build_notices", "template_text"]

#: Who a template is for, which is also its file name without ``.txt``.
TEMPLATE_NAMES = ("admin", "sender", "recipient")

_ACTION_WORDS = {
    ActionKind.DELIVER: "delivered",
    ActionKind.REJECT: "rejected",
    ActionKind.TEMPFAIL: "deferred",
    ActionKind.DISCARD: "blocked",
    ActionKind.QUARANTINE: "quarantined",
}


@dataclass(frozen=True)
class Notice:
    """One notification ready to send: its envelope and its bytes."""

    to: str
    envelope: Envelope
    data: bytes


def template_text(config: NotifyConfig, who: str, home: Path) -> str:
    """The template for ``who``: the rule's own from ``templates`` if it has one, else ours."""
    if config.templates:
        directory = Path(config.templates)
        own = (directory if directory.is_absolute() else home / directory) / f"{who}.txt"
        if own.is_file():
            return own.read_text(encoding="utf-8")
    return files("mailwarden").joinpath("templates", f"notify_{who}.txt").read_text("utf-8")


def _is_automatic(decision: Decision) -> bool:
    # RFC 3834: never answer automatic mail; precedence bulk/list/junk is the older signal.
    auto = (decision.message.header("auto-submitted") or "no").strip().lower()
    precedence = (decision.message.header("precedence") or "").strip().lower()
    return auto != "no" or precedence in ("bulk", "list", "junk")


def _values(decision: Decision, hostname: str) -> dict[str, str]:
    verdict = decision.verdict
    details = sorted(
        {
            f.details.get("name") or f.details.get("signature") or f.details.get("object") or f.code
            for f in verdict.findings
            if f.status not in ("clean", "hit")
        }
    )
    values = {
        "id": decision.id[:12],
        "hostname": hostname,
        "time": email.utils.formatdate(decision.envelope.received_at, localtime=True),
        "sender": decision.envelope.mail_from or "<>",
        "recipients": ", ".join(decision.envelope.rcpt_to),
        "subject": decision.message.subject or "(no subject)",
        "message_id": decision.message.message_id or "",
        "rule": decision.rule.name,
        "action": _ACTION_WORDS[decision.action.kind],
        "reason": decision.action.reason,
        "details": ", ".join(details) or decision.action.reason,
        "attachments": ", ".join(p.filename for p in decision.message.attachments() if p.filename),
    }
    return {key: _one_line(value) for key, value in values.items()}


def _one_line(value: str) -> str:
    """``value`` as plain text on one line, safe to put in a header.

    Everything here comes from the sender. Encoded words are decoded for the reader; any left
    (an encoded word inside an encoded word) are broken up, because Python's header parser
    would decode them again and a newline hidden in one would start a new header.
    """
    try:
        value = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        pass
    return " ".join(value.split()).replace("=?", "= ?")


def _render(template: str, values: dict[str, str], sender: str, to: str) -> bytes:
    # safe_substitute: an admin's template with an unknown $name still produces a notice.
    text = Template(template).safe_substitute(values)
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    message = EmailMessage(policy=SMTP)
    for name, value in HeaderParser().parsestr(head + "\n\n").items():
        message[name] = value
    message["From"] = sender
    message["To"] = to
    message["Date"] = email.utils.formatdate(time.time(), localtime=True)
    message["Message-ID"] = email.utils.make_msgid(domain=values["hostname"])
    message["Auto-Submitted"] = "auto-replied"
    message.set_content(body)
    return message.as_bytes()


def build_notices(
    decision: Decision, config: NotifyConfig, hostname: str, home: Path
) -> list[Notice]:
    """The notices ``config`` asks for about ``decision`` (none for a plain delivery)."""
    if decision.action.reason not in config.on or _is_automatic(decision):
        return []
    sender = config.from_address or f"postmaster@{hostname}"
    values = _values(decision, hostname)
    targets: list[tuple[str, str]] = [(address, "admin") for address in config.admin]
    # A rejected sender already has our reply in its MTA's bounce: no second notice.
    rejected = decision.action.kind is ActionKind.REJECT
    if config.sender and decision.envelope.mail_from and not rejected:
        targets.append((decision.envelope.mail_from, "sender"))
    if config.recipients:
        targets.extend((address, "recipient") for address in decision.envelope.rcpt_to)
    notices = []
    for to, who in targets:
        data = _render(template_text(config, who, home), values, sender, to)
        notices.append(Notice(to, Envelope(mail_from="", rcpt_to=[to]), data))
    return notices
