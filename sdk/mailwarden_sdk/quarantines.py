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

import asyncio
import fcntl
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol, TypeVar, runtime_checkable

import msgspec

__all__ = [
    "QUARANTINE_ID",
    "LearnLabel",
    "Quarantine",
    "QuarantineEntry",
    "QuarantineError",
    "QuarantineNotFound",
    "ReleaseClaims",
    "lock_held",
    "read_held",
    "release_once",
    "release_once_sync",
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


# -- release, exactly once (shared by the gateway's quarantine and the plugins' stores) --------

_C = TypeVar("_C")


class ReleaseClaims(Protocol[_C]):
    """A store whose messages are released once: :meth:`claim` takes one for a single release
    (a second caller is refused while the claim stands), :meth:`finish` forgets it once it is
    delivered, :meth:`abandon` holds it again when it was not."""

    def claim(self, id: str) -> _C:
        """Take ``id`` for one release, or raise a :class:`QuarantineError`."""
        ...

    def finish(self, claim: _C) -> None:
        """The claimed message is delivered: it leaves the store."""
        ...

    def abandon(self, claim: _C) -> None:
        """The claimed message was not delivered: it is held again, exactly as before."""
        ...


async def release_once(
    store: ReleaseClaims[_C],
    id: str,
    send: Callable[[_C], Awaitable[str]],
    failed: Callable[[str], Exception] = QuarantineError,
) -> str:
    """Claim ``id`` in ``store`` (in a worker thread), ``send`` it, then forget it; what
    ``send`` said. When sending fails the message is held again and ``failed`` (the store's
    error type, given the reason) is raised; when the release is cancelled it is held again
    too, rather than lost. A second release at the same time is refused by the claim."""
    claim = await asyncio.to_thread(store.claim, id)
    try:
        where = await send(claim)
    except Exception as exc:
        await asyncio.to_thread(store.abandon, claim)
        raise failed(f"release of {id} failed: {exc}; it stays held") from exc
    except BaseException:
        store.abandon(claim)
        raise
    await asyncio.to_thread(store.finish, claim)
    return where


def release_once_sync(store: ReleaseClaims[_C], id: str, send: Callable[[_C], str]) -> str:
    """:func:`release_once` for a caller without an event loop (a command): ``send`` raises a
    :class:`QuarantineError` when the message could not be sent; it is then held again."""
    claim = store.claim(id)
    try:
        where = send(claim)
    except BaseException:
        store.abandon(claim)
        raise
    store.finish(claim)
    return where


def lock_held(path: Path) -> int | None:
    """Open a held message's file and lock it for one release: the descriptor, whose lock
    lasts as long as the claiming process (so a claim whose lock is free was left by a process
    that is gone), or None while another release holds it. Raises :class:`FileNotFoundError`
    when the file is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_held(fd: int) -> bytes:
    """All bytes of the file open as ``fd`` (from its start, whatever its offset)."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
