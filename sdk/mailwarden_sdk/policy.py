"""Policy steps: answers about a sender and its recipients before a message is accepted (SDK 1.15).

A policy step is a ``mailwarden_policy_step(request)`` implementation
(:mod:`mailwarden_sdk.hookspecs`). The gateway asks every step, one after the other in pluggy's
order, at two stages of an SMTP transaction:

``"recipient"``
    at each ``RCPT TO`` (``request.recipient`` is the address asked for), so a deferred sender
    never sends the data. The built-in greylisting answers here.
``"message"``
    at the end of ``DATA``, before the message is spooled and scanned (``request.size`` is its
    size in bytes). The built-in rate limits answer here.

A step answers ``None`` (no opinion: the next step is asked) or a :class:`PolicyVerdict`:
``accept`` ends the stage for this request (the later steps are not asked), ``tempfail`` and
``reject`` end it with their SMTP reply. The built-in greylisting and rate limits are steps
of this same list, registered ``trylast``, so a plugin's step runs before them unless it is
marked ``trylast`` too.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .types import Envelope

__all__ = ["PolicyAction", "PolicyRequest", "PolicyStage", "PolicyVerdict"]

#: When a step is asked: at each recipient, or once for the whole message.
PolicyStage = Literal["recipient", "message"]
#: What a step decided: let it through now, ask the client to retry later, or refuse it.
PolicyAction = Literal["accept", "tempfail", "reject"]

_DEFAULTS: dict[str, tuple[int, str]] = {
    "accept": (250, "2.0.0"),
    "tempfail": (451, "4.7.1"),
    "reject": (550, "5.7.1"),
}


class PolicyRequest(msgspec.Struct, kw_only=True, frozen=True):
    """What a policy step is asked about.

    ``envelope`` holds what the ingress knows so far (sender, client address, HELO, TLS,
    authenticated user); at the ``"recipient"`` stage its ``rcpt_to`` holds the recipients
    accepted before this one and ``recipient`` the one asked for, at the ``"message"`` stage
    ``rcpt_to`` holds every recipient and ``size`` the message's size in bytes. ``trusted`` is
    whether the client is in ``[smtp] trusted_networks``. Do not modify the envelope.
    """

    stage: PolicyStage
    envelope: Envelope
    recipient: str | None = None
    size: int | None = None
    trusted: bool = False

    @property
    def sender(self) -> str:
        """The envelope sender (``MAIL FROM``; the null sender is the empty string)."""
        return self.envelope.mail_from

    @property
    def client(self) -> str | None:
        """The client's IP address as text, ``None`` when the ingress does not know it."""
        return self.envelope.client_address

    @property
    def authenticated(self) -> bool:
        """Whether the client logged in with SMTP AUTH (or the MTA says it did)."""
        return self.envelope.authenticated_user is not None


class PolicyVerdict(msgspec.Struct, kw_only=True, frozen=True):
    """A policy step's answer; build it with :meth:`accept`, :meth:`tempfail` or :meth:`reject`.

    ``code`` is the SMTP reply code (a 4xx for ``tempfail``, a 5xx for ``reject``) and
    ``status`` the enhanced status code (RFC 3463); both default by ``action`` (451 4.7.1,
    550 5.7.1). ``text`` is what the client is told, one line; a code or status of the wrong
    class, or a line break in ``text``, raises ``ValueError`` when the verdict is made.
    """

    action: PolicyAction
    text: str = ""
    code: int | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        expected = _DEFAULTS[self.action][0] // 100
        if self.code is not None and self.code // 100 != expected:
            raise ValueError(
                f"a {self.action} policy verdict needs a {expected}xx code, not {self.code}"
            )
        if self.status is not None and not self.status.startswith(f"{expected}."):
            raise ValueError(
                f"a {self.action} policy verdict needs a {expected}.x.x status, not {self.status!r}"
            )
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("a policy verdict's text must be one line")

    @classmethod
    def accept(cls) -> PolicyVerdict:
        """Let the request through now; the later steps of this stage are not asked."""
        return cls(action="accept")

    @classmethod
    def tempfail(
        cls, text: str, *, code: int | None = None, status: str | None = None
    ) -> PolicyVerdict:
        """Ask the client to try again later (451 4.7.1 unless ``code``/``status`` say)."""
        return cls(action="tempfail", text=text, code=code, status=status)

    @classmethod
    def reject(
        cls, text: str, *, code: int | None = None, status: str | None = None
    ) -> PolicyVerdict:
        """Refuse the recipient or message for good (550 5.7.1 unless ``code``/``status`` say)."""
        return cls(action="reject", text=text, code=code, status=status)

    def reply(self) -> str:
        """The SMTP reply line, ``"451 4.7.1 text"``."""
        code, status = _DEFAULTS[self.action]
        text = self.text or ("Ok" if self.action == "accept" else "Policy refused")
        return f"{self.code or code} {self.status or status} {text}"
