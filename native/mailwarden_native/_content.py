"""Content extraction: what a detector reads out of a message besides its structure.

Split by cost (see docs/content-extraction.md):

- C (hot path, every text part and attachment): HTML to text, URLs from text and HTML,
  file type from magic bytes.  Called through cffi, which releases the GIL.
- Python over the standard library's C codecs (rare or per-header work, where a hand-written
  C version would only duplicate well-kept code): charset conversion, RFC 2047 encoded words,
  uuencoded blocks, IDNA/punycode (the ``idna`` package, UTS #46).

Nothing here raises on malformed input: invalid bytes are replaced, broken encoded words stay
literal, and what happened is reported as flags.
"""

from __future__ import annotations

import binascii
import codecs
import enum
import re
import urllib.parse
from functools import lru_cache

import idna
import msgspec

from ._core import ffi, lib
from ._decode import decode_base64_ex, decode_quoted_printable
from ._errors import check

__all__ = [
    "FILE_TYPES",
    "HeaderFlag",
    "TextFlag",
    "UUFile",
    "Url",
    "UrlFlag",
    "decode_header",
    "decode_header_ex",
    "decode_text",
    "detect_type",
    "extract_urls",
    "find_uuencoded",
    "html_to_text",
    "resolve_charset",
]

Buffer = bytes | bytearray | memoryview

_alloc = ffi.new_allocator(should_clear_after_alloc=False)


def _bytes_in(data: str | Buffer) -> Buffer:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected str or a bytes-like object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# HTML to text (C)


def html_to_text(html: str | Buffer) -> str:
    """Visible text of an HTML document (UTF-8 bytes or str).

    Script, style, title and comments are dropped, character references decoded, block
    elements end lines, whitespace is collapsed outside ``<pre>``, and invisible characters
    spammers put inside words (soft hyphen, zero-width space and joiners, BOM) are removed.
    Broken markup degrades to text as a browser would show it.
    """
    src = _bytes_in(html)
    n = len(src)
    if n == 0:
        return ""
    cap = int(lib.mw_html_text_max_len(n))
    out = _alloc("uint8_t[]", cap)
    got = int(lib.mw_html_to_text(ffi.from_buffer("uint8_t[]", src), n, out, cap))
    return bytes(ffi.buffer(out, got)).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# URLs (C scan and normalisation, IDNA in Python)


class UrlFlag(enum.IntFlag):
    """How a URL was written; values mirror ``MW_URL_*`` in mw_content.h (plus NESTED)."""

    NONE = 0
    OBFUSCATED_SCHEME = lib.MW_URL_OBFUSCATED_SCHEME
    DEFANGED_DOT = lib.MW_URL_DEFANGED_DOT
    USERINFO = lib.MW_URL_USERINFO
    BACKSLASH = lib.MW_URL_BACKSLASH
    PERCENT_HOST = lib.MW_URL_PERCENT_HOST
    NUMERIC_HOST = lib.MW_URL_NUMERIC_HOST
    IP_HOST = lib.MW_URL_IP_HOST
    INVISIBLE = lib.MW_URL_INVISIBLE
    NO_SCHEME = lib.MW_URL_NO_SCHEME
    ENTITY = lib.MW_URL_ENTITY
    IDN = lib.MW_URL_NON_ASCII_HOST
    TRUNCATED = lib.MW_URL_TRUNCATED
    #: found %-encoded inside another URL's query (``?u=https%3A%2F%2F...``)
    NESTED = 1 << 16
    #: the host could not be converted to an IDNA A-label and is kept as Unicode
    BAD_IDN = 1 << 17


_SOURCES = {
    int(lib.MW_URL_SRC_TEXT): "text",
    int(lib.MW_URL_SRC_HREF): "href",
    int(lib.MW_URL_SRC_SRC): "src",
    int(lib.MW_URL_SRC_ACTION): "action",
    int(lib.MW_URL_SRC_META): "meta-refresh",
}
_URL_FIELDS = 6
_NON_ASCII = int(lib.MW_URL_NON_ASCII_HOST)
_NESTED_MARK = re.compile(r"%3A%2F%2F|%3A%5C%5C", re.IGNORECASE)


class Url(msgspec.Struct, frozen=True):
    """A URL found in a message, normalised.

    ``url`` has a lowercased scheme and host, the host in IDNA A-label (punycode) form, no
    userinfo, and path bytes outside printable ASCII %-escaped. ``flags`` says which evasions
    were undone; ``source`` is where it was found: ``text``, ``href``, ``src``, ``action`` or
    ``meta-refresh``.
    """

    url: str
    host: str
    flags: UrlFlag = UrlFlag.NONE
    source: str = "text"


@lru_cache(maxsize=4096)
def _idna_host(host: str) -> tuple[str, bool]:
    """(A-label host, ok). UTS #46 mapping as browsers do; IDNA 2003 as a fallback."""
    try:
        return idna.encode(host, uts46=True, transitional=False).decode("ascii"), True
    except (idna.IDNAError, UnicodeError, ValueError):
        pass
    try:
        return host.encode("idna").decode("ascii"), True
    except UnicodeError:
        return host, False


def extract_urls(
    data: str | Buffer, *, html: bool = False, max_urls: int = 0, max_url_len: int = 0
) -> list[Url]:
    """Every URL in ``data`` (text, or HTML when ``html``), in the order found, repeats kept.

    Text: ``scheme://`` URLs (http, https, ftp and obfuscated forms such as ``hxxp``),
    ``www.`` names and bare ``name.tld`` for common TLDs. HTML: ``href``/``src``/``action``
    (and similar) attributes with character references decoded, meta refresh targets, then
    the visible text. At most ``max_urls`` URLs of ``max_url_len`` bytes (0: the C defaults).
    """
    src = _bytes_in(data)
    if not isinstance(max_urls, int) or not isinstance(max_url_len, int):
        raise TypeError("max_urls and max_url_len must be int")
    if not 0 <= max_urls < 1 << 32 or not 0 <= max_url_len < 1 << 32:
        raise ValueError("max_urls and max_url_len must fit in 32 bits")
    out = ffi.new("mw_url_list **")
    mode = lib.MW_URL_MODE_HTML if html else lib.MW_URL_MODE_TEXT
    rc = lib.mw_extract_urls(
        ffi.from_buffer("uint8_t[]", src), len(src), mode, max_urls, max_url_len, out
    )
    check(rc, "mw_extract_urls")
    lst = out[0]
    try:
        n = int(lst.n_urls)
        if n == 0:
            return []
        recs = memoryview(ffi.buffer(lst.urls, n * _URL_FIELDS * 8)).cast("Q").tolist()
        arena = bytes(ffi.buffer(lst.arena, int(lst.arena_len)))
    finally:
        lib.mw_url_list_free(lst)
    urls: list[Url] = []
    for i in range(0, n * _URL_FIELDS, _URL_FIELDS):
        off, ln, hoff, hlen, flags, source = recs[i : i + _URL_FIELDS]
        raw = arena[off : off + ln]
        if flags & _NON_ASCII:
            host_u = raw[hoff : hoff + hlen].decode("utf-8", "replace")
            host, ok = _idna_host(host_u)
            if not ok:
                flags |= UrlFlag.BAD_IDN
            text = raw[:hoff].decode("ascii") + host + raw[hoff + hlen :].decode("ascii")
        else:
            text = raw.decode("ascii")
            host = raw[hoff : hoff + hlen].decode("ascii")
        url = Url(text, host, UrlFlag(flags), _SOURCES.get(source, "text"))
        urls.append(url)
        if _NESTED_MARK.search(text):
            # One level of %-encoded URL inside a query (redirectors): decode and rescan.
            # Parameters are split before unescaping so an inner URL ends with its value.
            q = text.find("?")
            for param in (text[q + 1 :] if q >= 0 else text).split("&"):
                if not _NESTED_MARK.search(param):
                    continue
                inner = urllib.parse.unquote(param)
                for u in extract_urls(inner, max_urls=max_urls, max_url_len=max_url_len):
                    urls.append(Url(u.url, u.host, u.flags | UrlFlag.NESTED, url.source))
    return urls


# ---------------------------------------------------------------------------------------------
# File type from magic bytes (C)

_TYPE_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.mw_type_name(i)).decode("ascii") for i in range(int(lib.MW_TYPE_COUNT))
)
#: Every name :func:`detect_type` can return (rules and configs validate against it).
FILE_TYPES: frozenset[str] = frozenset(_TYPE_NAMES)


def detect_type(data: Buffer) -> str:
    """Type of a file from its bytes alone: ``pdf``, ``zip``, ``docx``/``xlsx``/``pptx``,
    ``odt``/``ods``/``odp``, ``jar``, ``apk``, ``ole2``, ``doc``/``xls``/``ppt``/``msi``,
    ``ole2-encrypted``, ``pe``, ``msdos``, ``elf``, ``macho``, ``java-class``, ``rar``,
    ``7z``, ``gzip``, ``bzip2``, ``xz``, ``zstd``, ``tar``, ``cab``, ``lzh``, ``alz``,
    ``iso``, ``png``, ``jpeg``, ``gif``, ``bmp``, ``tiff``, ``html``, ``rtf``, ``script``,
    ``lnk``, or ``unknown``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected a bytes-like object, got {type(data).__name__}")
    if len(data) == 0:
        return "unknown"
    return _TYPE_NAMES[int(lib.mw_detect_type(ffi.from_buffer("uint8_t[]", data), len(data)))]


# ---------------------------------------------------------------------------------------------
# Charsets (Python codecs)


class TextFlag(enum.IntFlag):
    """What happened while turning bytes into text."""

    NONE = 0
    #: the declared charset is unknown (or not a text charset): decoded as if undeclared
    UNKNOWN_CHARSET = 1
    #: bytes invalid in the charset were replaced with U+FFFD
    REPLACED = 2
    #: no usable charset was declared: UTF-8 when valid, else windows-1252 (or a BOM's)
    SNIFFED = 4


# Labels Python does not know, mapped to the codec mail clients use for them.
_EXTRA_ALIASES = {
    "x-sjis": "cp932",
    "x-euc-jp": "euc_jp",
    "windows-874": "cp874",
    "iso-8859-8-i": "iso8859-8",
    "iso-8859-6-i": "iso8859-6",
    "x-gbk": "gb18030",
    "x-mac-roman": "mac-roman",
    "x-mac-cyrillic": "mac-cyrillic",
    "cp-850": "cp850",
    "ms932": "cp932",
    "ks_c_5601": "cp949",
    "x-windows-949": "cp949",
    "utf8mb4": "utf-8",
    "x-user-defined": "cp1252",
}
# Labels whose real-world content is a superset: what browsers and mail clients decode them
# as (the WHATWG Encoding Standard's mapping), so text shows as the recipient saw it.
_SUPERSETS = {
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "iso2022_jp": "iso2022_jp_ext",
}
# Python "text encodings" no mail client offers: they would interpret the bytes as escapes.
_NOT_CHARSETS = {"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined"}
_SNIFF = "sniff"


@lru_cache(maxsize=256)
def resolve_charset(label: str | None) -> str | None:
    """The Python codec used for a MIME charset label; ``"sniff"`` for US-ASCII or no label
    (detect UTF-8, else windows-1252), None for an unknown label."""
    if label is None:
        return _SNIFF
    name = label.strip().strip("\"'").lower()
    if not name:
        return _SNIFF
    name = _EXTRA_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    canon = info.name
    if not getattr(info, "_is_text_encoding", True) or canon.replace("_", "-") in _NOT_CHARSETS:
        return None
    if canon == "ascii":
        # 8-bit bytes under a US-ASCII label are common: show them as a client would.
        return _SNIFF
    return _SUPERSETS.get(canon, canon)


def _sniff(data: bytes) -> tuple[str, TextFlag]:
    if data[:3] == b"\xef\xbb\xbf":
        return data[3:].decode("utf-8", "replace"), TextFlag.SNIFFED
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", "replace"), TextFlag.SNIFFED
    try:
        return data.decode("utf-8"), TextFlag.SNIFFED
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace"), TextFlag.SNIFFED


def _utf16(data: bytes, codec: str) -> str:
    # RFC 2781: without a BOM, "UTF-16" is big-endian (Python would assume little-endian).
    if codec == "utf-16" and data[:2] not in (b"\xff\xfe", b"\xfe\xff"):
        codec = "utf-16-be"
    return data.decode(codec, "replace")


_META_CHARSET = re.compile(
    rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I
)


def decode_text(
    data: Buffer, charset: str | None = None, *, html: bool = False
) -> tuple[str, TextFlag]:
    """Bytes to text with a MIME charset label; never raises.

    Known labels use their superset codec (ISO-8859-1 as windows-1252, GB2312 as GB18030,
    Shift_JIS as CP932, ...). No label, US-ASCII or an unknown label: UTF-8 when valid, else
    windows-1252; for ``html`` a ``<meta charset>`` in the first KiB counts as a label.
    Invalid bytes become U+FFFD and set ``REPLACED``.
    """
    raw = bytes(data)
    flags = TextFlag.NONE
    codec = resolve_charset(charset)
    if codec is None:
        flags |= TextFlag.UNKNOWN_CHARSET
        codec = _SNIFF
    if codec == _SNIFF and html:
        m = _META_CHARSET.search(raw, 0, 2048)
        if m is not None:
            meta = resolve_charset(m.group(1).decode("ascii"))
            codec = meta if meta is not None else codec
    if codec == _SNIFF:
        text, sflags = _sniff(raw)
        if charset is not None and charset.strip() and not flags & TextFlag.UNKNOWN_CHARSET:
            sflags = TextFlag.NONE  # a US-ASCII label: declared, just read leniently
        return text, flags | sflags | (TextFlag.REPLACED if "\ufffd" in text else 0)
    if codec.startswith("utf-16"):
        text = _utf16(raw, codec)
        return text, flags | (TextFlag.REPLACED if "\ufffd" in text else 0)
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        text = raw.decode(codec, "replace")
        flags |= TextFlag.REPLACED
    if codec in ("utf-8", "utf-8-sig") and text[:1] == "\ufeff":
        text = text[1:]
    return text, flags


# ---------------------------------------------------------------------------------------------
# RFC 2047 encoded words (Python: header values are short, charsets need the codecs)


class HeaderFlag(enum.IntFlag):
    """What happened while decoding encoded words in a header value."""

    NONE = 0
    #: an encoded word named a charset we do not know: it is kept literally
    UNKNOWN_CHARSET = 1
    #: bytes invalid in the word's charset were replaced with U+FFFD
    REPLACED = 2
    #: a B word had characters outside base64 or bad padding (decoded leniently anyway)
    BAD_ENCODING = 4
    #: at least one encoded word was decoded
    DECODED = 8


# charset ? B|Q ? text ?= ; the text may hold whitespace where a mailer folded inside the
# word or wrote blanks (skipped in B, kept in Q, as Thunderbird does), never '?'.
_EW = re.compile(r"=\?([^?\s\"()<>@,;:/\[\]]+)\?([bBqQ])\?([^?]*?)\?=")
_WS = re.compile(r"[ \t\r\n]+")


def _decode_q(text: str) -> bytes:
    data = text.replace("_", " ").encode("latin-1", "replace")
    return decode_quoted_printable(data) if b"=" in data else data


class _Pending:
    """Decoded bytes of adjacent encoded words in one charset, awaiting conversion."""

    __slots__ = ("buf", "codec")

    def __init__(self, codec: str, data: bytes) -> None:
        self.codec = codec
        self.buf = bytearray(data)


def decode_header_ex(value: str) -> tuple[str, HeaderFlag]:
    """Decode RFC 2047 encoded words in an (unfolded) header value; never raises.

    B and Q words are decoded; whitespace between adjacent encoded words is dropped and
    adjacent words in one charset are joined before decoding (so a character split across
    words survives). A word naming an unknown charset is kept as written and flagged;
    anything that is not a well-formed word stays literal. CR, LF and NUL in decoded text
    become spaces so a decoded value is always one line.
    """
    if "=?" not in value:
        return value, HeaderFlag.NONE
    flags = HeaderFlag.NONE
    chunks: list[str | _Pending] = []
    pos = 0
    prev_word = False
    for m in _EW.finditer(value):
        gap = value[pos : m.start()]
        if gap and not (prev_word and not gap.strip(" \t\r\n")):
            chunks.append(gap)
        pos = m.end()
        label = m.group(1).split("*", 1)[0]
        codec = resolve_charset(label)
        if codec is None:
            flags |= HeaderFlag.UNKNOWN_CHARSET
            chunks.append(m.group(0))
            prev_word = False
            continue
        payload = m.group(3)
        if m.group(2) in "bB":
            data, clean = decode_base64_ex(_WS.sub("", payload).encode("latin-1", "replace"))
            if not clean:
                flags |= HeaderFlag.BAD_ENCODING
        else:
            # Blanks inside a Q word are invalid but common; shown as written, as clients do.
            data = _decode_q(payload)
        flags |= HeaderFlag.DECODED
        last = chunks[-1] if chunks else None
        if prev_word and isinstance(last, _Pending) and last.codec == codec:
            last.buf += data
        else:
            chunks.append(_Pending(codec, data))
        prev_word = True
    chunks.append(value[pos:])
    out: list[str] = []
    for c in chunks:
        if isinstance(c, str):
            out.append(c)
            continue
        if c.codec == _SNIFF:
            text, tflags = _sniff(bytes(c.buf))
            if "\ufffd" in text:
                flags |= HeaderFlag.REPLACED
        else:
            text, tflags = decode_text(bytes(c.buf), c.codec)
            if tflags & TextFlag.REPLACED:
                flags |= HeaderFlag.REPLACED
        out.append(text.replace("\r", " ").replace("\n", " ").replace("\0", " "))
    return "".join(out), flags


def decode_header(value: str) -> str:
    """:func:`decode_header_ex` without the flags."""
    return decode_header_ex(value)[0]


# ---------------------------------------------------------------------------------------------
# uuencode (Python: rare; binascii does the per-line work in C)


class UUFile(msgspec.Struct, frozen=True):
    """A uuencoded file found in a text body: ``begin MODE NAME`` ... ``end``.

    ``offset`` is where its ``begin`` line starts in the decoded body; ``complete`` is False
    when the ``end`` line is missing (the data up to the end of the body is still decoded).
    """

    filename: str
    mode: int
    data: bytes
    detected_type: str
    offset: int
    complete: bool


_UU_BEGIN = re.compile(rb"^begin[ \t]+([0-7]{3,4})[ \t]+([^\r\n]{1,1024}?)[ \t]*\r?$", re.M)
_UU_MAX_FILES = 64


def _uu_line(line: bytes) -> bytes:
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        # Writers pad or trail lines with junk; decode only what the length byte announces.
        n = (line[0] - 32) & 63
        body = line[: 1 + (n * 4 + 2) // 3]
        try:
            return binascii.a2b_uu(body)
        except binascii.Error:
            return b""


def find_uuencoded(body: Buffer) -> list[UUFile]:
    """Every uuencoded file in a text body (at most 64), decoded leniently."""
    data = bytes(body)
    if b"begin" not in data:
        return []
    files: list[UUFile] = []
    for m in _UU_BEGIN.finditer(data):
        if len(files) >= _UU_MAX_FILES:
            break
        out = bytearray()
        pos = m.end()
        complete = False
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl
            line = data[pos:end].rstrip(b"\r")
            pos = end + 1
            if line.rstrip() == b"end":
                complete = True
                break
            if not line or line in (b"`", b" "):
                continue
            out += _uu_line(line)
        name = decode_header(m.group(2).decode("utf-8", "replace").strip())
        files.append(
            UUFile(name, int(m.group(1), 8), bytes(out), detect_type(out), m.start(), complete)
        )
    return files
