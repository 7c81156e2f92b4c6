"""The act stage: carrying out decisions (:class:`Outbox`), with the message rewritten once
(:mod:`mailwarden.rewrite`)."""

from .outbox import Outbox

__all__ = ["Outbox"]
