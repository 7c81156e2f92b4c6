"""MIME parsing: the Python face of ``mw_parse``.

The C parser returns a table of 64-bit integers (parts and header fields).
It is copied out with one buffer cast and the C table is freed at once, so
no native memory outlives the call and ``Part`` objects hold only Python
ints plus a reference to the raw bytes.  Everything derived from header text
(parameters, filename, decoded values) is computed on first access.

Header values are returned unfolded (line breaks inside a folded value are
removed, keeping the whitespace that followed them; leading and trailing
blanks stripped) and decoded as UTF-8 when valid, else as Latin-1, so every
byte maps to a character and no lone surrogates ever appear.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import msgspec

from ._content import (
    TextFlag,
    Url,
    UUFile,
    decode_header,
    decode_text,
    detect_type,
    extract_urls,
    find_uuencoded,
    html_to_text,
)
from ._core import ffi, lib
from ._decode import decode_base64, decode_quoted_printable
from ._errors import NativeError
from ._params import parse_params

__all__ = ["MalformationFlag", "ParseLimits", "ParsedMessage", "Part", "parse"]


class MalformationFlag(enum.IntFlag):
    """What was wrong with a part; values mirror ``MW_FLAG_*`` in mailwarden.h."""

    NONE = 0
    MISSING_BOUNDARY = lib.MW_FLAG_MISSING_BOUNDARY
    NO_CLOSING_BOUNDARY = lib.MW_FLAG_NO_CLOSING_BOUNDARY
    BOUNDARY_NOT_FOUND = lib.MW_FLAG_BOUNDARY_NOT_FOUND
    DEPTH_LIMIT = lib.MW_FLAG_DEPTH_LIMIT
    PART_LIMIT = lib.MW_FLAG_PART_LIMIT
    HEADER_LIMIT = lib.MW_FLAG_HEADER_LIMIT
    NUL_BYTES = lib.MW_FLAG_NUL_BYTES
    BARE_CR_OR_LF_MIX = lib.MW_FLAG_BARE_CR_OR_LF_MIX
    BAD_BASE64 = lib.MW_FLAG_BAD_BASE64
    TRUNCATED_HEADERS = lib.MW_FLAG_TRUNCATED_HEADERS
    BAD_HEADER_LINE = lib.MW_FLAG_BAD_HEADER_LINE


class ParseLimits(msgspec.Struct, frozen=True):
    """Resource limits; exceeding one sets a flag, it never fails the parse."""

    max_depth: int = 32
    max_parts: int = 10000
    max_header_bytes: int = 1 << 20


# Field positions inside one mw_part record (all int64_t, in struct order).
# test_native_parse checks these against ffi.offsetof so they cannot drift.
PART_FIELDS = (
    "parent",
    "depth",
    "header_start",
    "header_end",
    "body_start",
    "body_end",
    "first_header",
    "n_headers",
    "flags",
    "kind",
    "cte",
    "type_off",
    "type_len",
    "subtype_off",
    "subtype_len",
    "boundary_off",
    "boundary_len",
    "default_type",
)
_NPF = len(PART_FIELDS)
_NHF = 4  # name_off, name_len, value_off, value_len

_KIND_MULTIPART = int(lib.MW_KIND_MULTIPART)
_KIND_MESSAGE = int(lib.MW_KIND_MESSAGE)
_CTE_BASE64 = int(lib.MW_CTE_BASE64)
_CTE_QP = int(lib.MW_CTE_QP)
_DEFAULT_RFC822 = int(lib.MW_DEFAULT_MESSAGE_RFC822)
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_UNSET: object = object()


_FLAG_CACHE: dict[int, MalformationFlag] = {}


def _flag(value: int) -> MalformationFlag:
    # Building an IntFlag member is slow relative to the rest of Part.__init__
    # and only a handful of combinations ever occur.
    flag = _FLAG_CACHE.get(value)
    if flag is None:
        flag = _FLAG_CACHE[value] = MalformationFlag(value)
    return flag


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _unfold(raw: bytes) -> str:
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\r", b"").replace(b"\n", b"")
    return _text(raw.strip(b" \t"))


class Part:
    """One MIME entity: offsets into the raw message plus lazy header views."""

    __slots__ = (
        "_cte_code",
        "_decoded",
        "_detected_type",
        "_disposition",
        "_filename",
        "_hdr",
        "_hdr_count",
        "_hdr_first",
        "_headers",
        "_params",
        "_raw",
        "_text",
        "_text_flags",
        "_transfer_encoding",
        "body_end",
        "body_start",
        "children",
        "content_type",
        "depth",
        "flags",
        "header_end",
        "header_start",
        "index",
        "is_message",
        "is_multipart",
        "parent",
    )

    index: int
    parent: int
    depth: int
    header_start: int
    header_end: int
    body_start: int
    body_end: int
    content_type: str
    flags: MalformationFlag
    is_multipart: bool
    is_message: bool
    children: list[int]

    def __init__(self, raw: bytes, index: int, rec: list[int], hdr: list[int]) -> None:
        self._raw = raw
        self.index = index
        self.parent = rec[0]
        self.depth = rec[1]
        self.header_start = rec[2]
        self.header_end = rec[3]
        self.body_start = rec[4]
        self.body_end = rec[5]
        self._hdr = hdr
        self._hdr_first = rec[6]
        self._hdr_count = rec[7]
        self.flags = _flag(rec[8])
        self.is_multipart = rec[9] == _KIND_MULTIPART
        self.is_message = rec[9] == _KIND_MESSAGE
        self._cte_code = rec[10]
        if rec[12] and rec[14]:
            t, s = rec[11], rec[13]
            ctype = raw[t : t + rec[12]] + b"/" + raw[s : s + rec[14]]
            self.content_type = ctype.decode("latin-1").lower()
        elif rec[17] == _DEFAULT_RFC822:
            self.content_type = "message/rfc822"
        else:
            self.content_type = "text/plain"
        self.children = []
        self._headers: list[tuple[str, str]] | None = None
        self._params: dict[str, str] | None = None
        self._disposition: object = _UNSET
        self._filename: object = _UNSET
        self._transfer_encoding: str | None = None
        self._decoded: bytes | None = None
        self._text: str | None = None
        self._text_flags = TextFlag.NONE
        self._detected_type: str | None = None

    def __repr__(self) -> str:
        return (
            f"<Part {self.index} {self.content_type} parent={self.parent} "
            f"body=[{self.body_start}:{self.body_end}] flags={self.flags!r}>"
        )

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name as written, unfolded value), duplicates kept in order."""
        if self._headers is None:
            raw, h = self._raw, self._hdr
            out: list[tuple[str, str]] = []
            base = self._hdr_first * _NHF
            for i in range(base, base + self._hdr_count * _NHF, _NHF):
                no, nl, vo, vl = h[i], h[i + 1], h[i + 2], h[i + 3]
                out.append((_text(raw[no : no + nl]), _unfold(raw[vo : vo + vl])))
            self._headers = out
        return self._headers

    def _values(self, name: str, first: bool) -> list[str]:
        # Compares raw name bytes so a lookup decodes only the matching values,
        # not the whole header block.
        if self._headers is not None:
            key = name.lower()
            vals = [v for n, v in self._headers if n.lower() == key]
            return vals[:1] if first else vals
        raw, h = self._raw, self._hdr
        bkey = name.lower().encode("utf-8", "surrogateescape")
        klen = len(bkey)
        out: list[str] = []
        base = self._hdr_first * _NHF
        for i in range(base, base + self._hdr_count * _NHF, _NHF):
            no = h[i]
            if h[i + 1] == klen and raw[no : no + klen].lower() == bkey:
                vo = h[i + 2]
                out.append(_unfold(raw[vo : vo + h[i + 3]]))
                if first:
                    break
        return out

    def header(self, name: str) -> str | None:
        """First value of the named field (case-insensitive), or None."""
        vals = self._values(name, True)
        return vals[0] if vals else None

    def header_all(self, name: str) -> list[str]:
        """Every value of the named field (case-insensitive), in order."""
        return self._values(name, False)

    @property
    def params(self) -> dict[str, str]:
        """Content-Type parameters: lowercased names, decoded values."""
        if self._params is None:
            ct = self.header("content-type")
            self._params = parse_params(ct)[1] if ct is not None else {}
        return self._params

    @property
    def charset(self) -> str | None:
        cs = self.params.get("charset")
        if cs is None:
            return None
        return cs.strip().lower() or None

    @property
    def transfer_encoding(self) -> str:
        """Lowercased Content-Transfer-Encoding token, "7bit" when absent."""
        if self._transfer_encoding is None:
            cte = self.header("content-transfer-encoding")
            token = cte.split(";", 1)[0].strip().lower() if cte is not None else ""
            self._transfer_encoding = token or "7bit"
        return self._transfer_encoding

    def _load_disposition(self) -> None:
        cd = self.header("content-disposition")
        disposition: str | None = None
        filename: str | None = None
        if cd is not None:
            main, params = parse_params(cd)
            disposition = main or None
            filename = params.get("filename")
        if filename is None:
            filename = self.params.get("name")
        if filename is not None and "=?" in filename:
            # Outlook and others put RFC 2047 words in (RFC 2231-less) filename parameters.
            filename = decode_header(filename)
        self._disposition = disposition
        self._filename = filename

    @property
    def disposition(self) -> str | None:
        """Lowercased Content-Disposition type ("attachment", "inline", ...)."""
        if self._disposition is _UNSET:
            self._load_disposition()
        return self._disposition  # type: ignore[return-value]

    @property
    def filename(self) -> str | None:
        """Content-Disposition filename, else Content-Type name (RFC 2231 joined, RFC 2047
        encoded words decoded)."""
        if self._filename is _UNSET:
            self._load_disposition()
        return self._filename  # type: ignore[return-value]

    @property
    def body_raw(self) -> memoryview:
        """Zero-copy view of the undecoded body."""
        return memoryview(self._raw)[self.body_start : self.body_end]

    def decoded(self) -> bytes:
        """Transfer-decoded body (base64 / quoted-printable, identity otherwise),
        computed once and cached."""
        if self._decoded is None:
            body = self.body_raw
            if self._cte_code == _CTE_BASE64:
                self._decoded = decode_base64(body)
            elif self._cte_code == _CTE_QP:
                self._decoded = decode_quoted_printable(body)
            else:
                self._decoded = bytes(body)
        return self._decoded

    @property
    def is_leaf(self) -> bool:
        return not self.is_multipart and not self.is_message

    def decoded_header(self, name: str) -> str | None:
        """First value of the named field with RFC 2047 encoded words decoded, or None."""
        value = self.header(name)
        return decode_header(value) if value is not None else None

    def text(self) -> str:
        """The decoded body as text, computed once and cached: transfer-decoded, then
        converted from the declared charset (superset codecs as mail clients use, UTF-8 or
        windows-1252 when undeclared or unknown, invalid bytes replaced; see
        :attr:`text_flags`). For ``text/html`` this is the HTML source; see
        :meth:`visible_text`. Like :meth:`decoded`, a container gives its body unparsed."""
        if self._text is None:
            html = self.content_type == "text/html"
            self._text, self._text_flags = decode_text(self.decoded(), self.charset, html=html)
        return self._text

    @property
    def text_flags(self) -> TextFlag:
        """What charset conversion in :meth:`text` ran into (unknown charset, replaced bytes)."""
        self.text()
        return self._text_flags

    def visible_text(self) -> str:
        """What a reader sees: the text of HTML parts (see ``html_to_text``), else
        :meth:`text`."""
        if self.content_type == "text/html":
            return html_to_text(self.text())
        return self.text()

    def urls(self) -> list[Url]:
        """URLs in this part's text (``text/*`` leaves only; HTML links included)."""
        if not self.is_leaf or not self.content_type.startswith("text/"):
            return []
        return extract_urls(self.text(), html=self.content_type == "text/html")

    @property
    def detected_type(self) -> str:
        """Type of the decoded body from its magic bytes (``pdf``, ``docx``, ``pe``, ...,
        ``unknown``), never from the headers; computed once."""
        if self._detected_type is None:
            self._detected_type = detect_type(self.decoded()) if self.is_leaf else "unknown"
        return self._detected_type

    def uuencoded(self) -> list[UUFile]:
        """Files uuencoded inside this part's body (text leaves only)."""
        if not self.is_leaf or not self.content_type.startswith("text/"):
            return []
        return find_uuencoded(self.decoded())


class ParsedMessage:
    """A parsed message: the raw bytes and its parts in document order."""

    __slots__ = ("flags", "parts", "raw")

    def __init__(self, raw: bytes, parts: list[Part], flags: MalformationFlag) -> None:
        self.raw = raw
        self.parts = parts
        self.flags = flags

    def __repr__(self) -> str:
        return f"<ParsedMessage {len(self.raw)} bytes, {len(self.parts)} parts, {self.flags!r}>"

    @property
    def root(self) -> Part:
        return self.parts[0]

    def leaves(self) -> Iterator[Part]:
        return (p for p in self.parts if p.is_leaf)

    def attachments(self) -> Iterator[Part]:
        return (
            p
            for p in self.parts
            if p.is_leaf and (p.disposition == "attachment" or p.filename is not None)
        )

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self.root.headers

    def header(self, name: str) -> str | None:
        return self.root.header(name)

    def header_all(self, name: str) -> list[str]:
        return self.root.header_all(name)

    def decoded_header(self, name: str) -> str | None:
        """First value of the named root field, RFC 2047 encoded words decoded."""
        return self.root.decoded_header(name)

    @property
    def subject(self) -> str | None:
        """The Subject, RFC 2047 encoded words decoded."""
        return self.root.decoded_header("subject")

    def urls(self) -> list[Url]:
        """Every distinct URL of the message (first occurrence wins): text and HTML leaves,
        then the Subject."""
        seen: dict[str, Url] = {}
        for p in self.leaves():
            for u in p.urls():
                seen.setdefault(u.url, u)
        subject = self.subject
        if subject:
            for u in extract_urls(subject):
                seen.setdefault(u.url, u)
        return list(seen.values())

    def uuencoded(self) -> list[tuple[Part, UUFile]]:
        """uuencoded files in text leaves, with the part each was found in."""
        return [(p, f) for p in self.leaves() for f in p.uuencoded()]

    @property
    def message_id(self) -> str | None:
        return self.root.header("message-id")


def _table(ptr: object, count: int, ctype: str) -> list[int]:
    if count == 0:
        return []
    size = count * int(ffi.sizeof(ctype))
    return memoryview(ffi.buffer(ptr, size)).cast("q").tolist()


def _limit(value: int, hi: int, name: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"ParseLimits.{name} must be a non-negative int, got {value!r}")
    return min(value, hi)


def parse(raw: bytes, limits: ParseLimits | None = None) -> ParsedMessage:
    """Parse a message.  Malformed mail never raises: see ``Part.flags``.

    Raises TypeError for non-bytes input and NativeError when the core runs
    out of memory.  The GIL is released while the C parser runs.
    """
    if not isinstance(raw, bytes):
        raise TypeError(f"parse() needs bytes, got {type(raw).__name__}")
    lim = ffi.new("mw_limits *")
    if limits is None:
        lib.mw_limits_default(lim)
    else:
        lim.max_depth = _limit(limits.max_depth, _U32_MAX, "max_depth")
        lim.max_parts = _limit(limits.max_parts, _U32_MAX, "max_parts")
        lim.max_header_bytes = _limit(limits.max_header_bytes, _U64_MAX, "max_header_bytes")
    out = ffi.new("mw_message **")
    rc = int(lib.mw_parse(ffi.from_buffer("uint8_t[]", raw), len(raw), lim, out))
    if rc != lib.MW_OK:
        raise NativeError(f"mw_parse failed with code {rc}")
    msg = out[0]
    try:
        n_parts = int(msg.n_parts)
        ptab = _table(msg.parts, n_parts, "mw_part")
        htab = _table(msg.headers, int(msg.n_headers), "mw_header")
        flags = _flag(int(msg.flags))
    finally:
        lib.mw_message_free(msg)
    parts = [Part(raw, i, ptab[i * _NPF : (i + 1) * _NPF], htab) for i in range(n_parts)]
    for p in parts[1:]:
        parts[p.parent].children.append(p.index)
    return ParsedMessage(raw, parts, flags)
