"""A plugin's own quarantine as the web interface and the REST API work with it (SDK 1.7).

A plugin that keeps messages of its own (the antispam plugin's spam quarantine, the sandbox
plugin's hold quarantine) hands the core one :class:`Quarantine` per store through the
``mailwarden_quarantines(host)`` hook. The core lists, shows, releases and deletes through it,
checks permissions, writes every change to the application event log and never learns where or
how the plugin stores the messages.

Reads (:meth:`~Quarantine.search`, :meth:`~Quarantine.get`, :meth:`~Quarantine.raw`) are
synchronous: the core calls them in a worker thread. Changes (:meth:`~Quarantine.release`,
:meth:`~Quarantine.delete`, :meth:`~Quarantine.learn`) are ``async`` and run on the gateway's
event loop, so a release can go through :meth:`Host.deliver <mailwarden_sdk.Host.deliver>` or
:meth:`Host.resubmit <mailwarden_sdk.Host.resubmit>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

__all__ = [
    "QUARANTINE_ID",
    "LearnLabel",
    "Quarantine",
    "QuarantineEntry",
    "QuarantineError",
    "QuarantineNotFound",
]

#: What a quarantine's :attr:`~Quarantine.name` and every entry id must match: letters,
#: digits, ``_`` and ``-``, 1 to 128 characters. Nothing else ever reaches a plugin from a URL,
#: so an id can never name a path (``../``) or carry markup.
QUARANTINE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

#: What :meth:`Quarantine.learn` teaches: the message is ``spam`` or ``ham`` (not spam).
LearnLabel = Literal["spam", "ham"]


class QuarantineError(Exception):
    """A quarantine could not do what was asked (delivery refused, store unreadable...).

    The message says why, in words an administrator can act on; the core shows it and answers
    HTTP 409.
    """


class QuarantineNotFound(QuarantineError, LookupError):
    """No message with that id in this quarantine (never was, or released or deleted since).

    The core answers HTTP 404.
    """


class QuarantineEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One message in a plugin's quarantine, as listed: envelope, subject, why it is held.

    ``id`` matches :data:`QUARANTINE_ID` and is stable while the message is held.
    ``stored_at`` is the Unix time it was placed. ``sender`` and ``recipients`` are the
    envelope's (a release delivers to these recipients); ``subject`` is decoded (RFC 2047) and
    is shown as text, never as markup. ``size`` is in bytes of the message as held.
    ``reason`` is the plugin's word for why it is held or where it stands (``spam``,
    ``probable_spam``, ``waiting``, ``expired``...), ``score`` the spam score where there is
    one. ``details`` holds short extra facts a plugin wants shown (the rule, a note), never
    message text.
    """

    id: str
    stored_at: float
    sender: str
    recipients: list[str]
    subject: str
    size: int
    reason: str
    score: float | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)


@runtime_checkable
class Quarantine(Protocol):
    """A plugin's quarantine store, returned by the ``mailwarden_quarantines`` hook.

    ``name`` is short, unique among the gateway's quarantines and matches
    :data:`QUARANTINE_ID` (it is part of the URLs: ``/quarantines/{name}``); ``title`` is what
    the pages call it. ``can_learn`` says whether :meth:`learn` works (a spam quarantine with a
    trainable classifier); the web interface offers "release and learn as ham" and "learn as
    spam and delete" only then.
    """

    name: str
    title: str
    can_learn: bool

    def search(
        self, query: str = "", *, limit: int = 100, offset: int = 0
    ) -> Sequence[QuarantineEntry]:
        """Held messages, newest first, ``offset`` skipped and at most ``limit`` returned.

        ``query`` (may be empty) matches case-insensitively as a substring of the sender, a
        recipient, the subject or the id. Synchronous; the core calls it in a worker thread.
        """
        ...

    def get(self, id: str) -> QuarantineEntry:
        """The entry of one held message; raises :class:`QuarantineNotFound`.

        Synchronous (a worker thread).
        """
        ...

    def raw(self, id: str) -> bytes:
        """The held message's bytes, exactly as held; raises :class:`QuarantineNotFound`.

        The core shows them as text (headers decoded, HTML parts as their text, never
        rendered) or offers them as a download to ``queues.manage``. Synchronous (a worker
        thread).
        """
        ...

    async def release(self, id: str) -> str:
        """Send the held message on to its original envelope recipients, then forget it.

        Prefer the gateway's own delivery path (:meth:`Host.deliver
        <mailwarden_sdk.Host.deliver>`; or :meth:`Host.resubmit <mailwarden_sdk.Host.resubmit>`
        when the other detectors must still see it). Returns a short account of where it went
        (``"queued as ..."``, or ``"release requested"`` when another process carries it out).
        Raises :class:`QuarantineNotFound` for an unknown id and :class:`QuarantineError` when
        it could not be sent; the message then stays held. Async, on the gateway's loop.
        """
        ...

    async def delete(self, id: str) -> str:
        """Remove the held message for good; it is never delivered.

        Returns a short account (``"deleted"``). Raises :class:`QuarantineNotFound`. Async, on
        the gateway's loop.
        """
        ...

    async def learn(self, id: str, label: LearnLabel, *, by: str) -> str:
        """Teach the plugin's classifier that the held message is ``label`` (optional).

        Only called when :attr:`can_learn` is true; the message stays held (the core releases
        or deletes it next when asked to do both). ``by`` names who asked (a web user), for
        the classifier's own journal. Returns a short account (``"learned as ham"``). Raises
        :class:`QuarantineNotFound` or :class:`QuarantineError`. Async, on the gateway's loop.
        """
        ...
