"""The milter ingress: a Sendmail/Postfix milter (protocol version 6) server on asyncio.

The MTA keeps the message and the SMTP session; we answer once per message at end-of-body
(EOB), after the headers and body chunks have been reassembled and scanned once. Replies
are accept, reject or tempfail with our own code and text (SMFIR_REPLYCODE), discard, or
quarantine (SMFIR_QUARANTINE: Postfix's hold queue), preceded by end-of-message changes
(headers added, changed or inserted, body replaced, sender changed, recipients added or
deleted).

Written by hand rather than on a library: pymilter needs libmilter and a thread per
connection, purepythonmilter has no progress replies, no UNIX sockets and no state across
stages, and the protocol is small (docs/embedding.md). Three modules: :mod:`.codec` (pure
functions: ``split_packets``, ``decode_command``, the ``encode_*`` helpers, so that it can be
tested on its own, fuzzed with hypothesis, and reused by a test MTA), :mod:`.server` (the
protocol on asyncio, one answer per message from a :class:`MilterHandler`) and
:mod:`.adapter` (the gateway as that handler).

Wire format (Sendmail mfdef.h, Postfix milter8.c): ``u32 length`` (network order, counting
the command byte), one command byte, then ``length - 1`` bytes of data; strings end in NUL.
"""

# The package is the public face of its three modules; callers import from here.
from . import adapter, codec, server
from .adapter import *  # noqa: F403
from .codec import *  # noqa: F403
from .server import *  # noqa: F403

__all__ = [*codec.__all__, *server.__all__, *adapter.__all__]
