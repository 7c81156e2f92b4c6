"""What goes to the analysis server and the findings its verdicts make.

An object is an attachment or the whole message (``send``), named by its SHA-256 in the
verdict cache and the hold quarantine. The plugin, the mirror and the watcher all report
through :func:`finding`, so every sandbox finding carries the same detector and category.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from mailwarden_sdk import Category, Finding, ParsedMessage

from .backends import Backend, ObjectVerdict
from .config import DETECTOR, SandboxConfig
from .store import HeldObject, VerdictCache

__all__ = ["Analysis", "Object", "finding", "objects", "verdict_finding", "worst"]


@dataclass(frozen=True)
class Analysis:
    """What the mirror and the watcher send with, on the gateway's ``loop``.

    ``slots`` is one semaphore for both: together they keep ``concurrency`` requests open.
    ``time_scale`` multiplies every wait (see :class:`~mailwarden_sandbox.SandboxPlugin`).
    """

    config: SandboxConfig
    backend: Backend
    cache: VerdictCache
    slots: asyncio.Semaphore
    time_scale: float
    loop: asyncio.AbstractEventLoop


@dataclass(frozen=True)
class Object:
    """One object picked for analysis: its hash, its label in findings, and its bytes."""

    sha256: str
    label: str
    data: bytes


def objects(message: ParsedMessage, send: str) -> list[tuple[str, bytes]]:
    """The ``(label, bytes)`` of what ``send`` says goes out: each attachment or the message."""
    if send == "message":
        return [("message", bytes(message.raw))]
    return [
        (part.filename or f"part {part.index}", bytes(part.decoded()))
        for part in message.attachments()
    ]


def finding(code: str, status: str, **details: str) -> Finding:
    """A sandbox finding."""
    return Finding(
        code=code, detector=DETECTOR, category=Category.SANDBOX, status=status, details=details
    )


def verdict_finding(obj: HeldObject | Object, verdict: ObjectVerdict, **extra: str) -> Finding:
    """The finding for one object's verdict (``SANDBOX_MALICIOUS``, ``_SUSPICIOUS``, ``_CLEAN``)."""
    code = {"malicious": "SANDBOX_MALICIOUS", "suspicious": "SANDBOX_SUSPICIOUS"}
    details = {"object": obj.label, "sha256": obj.sha256, **extra}
    if verdict.detail:
        details["threat" if verdict.status == "malicious" else "detail"] = verdict.detail
    return finding(code.get(verdict.status, "SANDBOX_CLEAN"), verdict.status, **details)


def worst(verdicts: Sequence[ObjectVerdict]) -> str:
    """The worst status among ``verdicts``: ``malicious``, ``suspicious`` or ``clean``."""
    statuses = {v.status for v in verdicts}
    for status in ("malicious", "suspicious"):
        if status in statuses:
            return status
    return "clean"
