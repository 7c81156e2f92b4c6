"""The act stage: carrying out decisions (:class:`Outbox`) and the one rewrite of a message's
header (:mod:`mailwarden.act.rewrite`)."""

from .outbox import Outbox
from .rewrite import header_text, header_value, prepend_headers, tag_subject

__all__ = ["Outbox", "header_text", "header_value", "prepend_headers", "tag_subject"]
