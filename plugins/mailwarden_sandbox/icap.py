"""An ICAP/1.0 client (RFC 3507): OPTIONS, RESPMOD and REQMOD with preview and ``204``.

Each object goes in one request on its own connection: the server's answer is final after its
headers and the encapsulated HTTP headers, so the (possibly large) modified body it may send
back is never read. The response parser (:func:`parse_response`) is pure and bounded, and
raises only :class:`IcapError` on malformed input.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass, field

__all__ = [
    "IcapClient",
    "IcapError",
    "IcapResponse",
    "parse_encapsulated",
    "parse_infection",
    "parse_response",
]

# Header blocks larger than this are refused: a server never needs more, a hostile one could
# otherwise make us buffer without end.
MAX_HEAD = 64 * 1024
_SECTIONS = ("req-hdr", "res-hdr", "req-body", "res-body", "opt-body", "null-body")


class IcapError(Exception):
    """The ICAP server could not be reached, answered with an error, or broke the protocol."""


@dataclass
class IcapResponse:
    """One ICAP response: status, headers (lower-case names) and the encapsulated HTTP status."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    http_status: int | None = None

    @property
    def istag(self) -> str | None:
        """The service tag; it changes when the server's signatures change."""
        value = self.headers.get("istag")
        return value.strip('"') if value else None

    @property
    def threat(self) -> str | None:
        """The detection the server reports, from the vendor headers it is known to send."""
        found = self.headers.get("x-infection-found")
        if found:
            fields = parse_infection(found)
            return fields.get("threat") or "unnamed infection"
        virus_id = self.headers.get("x-virus-id", "").strip()
        # Kaspersky Web Traffic Security says "no threats" when it found nothing.
        if virus_id and virus_id.lower() != "no threats":
            return virus_id
        if self.headers.get("x-response-info", "").strip().lower() == "blocked":
            return self.headers.get("x-response-desc") or "blocked"
        if self.status == 200 and self.http_status == 403:
            # c-icap's virus_scan replaces an infected object with a 403 page.
            return "blocked by the ICAP service"
        return None

    @property
    def verdict(self) -> str:
        """``clean`` or ``malicious``; errors are raised, never turned into verdicts."""
        if self.status == 204:
            return "clean"
        if self.status != 200:
            raise IcapError(f"ICAP error {self.status} {self.reason}")
        return "malicious" if self.threat else "clean"


def parse_infection(value: str) -> dict[str, str]:
    """``Type=0; Resolution=2; Threat=Eicar;`` as ``{"type": "0", ..., "threat": "Eicar"}``."""
    fields: dict[str, str] = {}
    for item in value.split(";"):
        name, sep, content = item.partition("=")
        if sep and name.strip():
            fields[name.strip().lower()] = content.strip()
    return fields


def parse_encapsulated(value: str) -> list[tuple[str, int]]:
    """``req-hdr=0, res-body=123`` as ``[("req-hdr", 0), ("res-body", 123)]``, checked."""
    sections: list[tuple[str, int]] = []
    for item in value.split(","):
        name, sep, offset = item.strip().partition("=")
        name = name.strip().lower()
        if not sep or name not in _SECTIONS or not offset.strip().isdigit():
            raise IcapError(f"bad Encapsulated header: {value[:100]!r}")
        sections.append((name, int(offset.strip())))
    offsets = [o for _, o in sections]
    if not sections or offsets != sorted(offsets) or offsets[0] != 0:
        raise IcapError(f"bad Encapsulated header: {value[:100]!r}")
    return sections


def _parse_head(block: bytes) -> tuple[int, str, dict[str, str]]:
    """The ICAP status line and headers of one head block (without the final blank line)."""
    try:
        text = block.decode("iso-8859-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise IcapError("undecodable head") from exc
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if version != "ICAP/1.0" or len(code) != 3 or not code.isdigit():
        raise IcapError(f"not an ICAP/1.0 status line: {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last:
            headers[last] += " " + line.strip()  # obsolete line folding
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise IcapError(f"bad header line: {line[:100]!r}")
        last = name.lower()
        value = value.strip()
        headers[last] = f"{headers[last]}, {value}" if last in headers else value
    return int(code), reason, headers


def _http_status(head: bytes) -> int | None:
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def parse_response(data: bytes) -> IcapResponse:
    """Parse one ICAP response held whole in ``data`` (head and encapsulated HTTP head).

    The body sections, if any, are not needed for a verdict and are not parsed.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_HEAD:
        raise IcapError("ICAP head missing or too long")
    status, reason, headers = _parse_head(data[:end])
    response = IcapResponse(status, reason, headers)
    encapsulated = headers.get("encapsulated")
    if encapsulated and status == 200:
        sections = parse_encapsulated(encapsulated)
        rest = data[end + 4 :]
        for (name, start), (_, stop) in zip(sections, [*sections[1:], ("", -1)], strict=True):
            if name == "res-hdr":
                if stop < 0 or stop > len(rest):
                    raise IcapError("encapsulated response head is truncated")
                response.http_status = _http_status(rest[start:stop])
    return response


def _chunk(data: bytes | memoryview) -> bytes:
    return f"{len(data):x}\r\n".encode() + bytes(data) + b"\r\n" if data else b""


class IcapClient:
    """A client for one ICAP service, e.g. ``icap://127.0.0.1:1344/avscan``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "icap" or not parsed.hostname:
            raise ValueError(f"not an icap:// URL: {url!r}")
        self.url = url
        self.host = parsed.hostname
        self.port = parsed.port or 1344
        self.timeout = timeout
        self.preview: int | None = None
        self.istag: str | None = None
        self._options_done = False

    async def _exchange(self, head: bytes, parts: list[bytes], rest: bytes | None) -> IcapResponse:
        """Send ``head`` and ``parts``; on ``100 Continue`` send ``rest``; read the answer."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(head + b"".join(parts))
                    await writer.drain()
                    response = await self._read(reader)
                    if response.status == 100 and rest is not None:
                        writer.write(rest)
                        await writer.drain()
                        response = await self._read(reader)
                    return response
                finally:
                    writer.close()
                    await asyncio.gather(writer.wait_closed(), return_exceptions=True)
        except TimeoutError as exc:
            raise IcapError(f"no answer from {self.url} within {self.timeout:g} s") from exc
        except OSError as exc:
            raise IcapError(f"cannot talk to {self.url}: {exc}") from exc

    async def _read(self, reader: asyncio.StreamReader) -> IcapResponse:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise IcapError("connection closed or head too long before the ICAP head") from exc
        if len(head) > MAX_HEAD:
            raise IcapError("ICAP head too long")
        status, _, headers = _parse_head(head[:-4])
        extra = b""
        encapsulated = headers.get("encapsulated")
        if status == 200 and encapsulated:
            sections = parse_encapsulated(encapsulated)
            # The last section is a body (or null-body): every head before it is needed.
            need = sections[-1][1]
            if need > MAX_HEAD:
                raise IcapError("encapsulated heads too long")
            try:
                extra = await reader.readexactly(need)
            except asyncio.IncompleteReadError as exc:
                raise IcapError("connection closed inside the encapsulated heads") from exc
        return parse_response(head + extra)

    async def options(self) -> IcapResponse:
        """Ask the service what it supports; remembers its ``Preview`` size and ``ISTag``."""
        head = (
            f"OPTIONS {self.url} ICAP/1.0\r\nHost: {self.host}:{self.port}\r\n"
            "Encapsulated: null-body=0\r\n\r\n"
        ).encode()
        response = await self._exchange(head, [], None)
        if response.status != 200:
            raise IcapError(f"OPTIONS answered {response.status} {response.reason}")
        preview = response.headers.get("preview", "")
        self.preview = int(preview) if preview.isdigit() else None
        self.istag = response.istag
        self._options_done = True
        return response

    async def respmod(self, data: bytes, name: str = "object") -> IcapResponse:
        """Scan ``data`` as an HTTP response body (how mail gateways send parts)."""
        quoted = urllib.parse.quote(name[:200] or "object")
        req = f"GET http://mailwarden.invalid/{quoted} HTTP/1.1\r\nHost: mailwarden.invalid\r\n\r\n"
        res = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        sections = f"req-hdr=0, res-hdr={len(req)}, res-body={len(req) + len(res)}"
        return await self._modify("RESPMOD", sections, (req + res).encode(), data)

    async def reqmod(self, data: bytes, name: str = "object") -> IcapResponse:
        """Scan ``data`` as an HTTP request body (an upload)."""
        quoted = urllib.parse.quote(name[:200] or "object")
        req = (
            f"POST http://mailwarden.invalid/{quoted} HTTP/1.1\r\nHost: mailwarden.invalid\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        return await self._modify("REQMOD", f"req-hdr=0, req-body={len(req)}", req.encode(), data)

    async def _modify(self, method: str, sections: str, http: bytes, data: bytes) -> IcapResponse:
        if not self._options_done:
            await self.options()
        headers = [
            f"{method} {self.url} ICAP/1.0",
            f"Host: {self.host}:{self.port}",
            # Without it a clean object is echoed back whole with 200.
            "Allow: 204",
            f"Encapsulated: {sections}",
        ]
        view = memoryview(data)
        if self.preview is not None:
            headers.append(f"Preview: {self.preview}")
            first, later = view[: self.preview], view[self.preview :]
            if later:
                parts = [http, _chunk(first), b"0\r\n\r\n"]
                rest: bytes | None = _chunk(later) + b"0\r\n\r\n"
            else:
                # Everything fits in the preview: "ieof" says so, and no 100 follows.
                parts, rest = [http, _chunk(first), b"0; ieof\r\n\r\n"], None
        else:
            parts, rest = [http, _chunk(view), b"0\r\n\r\n"], None
        head = ("\r\n".join(headers) + "\r\n\r\n").encode()
        response = await self._exchange(head, parts, rest)
        if response.status == 100:
            raise IcapError("the server asked to continue after the whole object was sent")
        if response.istag:
            self.istag = response.istag
        return response
