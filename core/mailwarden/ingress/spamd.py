"""SpamAssassin's spamd protocol (SPAMC/1.5), answered with our verdict: ``spamc`` and
Exim's ``spam =`` ACL condition work unchanged.

A request is ``METHOD SPAMC/1.x``, header lines, an empty line and ``Content-length`` bytes
of message (``Compress: zlib``: compressed). Methods: ``CHECK`` (the ``Spam:`` header
only), ``SYMBOLS`` (the finding codes, comma-separated), ``REPORT`` and ``REPORT_IFSPAM`` (a
SpamAssassin-style table of findings), ``PROCESS`` (the message with ``X-Spam-*`` headers
and the rule's header changes), ``HEADERS`` (its header block only), ``PING`` and ``TELL``.

The answer is ``Spam: True ; <score> / <required>``: our spam score and the antispam
plugin's ``probable_spam_score``. A message the rule keeps from its recipients for another
reason (a virus, a blocked attachment) is "True" with at least the required score, since
clients compare the score alone (fail closed); one whose rule says ``tempfail`` (a detector
failed, a sandbox verdict is pending) gets ``SPAMD/1.5 75 EX_TEMPFAIL``, which Exim defers.
The ``User:`` header, when it is an address, chooses the rule as a recipient would.

``TELL`` (``spamc -L spam|ham|forget``) teaches the classifier through the
``mailwarden_learn`` hook (the antispam plugin's Bayes, with its journal) when ``[spamd]
allow_tell`` is on, as spamd's ``--allow-tell``. A request we cannot read gets
``SPAMD/1.5 76 EX_PROTOCOL`` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from typing import TYPE_CHECKING

from mailwarden_sdk import ActionKind, Envelope

from ..hookcalls import call_impl, hook_kwargs
from .scan_protocols import (
    ScanSession,
    is_spam,
    read_timed,
    reported_score,
    required_score,
    start_stream_listener,
)

if TYPE_CHECKING:
    from ..pipeline import Decision, Gateway

__all__ = ["SpamdError", "report_text", "start_spamd"]

log = logging.getLogger(__name__)

_VERSION = "SPAMD/1.5"
_METHODS = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS", "PING")
_MAX_HEADERS = 64
_DIGITS = re.compile(r"[0-9]{1,15}")


class SpamdError(Exception):
    """A reply that ends the connection: ``code`` and spamd's name for it."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text

    @property
    def line(self) -> bytes:
        return f"{_VERSION} {self.code} {self.text}\r\n\r\n".encode("ascii", "replace")


def _protocol(why: str) -> SpamdError:
    log.info("spamd: bad request: %s", why)
    return SpamdError(76, "EX_PROTOCOL")


def report_text(decision: Decision, score: float, required: float) -> str:
    """SpamAssassin's "Content analysis details" table, one line per finding."""
    lines = [
        f"Content analysis details:   ({score:.1f} points, {required:.1f} required)",
        "",
        " pts rule name              description",
        "---- ---------------------- --------------------------------------------------",
    ]
    for f in decision.verdict.findings:
        about = ", ".join(f"{k}={v}" for k, v in sorted(f.details.items()))
        text = f"{f.detector}: {f.status}" + (f" ({about})" if about else "")
        lines.append(f"{f.score:4.1f} {f.code:<22} {text[:200]}")
    return "\r\n".join(lines) + "\r\n"


class _Request:
    def __init__(self, method: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.headers = headers
        self.body = body


class SpamdSession(ScanSession):
    """One request on one connection (spamd's protocol has no keep-alive)."""

    async def run(self) -> None:
        try:
            request = await self._read()
            reply = await self._answer(request)
        except SpamdError as exc:
            reply = exc.line
        except (asyncio.LimitOverrunError, ValueError, UnicodeDecodeError, zlib.error) as exc:
            reply = _protocol(repr(exc)).line
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception:
            # Our failure, not the client's: an error code, never a verdict (Exim defers).
            log.exception("spamd: request from %s failed", self.peer)
            reply = SpamdError(70, "EX_SOFTWARE").line
        self.writer.write(reply)
        await read_timed(self.writer.drain(), self.timeout)

    async def _line(self) -> str:
        try:
            raw = await read_timed(self.reader.readuntil(b"\n"), self.timeout)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise _protocol("request cut short") from None
            raise
        return raw.rstrip(b"\r\n").decode("utf-8")

    async def _read(self) -> _Request:
        first = await self._line()
        method, _, protocol = first.partition(" ")
        if not protocol.startswith("SPAMC/"):
            raise _protocol(f"request line {first[:80]!r}")
        if method not in (*_METHODS, "TELL", "SKIP"):
            raise _protocol(f"method {method[:40]!r}")
        headers: dict[str, str] = {}
        while True:
            line = await self._line()
            if not line:
                break
            name, sep, value = line.partition(":")
            if not sep or not name.strip() or len(headers) >= _MAX_HEADERS:
                raise _protocol(f"header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        if method in ("PING", "SKIP"):
            return _Request(method, headers, b"")
        length_text = headers.get("content-length")
        if length_text is None or not _DIGITS.fullmatch(length_text):
            raise _protocol("no Content-length")
        length = int(length_text)
        if length > self.max_size:
            raise SpamdError(74, "EX_IOERR message too big")
        try:
            body = await read_timed(self.reader.readexactly(length), self.timeout)
        except asyncio.IncompleteReadError:
            raise _protocol("message shorter than its Content-length") from None
        compress = headers.get("compress", "").lower()
        if compress == "zlib":
            inflater = zlib.decompressobj()
            body = inflater.decompress(body, self.max_size + 1)
            if len(body) > self.max_size or inflater.unconsumed_tail:
                raise SpamdError(74, "EX_IOERR message too big")
            if not inflater.eof:
                raise _protocol("truncated zlib stream")
        elif compress:
            raise _protocol(f"Compress: {compress[:20]}")
        return _Request(method, headers, body)

    async def _answer(self, request: _Request) -> bytes:
        if request.method == "PING":
            return f"{_VERSION} 0 PONG\r\n".encode()
        if request.method == "SKIP":
            return b""
        if request.method == "TELL":
            return await self._tell(request)
        user = request.headers.get("user", "")
        envelope = Envelope(rcpt_to=[user] if "@" in user else [], client_address=self.peer or None)
        # Real mail its MTA delivers on this answer: learned from, as spamd's autolearn does.
        decision = await self.gateway.scan(request.body, envelope, live=True)
        if decision.action.kind is ActionKind.TEMPFAIL:
            self.gateway.record(decision, ingress="spamd", reply="75 EX_TEMPFAIL")
            return f"{_VERSION} 75 EX_TEMPFAIL\r\n\r\n".encode()
        required = required_score(self.gateway)
        score = reported_score(decision, required)
        spam = is_spam(decision)
        status = f"Spam: {'True' if spam else 'False'} ; {score:.1f} / {required:.1f}"
        body = self._body(request, decision, spam, score, required)
        self.gateway.record(decision, ingress="spamd", reply=status)
        head = f"{_VERSION} 0 EX_OK\r\n{status}\r\n"
        if request.method == "CHECK":
            return (head + "\r\n").encode()
        return (head + f"Content-length: {len(body)}\r\n\r\n").encode() + body

    def _body(
        self, request: _Request, decision: Decision, spam: bool, score: float, required: float
    ) -> bytes:
        method = request.method
        if method == "SYMBOLS":
            codes = dict.fromkeys(f.code for f in decision.verdict.findings)
            return ",".join(codes).encode()
        if method == "REPORT" or (method == "REPORT_IFSPAM" and spam):
            return report_text(decision, score, required).encode("utf-8", "replace")
        if method in ("PROCESS", "HEADERS"):
            message = _with_status(decision, spam, score, required)
            if method == "PROCESS":
                return message
            for blank in (b"\r\n\r\n", b"\n\n"):
                end = message.find(blank)
                if end >= 0:
                    return message[: end + len(blank)]
            return message
        return b""

    async def _tell(self, request: _Request) -> bytes:
        if not self.gateway.config.spamd.allow_tell:
            raise SpamdError(69, "EX_UNAVAILABLE TELL commands are not enabled (allow_tell)")
        label = request.headers.get("message-class", "").lower()
        sets = _targets(request.headers.get("set", ""))
        removes = _targets(request.headers.get("remove", ""))
        if sets and label not in ("spam", "ham"):
            raise _protocol(f"Message-class {label[:20]!r}")
        if not sets and not removes:
            raise _protocol("TELL without Set or Remove")
        by = f"spamd:{self.peer}" + (
            f":{request.headers['user']}" if "user" in request.headers else ""
        )
        lines: list[str] = []
        # Only our own ("local") classifier: there is no remote reporting service.
        if "local" in removes and not sets:
            if await self._learn(request.body, "forget", by):
                lines.append("DidRemove: local")
        if "local" in sets:
            if await self._learn(request.body, label, by):
                lines.append("DidSet: local")
        if not lines:
            raise SpamdError(69, "EX_UNAVAILABLE no classifier learns here")
        return (f"{_VERSION} 0 EX_OK\r\n" + "".join(f"{x}\r\n" for x in lines) + "\r\n").encode()

    async def _learn(self, raw: bytes, label: str, by: str) -> bool:
        answers: list[str] = []
        hook = self.gateway.plugins.pm.hook.mailwarden_learn
        for impl in hook.get_hookimpls():
            try:
                # Under the listener's timeout, like every hook the gateway calls.
                kwargs = hook_kwargs(impl, raw=raw, label=label, by=by)
                answer = await call_impl(impl.function, kwargs, self.timeout, None)
            except Exception as exc:
                log.warning("spamd TELL: %s failed to learn: %r", impl.plugin_name, exc)
                raise SpamdError(74, "EX_IOERR learning failed") from exc
            if answer is not None:
                answers.append(str(answer))
        log.info("spamd TELL %s by %s: %s", label, by, "; ".join(answers) or "nobody learns")
        return bool(answers)


def _targets(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def _with_status(decision: Decision, spam: bool, score: float, required: float) -> bytes:
    raw = decision.with_headers()
    present = {name.lower() for name, _ in decision.action.add_headers}
    tests = ",".join(dict.fromkeys(f.code for f in decision.verdict.findings)) or "none"
    ours = [
        ("X-Spam-Flag", "YES" if spam else "NO"),
        ("X-Spam-Score", f"{score:.1f}"),
        (
            "X-Spam-Status",
            f"{'Yes' if spam else 'No'}, score={score:.1f} required={required:.1f} tests={tests}",
        ),
    ]
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    added = b"".join(
        f"{name}: {value}".encode() + eol for name, value in ours if name.lower() not in present
    )
    return added + raw


async def start_spamd(gateway: Gateway, *, reuse_port: bool = False) -> asyncio.Server:
    """Listen on ``[spamd] listen:port``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        await SpamdSession(gateway, gateway.config.spamd, reader, writer, peer).run()

    refusal = f"{_VERSION} 69 EX_UNAVAILABLE\r\n\r\n".encode()
    return await start_stream_listener(
        "spamd", gateway.config.spamd, handle, refusal, reuse_port=reuse_port
    )
