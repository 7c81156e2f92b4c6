"""rspamd's HTTP scan API (``POST /checkv2``), answered with our verdict: ``rspamc`` and
rspamd integrations (Haraka's rspamd plugin, proxies, scripts) work unchanged.

Plain HTTP/1.1 (keep-alive, ``Content-Length`` bodies) on asyncio. Requests:

- ``POST /checkv2`` (and ``/symbols``): the message as the body, the envelope in rspamd's
  headers ``IP``, ``Helo``, ``Hostname``, ``From``, ``Rcpt`` (one per recipient, repeatable),
  ``Queue-Id``, ``User`` (the authenticated user); ``Pass: all`` is accepted (every check
  always runs here). The reply is rspamd's JSON: ``action``, ``score``, ``required_score``,
  ``symbols`` (``{code: {name, score, description, options}}`` from our findings),
  ``messages`` (``smtp_message`` when refused), ``message-id``, ``time_real``, and ``milter``
  ``add_headers`` with the rule's header changes;
- ``POST /check``: the same in rspamd's older shape (``{"default": {is_spam, score, ...}}``);
- ``GET /ping``: ``pong``.

Our own richer JSON stays at our REST API. ``action`` from the rule's decision: deliver ->
``no action`` (clean) or ``add header`` / ``rewrite subject`` (spam the rule delivers
marked); reject, discard, quarantine -> ``reject`` (rspamd's clients have no hold: the
message must not reach the recipient); tempfail -> ``soft reject``. A request we cannot read
gets 400, a body above ``[http_scan] max_size`` 413, a client outside
``trusted_networks`` 403.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import msgspec

from mailwarden_sdk import ActionKind, Envelope

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

__all__ = ["HttpError", "rspamd_action", "rspamd_result", "start_http_scan"]

log = logging.getLogger(__name__)

_MAX_HEADERS = 100
_DIGITS = re.compile(r"[0-9]{1,15}")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
}


class HttpError(Exception):
    """An error reply; the connection is closed after it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


def rspamd_action(decision: Decision) -> str:
    """Our decision in rspamd's action names (see the module docstring)."""
    kind = decision.action.kind
    if kind is ActionKind.TEMPFAIL:
        return "soft reject"
    if kind is ActionKind.DELIVER:
        if not is_spam(decision):
            return "no action"
        return "rewrite subject" if decision.action.subject_tag else "add header"
    return "reject"


def rspamd_result(decision: Decision, required: float, elapsed: float) -> dict[str, Any]:
    """The ``/checkv2`` JSON object for one scanned message."""
    symbols: dict[str, dict[str, Any]] = {}
    for f in decision.verdict.findings:
        options = [f"{k}={v}" for k, v in sorted(f.details.items())]
        if f.code in symbols:
            symbols[f.code]["score"] = round(symbols[f.code]["score"] + f.score, 2)
            symbols[f.code]["options"].extend(options)
            continue
        symbols[f.code] = {
            "name": f.code,
            "score": round(f.score, 2),
            "metric_score": round(f.score, 2),
            "description": f"{f.detector}: {f.status}",
            "options": options,
        }
    action = rspamd_action(decision)
    messages: dict[str, str] = {}
    if action in ("reject", "soft reject"):
        messages["smtp_message"] = decision.action.smtp_text
    result: dict[str, Any] = {
        "is_skipped": False,
        "score": reported_score(decision, required),
        "required_score": required,
        "action": action,
        "symbols": symbols,
        "messages": messages,
        "time_real": round(elapsed, 6),
    }
    message_id = decision.message.message_id
    if message_id:
        result["message-id"] = message_id.strip().strip("<>")
    if decision.action.add_headers:
        result["milter"] = {
            "add_headers": {
                name: {"value": value, "order": 0} for name, value in decision.action.add_headers
            }
        }
    return result


class _Request:
    def __init__(self, method: str, path: str, version: str) -> None:
        self.method = method
        self.path = path
        self.version = version
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


class HttpScanSession(ScanSession):
    """One connection: requests answered in turn until the client or an error closes it."""

    async def run(self) -> None:
        while True:
            try:
                request = await self._read()
                if request is None:
                    return
                status, body, kind = await self._answer(request)
            except HttpError as exc:
                self._send(exc.status, _json({"error": exc.message}), "application/json", False)
                await read_timed(self.writer.drain(), self.timeout)
                return
            except (TimeoutError, ConnectionError):
                raise
            except Exception:
                # Our failure: an error status, never a verdict.
                log.exception("http_scan: request from %s failed", self.peer)
                self._send(500, _json({"error": "scan failed"}), "application/json", False)
                await read_timed(self.writer.drain(), self.timeout)
                return
            self._send(status, body, kind, request.keep_alive)
            await read_timed(self.writer.drain(), self.timeout)
            if not request.keep_alive:
                return

    async def _line(self, first: bool = False) -> str | None:
        try:
            raw = await read_timed(self.reader.readuntil(b"\n"), self.timeout)
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                return None
            raise HttpError(400, "request cut short") from None
        except asyncio.LimitOverrunError:
            raise HttpError(400, "line too long") from None
        except TimeoutError:
            if first:
                return None
            raise
        try:
            return raw.rstrip(b"\r\n").decode("latin-1")
        except UnicodeDecodeError:
            raise HttpError(400, "bad bytes in the request head") from None

    async def _read(self) -> _Request | None:
        first = await self._line(first=True)
        if first is None:
            return None
        parts = first.split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1]:
            raise HttpError(400, "bad request line")
        request = _Request(parts[0], parts[1].split("?", 1)[0], parts[2])
        while True:
            line = await self._line()
            if not line:
                break
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or len(request.headers) >= _MAX_HEADERS:
                raise HttpError(400, "bad header line")
            request.headers.append((name.lower(), value.strip()))
        if request.header("transfer-encoding"):
            raise HttpError(411, "send the body with Content-Length")
        lengths = request.all("content-length")
        # ASCII digits only: str.isdigit() takes '²', which int() refuses.
        if len(lengths) > 1 or (lengths and not _DIGITS.fullmatch(lengths[0])):
            raise HttpError(400, "bad Content-Length")
        length = int(lengths[0]) if lengths else 0
        if length > self.max_size:
            raise HttpError(413, f"message above {self.max_size} bytes")
        if length:
            try:
                request.body = await read_timed(self.reader.readexactly(length), self.timeout)
            except asyncio.IncompleteReadError:
                raise HttpError(400, "body cut short") from None
        return request

    async def _answer(self, request: _Request) -> tuple[int, bytes, str]:
        path = request.path.rstrip("/") or "/"
        if path == "/ping":
            return 200, b"pong\r\n", "text/plain"
        if path not in ("/checkv2", "/symbols", "/check"):
            raise HttpError(404, f"no such endpoint {path[:60]}")
        if request.method != "POST":
            raise HttpError(405, "POST the message")
        if not request.body:
            raise HttpError(400, "no message in the body")
        began = time.perf_counter()
        # Real mail its MTA acts on (rspamd's checkv2 learns from it too).
        decision = await self.gateway.scan(request.body, self._envelope(request), live=True)
        required = required_score(self.gateway)
        result = rspamd_result(decision, required, time.perf_counter() - began)
        self.gateway.record(decision, ingress="http_scan", reply=result["action"])
        if path == "/check":
            symbols = result.pop("symbols")
            result.pop("messages")
            result = {"default": {"is_spam": is_spam(decision), **result, **symbols}}
        return 200, _json(result), "application/json"

    def _envelope(self, request: _Request) -> Envelope:
        def one(name: str) -> str | None:
            value = request.header(name)
            return value or None

        rcpts = [r.strip().strip("<>") for v in request.all("rcpt") for r in v.split(",")]
        return Envelope(
            mail_from=(one("from") or "").strip().strip("<>"),
            rcpt_to=[r for r in rcpts if r],
            client_address=one("ip") or self.peer or None,
            client_name=one("hostname"),
            helo=one("helo"),
            queue_id=one("queue-id"),
            authenticated_user=one("user"),
        )

    def _send(self, status: int, body: bytes, kind: str, keep_alive: bool) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
            "Server: mailwarden\r\n\r\n"
        )
        self.writer.write(head.encode("ascii") + body)


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


async def start_http_scan(gateway: Gateway, *, reuse_port: bool = False) -> asyncio.Server:
    """Listen on ``[http_scan] listen:port``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        await HttpScanSession(gateway, gateway.config.http_scan, reader, writer, peer).run()

    body = _json({"error": "client not in [http_scan] trusted_networks"})
    refusal = (
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    return await start_stream_listener(
        "http_scan", gateway.config.http_scan, handle, refusal, reuse_port=reuse_port
    )
