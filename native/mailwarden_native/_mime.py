"""MIME parsing: the Python face of ``mw_parse``.

The C parser returns a table of 64-bit integers (parts and header fields).
It is copied out with one buffer cast and the C table is freed at once, so
no native memory outlives the call and ``Part`` objects hold only Python
ints plus a reference to the raw bytes.  Everything derived from header text
(decoded values, headers) is computed on first access.  The C parser also
hands over the spans of the Content-Disposition type, the filename and the
charset, so asking for them is a slice of ``raw``, not a header parse; only
values it marks complex (RFC 2231 forms, escapes, 8-bit bytes) are parsed in
Python, by the same rules.

Decoding is lazy and cached per part, and the decoded bytes of one message
are capped by ``ParseLimits.max_decoded_bytes``: the part that would pass the
cap gets its decoded body cut there and ``DECODED_LIMIT`` set (on the part
and the message); parts decoded after that come back empty, also flagged.

Header values are returned unfolded (line breaks inside a folded value are
removed, keeping the whitespace that followed them; leading and trailing
blanks stripped) and decoded as UTF-8 when valid, else as Latin-1, so every
byte maps to a character and no lone surrogates ever appear.
"""

from __future__ import annotations

import enum
import struct
import sys
import threading
from collections.abc import Iterable, Iterator

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
from ._decode import scratch, scratch_local
from ._errors import check
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
    DECODED_LIMIT = lib.MW_FLAG_DECODED_LIMIT
    DUPLICATE_CONTENT_TYPE = lib.MW_FLAG_DUPLICATE_CONTENT_TYPE
    DUPLICATE_BOUNDARY = lib.MW_FLAG_DUPLICATE_BOUNDARY
    HEADER_NAME_JUNK = lib.MW_FLAG_HEADER_NAME_JUNK
    NESTED_COMMENT = lib.MW_FLAG_NESTED_COMMENT
    PART_OUTSIDE_BOUNDARIES = lib.MW_FLAG_PART_OUTSIDE_BOUNDARIES


class ParseLimits(msgspec.Struct, frozen=True):
    """Resource limits; exceeding one sets a flag, it never fails the parse."""

    max_depth: int = 32
    max_parts: int = 10000
    max_header_bytes: int = 1 << 20
    # Decoded bytes per message, summed over every part whose decoded() was
    # asked for.  The leaves of a message within the gateway's default 50 MiB
    # size limit decode to less than this (base64 and quoted-printable only
    # shrink); the cap bounds memory when containers are decoded too, or the
    # size limit is raised.
    max_decoded_bytes: int = 64 << 20


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
    "disposition_off",
    "disposition_len",
    "filename_off",
    "filename_len",
    "charset_off",
    "charset_len",
    "param_flags",
    "type_code",
)
_NPF = len(PART_FIELDS)
_NHF = 4  # name_off, name_len, value_off, value_len

_KIND_LEAF = int(lib.MW_KIND_LEAF)
_KIND_MULTIPART = int(lib.MW_KIND_MULTIPART)
_KIND_MESSAGE = int(lib.MW_KIND_MESSAGE)
_CTE_BASE64 = int(lib.MW_CTE_BASE64)
_CTE_QP = int(lib.MW_CTE_QP)
_DEFAULT_RFC822 = int(lib.MW_DEFAULT_MESSAGE_RFC822)
_CD_COMPLEX = int(lib.MW_PARAMS_CD_COMPLEX)
_CT_COMPLEX = int(lib.MW_PARAMS_CT_COMPLEX)
_DECODED_LIMIT = int(lib.MW_FLAG_DECODED_LIMIT)
_DEFAULT_MAX_DECODED = ParseLimits().max_decoded_bytes
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_UNSET: object = object()
_decode_span = lib.mw_decode_span
_unpack = ffi.unpack


# mw_part.type_code -> content type: most parts need no string work at all.
_TYPE_NAMES = tuple(
    ffi.string(lib.mw_content_type_name(i)).decode("ascii")
    for i in range(lib.MW_CONTENT_TYPE_CODES)
)

_FLAG_CACHE: dict[int, MalformationFlag] = {}


def _flag(value: int) -> MalformationFlag:
    # Building an IntFlag member is slow relative to the rest of Part.__init__
    # and only a handful of combinations ever occur.
    flag = _FLAG_CACHE.get(value)
    if flag is None:
        flag = _FLAG_CACHE[value] = MalformationFlag(value)
    return flag


# Interned views of the few distinct content types and charsets a mail stream
# holds: turning the raw bytes into a lowercased str once per distinct value
# keeps that work out of the per-part path.  Bounded so that hostile mail
# with endless distinct values cannot grow them.
_CT_CACHE: dict[bytes, str] = {}
_CS_CACHE: dict[bytes, str | None] = {}
_CACHE_MAX = 4096


def _content_type(raw: bytes, t: int, tl: int, s: int, sl: int) -> str:
    if s == t + tl + 1:  # "type/subtype" written contiguously, the usual case
        key = raw[t : s + sl]
        ct = _CT_CACHE.get(key)
        if ct is None:
            ct = key.decode("latin-1").lower()
            if len(_CT_CACHE) < _CACHE_MAX:
                _CT_CACHE[key] = ct
        return ct
    return (raw[t : t + tl] + b"/" + raw[s : s + sl]).decode("latin-1").lower()


def _charset(key: bytes) -> str | None:
    cs = _CS_CACHE.get(key, _UNSET)
    if cs is _UNSET:
        cs = key.decode("latin-1").strip().lower() or None
        if len(_CS_CACHE) < _CACHE_MAX:
            _CS_CACHE[key] = cs
    return cs  # type: ignore[return-value]


# The objects made per message and per part are msgspec Structs: one C call
# sets all their fields (a class with __slots__ took __new__ plus a store per
# slot, about 140 instead of 80 ns for a part), and gc=False keeps them out of
# the cycle collector, as they never form a cycle: parts refer to the
# message's _Budget, never to the message or another part.
class _Budget(msgspec.Struct, eq=False, gc=False):
    """What the parts of one message share: the raw bytes, mw_parse_table's
    output as one bytes copy (3 int64 words: flags, parts, header fields;
    then ``_NPF`` words per part, then ``_NHF`` per header field), the
    decoded bytes the message may still produce, the message's flags (so a
    limit hit in one part shows on the message) and the children lists once
    asked for.  It never refers to a Part, so parts and messages form no
    reference cycle and are freed by reference counting alone."""

    raw: bytes
    tab: bytes
    left: int
    flags: int
    kids: list[list[int]] | None = None


# One part record as ints: converted per part when the part is made, so
# containers nobody touches cost no int objects (a tolist() of every record
# was a quarter of parse()'s Python time on small mail).  Record i starts at
# byte _TAB_HEAD + i * _RECORD_SIZE of _Budget.tab.
_RECORD = struct.Struct(f"={len(PART_FIELDS)}q")
_RECORD_SIZE = _RECORD.size
_unpack_record = _RECORD.unpack_from
_TAB_HEAD = 3 * 8
# Where the low byte of the first record's kind lies in the table: a step
# slice from there gives the kinds of all parts as one bytes object, one byte
# each (kinds are 0-2), which is also the key of the message's shape.
_KIND_AT = _TAB_HEAD + 8 * PART_FIELDS.index("kind") + (7 if sys.byteorder == "big" else 0)


def _hot_format() -> str:
    """A struct format over one mw_part that reads only _HOT_FIELDS and skips
    the rest as pad bytes (a skipped field costs no int object)."""
    fmt, pad = "=", 0
    for name in PART_FIELDS:
        if name in _HOT_FIELDS:
            fmt += f"{pad}xq" if pad else "q"
            pad = 0
        else:
            pad += 8
    return fmt + (f"{pad}x" if pad else "")


# What a walk reads of nearly every part it makes (offsets of the body, kind,
# encoding, flags, the filename and charset spans, the type code): unpacking
# these 11 fields instead of all 26 halves the cost of making a part (about
# 110 instead of 220 ns); the other fields come from the full record, unpacked
# when a part first needs one (headers, parent, depth, header offsets).
_HOT_FIELDS = (
    "body_start",
    "body_end",
    "flags",
    "kind",
    "cte",
    # filename_off, filename_len, charset_off, charset_len, param_flags, type_code
    *PART_FIELDS[PART_FIELDS.index("filename_off") :],
)
_HOT = struct.Struct(_hot_format())
_unpack_hot = _HOT.unpack_from
# Indexes into the hot tuple.
# The hot tuple holds them in PART_FIELDS order; Part reads it by literal
# index (a constant load, not a global one), in this layout:
#   0 body_start  1 body_end  2 flags  3 kind  4 cte  5 filename_off
#   6 filename_len  7 charset_off  8 charset_len  9 param_flags  10 type_code
assert tuple(n for n in PART_FIELDS if n in _HOT_FIELDS) == _HOT_FIELDS


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _unfold(raw: bytes) -> str:
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\r", b"").replace(b"\n", b"")
    return _text(raw.strip(b" \t"))


class Part(msgspec.Struct, eq=False, gc=False):
    """One MIME entity: offsets into the raw message plus lazy header views.

    Attributes:
        index: position of the part in :attr:`ParsedMessage.parts`.
        content_type: lowercased ``type/subtype`` (the RFC 2045 default when absent).
        filename: Content-Disposition filename, else Content-Type name (RFC 2231 joined,
            RFC 2047 encoded words decoded), or None.
        charset: lowercased Content-Type charset parameter, or None.
    """

    # A part is made only when first touched (ParsedMessage.leaves(), .parts,
    # .root; see _make_parts()): it stores the hot fields of its record (_h,
    # see _HOT_FIELDS), its content type, filename and charset, which every
    # walk reads.  Kind, offsets, flags and children are properties over the
    # record (the full one, _full, unpacked on first need), and the
    # header-derived caches are None until first use.  The constructor is
    # internal: parts come from parse().
    _raw: bytes
    _h: tuple[int, ...]
    _budget: _Budget
    index: int
    content_type: str
    filename: str | None
    charset: str | None
    _full: tuple[int, ...] | None
    _decoded: bytes | None = None
    _headers: list[tuple[str, str]] | None = None
    _index: dict[str, list[str]] | None = None
    _params: dict[str, str] | None = None
    _transfer_encoding: str | None = None
    _text: str | None = None
    _visible: str | None = None
    _text_flags: TextFlag | None = None
    _detected_type: str | None = None
    _urls: tuple[Url, ...] | None = None
    _decoded_headers: dict[str, str | None] | None = None

    @property
    def flags(self) -> MalformationFlag:
        """What was wrong with this part (DECODED_LIMIT once decoded() was cut)."""
        return _flag(self._h[2])

    @property
    def is_multipart(self) -> bool:
        """The body was split on its boundary into children."""
        return self._h[3] == _KIND_MULTIPART

    @property
    def is_message(self) -> bool:
        """The body was parsed as one nested message (the only child)."""
        return self._h[3] == _KIND_MESSAGE

    @property
    def children(self) -> list[int]:
        """Indexes of the direct children, in document order."""
        m = self._budget
        kids = m.kids
        if kids is None:
            kids = m.kids = _children(m)
        return kids[self.index]

    def _record(self) -> tuple[int, ...]:
        # Every field of the record, for the fields a walk rarely reads.
        rec = self._full
        if rec is None:
            rec = self._full = _unpack_record(
                self._budget.tab, _TAB_HEAD + self.index * _RECORD_SIZE
            )
        return rec

    @property
    def parent(self) -> int:
        """Index of the enclosing part, -1 for the root."""
        return self._record()[0]

    @property
    def depth(self) -> int:
        return self._record()[1]

    @property
    def header_start(self) -> int:
        return self._record()[2]

    @property
    def header_end(self) -> int:
        """Start of the blank line that ends the header block."""
        return self._record()[3]

    @property
    def body_start(self) -> int:
        return self._h[0]

    @property
    def body_end(self) -> int:
        return self._h[1]

    def __repr__(self) -> str:
        return (
            f"<Part {self.index} {self.content_type} parent={self.parent} "
            f"body=[{self.body_start}:{self.body_end}] flags={self.flags!r}>"
        )

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name as written, unfolded value), duplicates kept in order."""
        out = self._headers
        if out is None:
            m = self._budget
            raw, h = self._raw, memoryview(m.tab).cast("q")
            out = []
            rec = self._record()
            base = 3 + h[1] * _NPF + rec[6] * _NHF
            for i in range(base, base + rec[7] * _NHF, _NHF):
                no, nl, vo, vl = h[i], h[i + 1], h[i + 2], h[i + 3]
                out.append((_text(raw[no : no + nl]), _unfold(raw[vo : vo + vl])))
            self._headers = out
        return out

    def _values(self, name: str, first: bool) -> list[str]:
        # Compares raw name bytes so a lookup decodes only the matching values,
        # not the whole header block.
        headers = self._headers
        if headers is not None:
            # Indexed once: a scan over every field per lookup made a caller that looks up
            # each field name (antispam's rule targets) quadratic, 21 s for 7,250 fields.
            index = self._index
            if index is None:
                index = {}
                for n, v in headers:
                    index.setdefault(n.lower(), []).append(v)
                self._index = index
            vals = index.get(name.lower(), [])
            return vals[:1] if first else list(vals)
        m = self._budget
        raw, h = self._raw, memoryview(m.tab).cast("q")
        bkey = name.lower().encode("utf-8", "surrogateescape")
        klen = len(bkey)
        out: list[str] = []
        rec = self._record()
        base = 3 + h[1] * _NPF + rec[6] * _NHF
        for i in range(base, base + rec[7] * _NHF, _NHF):
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
        params = self._params
        if params is None:
            ct = self.header("content-type")
            params = self._params = parse_params(ct)[1] if ct is not None else {}
        return params

    @property
    def transfer_encoding(self) -> str:
        """Lowercased Content-Transfer-Encoding token, "7bit" when absent."""
        token = self._transfer_encoding
        if token is None:
            cte = self.header("content-transfer-encoding")
            token = cte.split(";", 1)[0].strip().lower() if cte is not None else ""
            token = self._transfer_encoding = token or "7bit"
        return token

    def _parsed_disposition(self) -> tuple[str | None, str | None]:
        # The slow path for values the C side marked complex; it is also the
        # definition the C spans must agree with (tested on the corpus).
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
        return disposition, filename

    @property
    def disposition(self) -> str | None:
        """Lowercased Content-Disposition type ("attachment", "inline", ...)."""
        if self._h[9] & _CD_COMPLEX:
            return self._parsed_disposition()[0]
        rec = self._record()
        o = rec[18]
        if o < 0 or not rec[19]:
            return None
        return self._raw[o : o + rec[19]].decode("latin-1").lower()

    def _set_complex_params(self) -> None:
        # filename and charset of a part whose param_flags say that the C spans
        # do not give them (RFC 2231 forms, escapes, 8-bit bytes).
        h = self._h
        pf, o = h[9], h[5]
        self.filename = (
            self._parsed_disposition()[1]
            if pf & _CD_COMPLEX or o < 0
            else _span_filename(self._raw, o, h[6])
        )
        if pf & _CT_COMPLEX:
            cs = self.params.get("charset")
            self.charset = (cs.strip().lower() or None) if cs is not None else None
        else:
            o = h[7]
            self.charset = None if o < 0 else _charset(self._raw[o : o + h[8]])

    @property
    def body_raw(self) -> memoryview:
        """Zero-copy view of the undecoded body."""
        h = self._h
        return memoryview(self._raw)[h[0] : h[1]]

    def decoded(self) -> bytes:
        """Transfer-decoded body (base64 / quoted-printable, identity otherwise),
        computed once and cached; cut at the message's decoded-bytes limit."""
        out = self._decoded
        if out is not None:
            return out
        budget = self._budget
        left = budget.left
        h = self._h
        bs, be, cte = h[0], h[1], h[4]
        if cte == _CTE_BASE64 or cte == _CTE_QP:
            room = be - bs + 3  # either decoder's most output (see _decode)
            try:
                s = scratch_local.s
            except AttributeError:  # the thread's first decode
                s = scratch(room)
            if s.size < room:
                s = scratch(room)
            # The bytes go to the uint8_t * as a pointer to their buffer, the
            # offsets beside them: no cdata is made per part.  An empty span
            # gives 0 bytes.
            out = _unpack(s.chars, _decode_span(self._raw, bs, be, cte == _CTE_BASE64, s.buf))
        else:
            # One byte past the budget is enough to know it was passed.
            out = self._raw[bs : be if be - bs <= left else bs + left + 1]
        if len(out) > left:
            out = out[:left]
            self._h = (bs, be, h[2] | _DECODED_LIMIT, *h[3:])  # records are tuples
            budget.flags |= _DECODED_LIMIT
        budget.left = left - len(out)
        self._decoded = out
        return out

    @property
    def is_leaf(self) -> bool:
        kind = self._h[3]
        return kind != _KIND_MULTIPART and kind != _KIND_MESSAGE

    def decoded_header(self, name: str) -> str | None:
        """First value of the named field with RFC 2047 encoded words decoded, or None;
        decoded once per name."""
        # The Subject is read decoded by antispam's body text and rule targets, the URL
        # walk, the decision and the event log: 10-15 us a decode of an encoded one.
        cache = self._decoded_headers
        if cache is None:
            cache = self._decoded_headers = {}
        key = name.lower()
        try:
            return cache[key]
        except KeyError:
            value = self.header(name)
            decoded = cache[key] = decode_header(value) if value is not None else None
            return decoded

    def text(self) -> str:
        """The decoded body as text, computed once and cached: transfer-decoded, then
        converted from the declared charset (superset codecs as mail clients use, UTF-8 or
        windows-1252 when undeclared or unknown, invalid bytes replaced; see
        :attr:`text_flags`). For ``text/html`` this is the HTML source; see
        :meth:`visible_text`. Like :meth:`decoded`, a container gives its body unparsed."""
        text = self._text
        if text is None:  # first call
            html = self.content_type == "text/html"
            text, self._text_flags = decode_text(self.decoded(), self.charset, html=html)
            self._text = text
        return text

    @property
    def text_flags(self) -> TextFlag:
        """What charset conversion in :meth:`text` ran into (unknown charset, replaced bytes)."""
        self.text()
        return self._text_flags  # type: ignore[return-value]  # set by text()

    def visible_text(self) -> str:
        """What a reader sees: the text of HTML parts (see ``html_to_text``), else
        :meth:`text`; computed once and cached."""
        visible = self._visible
        if visible is None:  # first call; several detectors read it (cached like text())
            visible = self._visible = (
                html_to_text(self.text()) if self.content_type == "text/html" else self.text()
            )
        return visible

    def urls(self) -> list[Url]:
        """URLs in this part's text (``text/*`` leaves only; HTML links included); extracted
        once, each call a new list (a caller may change its list, not the next caller's)."""
        urls = self._urls
        if urls is None:  # first call; antispam and reputation both read them
            if not self.is_leaf or not self.content_type.startswith("text/"):
                urls = ()
            else:
                urls = tuple(extract_urls(self.text(), html=self.content_type == "text/html"))
            self._urls = urls
        return list(urls)

    @property
    def detected_type(self) -> str:
        """Type of the decoded body from its magic bytes (``pdf``, ``docx``, ``pe``, ...,
        ``unknown``), never from the headers; computed once."""
        kind = self._detected_type
        if kind is None:  # first call
            kind = self._detected_type = detect_type(self.decoded()) if self.is_leaf else "unknown"
        return kind

    def uuencoded(self) -> list[UUFile]:
        """Files uuencoded inside this part's body (text leaves only)."""
        if not self.is_leaf or not self.content_type.startswith("text/"):
            return []
        return find_uuencoded(self.decoded())


def _children(m: _Budget) -> list[list[int]]:
    words = memoryview(m.tab).cast("q")
    n = words[1]
    kids: list[list[int]] = [[] for _ in range(n)]
    # The parent field of records 1 to n-1 (the root's is -1).
    parents = words[3 + _NPF : 3 + n * _NPF : _NPF].tolist()
    for i, parent in enumerate(parents, 1):
        kids[parent].append(i)
    return kids


def _make_parts(msg: ParsedMessage, indexes: Iterable[int]) -> list[Part]:
    """The parts of msg at indexes (made now where not made yet), in that order.

    One call makes all the parts a caller asked for: a Python call per part
    cost about a fifth of making it."""
    m = msg._budget
    raw, tab, cache = m.raw, m.tab, msg._cache
    out = []
    for i in indexes:
        p = cache[i]
        if p is None:
            at = _TAB_HEAD + i * _RECORD_SIZE
            h = _unpack_hot(tab, at)
            code = h[10]
            if code:
                ct = _TYPE_NAMES[code]
                rec = None
            else:
                rec = _unpack_record(tab, at)
                ct = _written_type(raw, rec)
            # filename and charset are read by every walk, so they are fields
            # set here (a property call cost more than reading the spans);
            # parts with complex parameters (11 of 655 leaves in the corpus's
            # small mail) take the Python parser.
            if h[9]:
                p = cache[i] = Part(raw, h, m, i, ct, None, None, rec)
                p._set_complex_params()
            else:
                o = h[7]
                if o < 0:
                    cs = None
                else:
                    key = raw[o : o + h[8]]
                    # None is a cached value (a blank charset), hence _UNSET.
                    cs = _CS_CACHE.get(key, _UNSET)
                    if cs is _UNSET:
                        cs = _charset(key)
                o = h[5]
                fn = None if o < 0 else _span_filename(raw, o, h[6])
                p = cache[i] = Part(raw, h, m, i, ct, fn, cs, rec)  # type: ignore[arg-type]
        out.append(p)
    return out


# Leaf indexes by the kinds of a message's parts, one byte each: mail comes
# in few shapes (one leaf; multipart with two leaves; ...), and a dict hit
# costs less than finding the leaves in the kinds.  Bounded like the caches
# above, as hostile mail can have endless shapes.
_LEAF_INDEXES: dict[bytes, tuple[int, ...]] = {}
_ROOT: tuple[int, ...] = (0,)


def _leaf_indexes(kinds: bytes) -> tuple[int, ...]:
    where = tuple(i for i, kind in enumerate(kinds) if kind == _KIND_LEAF)
    if len(_LEAF_INDEXES) < _CACHE_MAX:
        _LEAF_INDEXES[kinds] = where
    return where


def _span_filename(raw: bytes, o: int, n: int) -> str:
    # Spans are only set on 7-bit values, so Latin-1 is the same as the
    # UTF-8-else-Latin-1 reading of the header.
    name = raw[o : o + n].decode("latin-1")
    # Outlook and others put RFC 2047 words in (RFC 2231-less) filename parameters.
    return decode_header(name) if "=?" in name else name


def _written_type(raw: bytes, rec: tuple[int, ...]) -> str:
    # The content type of a part whose type is not one of _TYPE_NAMES.
    tl = rec[12]
    if tl and rec[14]:
        t, s, sl = rec[11], rec[13], rec[14]
        # Inlined cache hit of _content_type(): "type/subtype" written
        # contiguously, seen before.
        ct = _CT_CACHE.get(raw[t : s + sl]) if s == t + tl + 1 else None
        return ct if ct is not None else _content_type(raw, t, tl, s, sl)
    if rec[17] == _DEFAULT_RFC822:
        return "message/rfc822"
    return "text/plain"


class ParsedMessage(msgspec.Struct, eq=False):
    """A parsed message: the raw bytes and its parts in document order.

    The C parser's table holds every part; a :class:`Part` object is made the
    first time that part is reached (``parts``, ``root``, ``leaves()``), and
    the same object is returned from then on.
    """

    # The constructor is internal: messages come from parse().
    raw: bytes
    _budget: _Budget
    _cache: list[Part | None]
    _leaves: list[Part] | None = None
    _urls: tuple[Url, ...] | None = None

    @property
    def parts(self) -> list[Part]:
        """Every part in document order, the root first."""
        cache = self._cache
        if None in cache:
            _make_parts(self, range(len(cache)))
        return cache  # type: ignore[return-value]  # no None left

    @property
    def flags(self) -> MalformationFlag:
        """OR of every part's flags plus message-level ones (mixed line endings,
        NUL bytes, and DECODED_LIMIT once a decode hit the limit)."""
        return _flag(self._budget.flags)

    def __repr__(self) -> str:
        return f"<ParsedMessage {len(self.raw)} bytes, {len(self._cache)} parts, {self.flags!r}>"

    @property
    def root(self) -> Part:
        return self._cache[0] or _make_parts(self, _ROOT)[0]

    def leaves(self) -> Iterator[Part]:
        """The parts that are neither multipart nor a nested message, in document order."""
        out = self._leaves
        if out is None:
            # Containers are skipped on their kind in the table, never made;
            # the list is kept, as every detector of the gateway walks it.
            n = len(self._cache)
            tab = self._budget.tab
            if n == 1:  # 4 in 10 small messages: the kind is one byte of the table
                where = _ROOT if tab[_KIND_AT] == _KIND_LEAF else ()
            else:
                shape = tab[_KIND_AT : _TAB_HEAD + n * _RECORD_SIZE : _RECORD_SIZE]
                where = _LEAF_INDEXES.get(shape) or _leaf_indexes(shape)
            out = self._leaves = _make_parts(self, where)
        return iter(out)

    def attachments(self) -> Iterator[Part]:
        return (p for p in self.leaves() if p.disposition == "attachment" or p.filename is not None)

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
        then the Subject; found once, each call a new list (as :meth:`Part.urls`)."""
        urls = self._urls
        if urls is None:
            seen: dict[str, Url] = {}
            for p in self.leaves():
                for u in p.urls():
                    seen.setdefault(u.url, u)
            subject = self.subject
            if subject:
                for u in extract_urls(subject):
                    seen.setdefault(u.url, u)
            urls = self._urls = tuple(seen.values())
        return list(urls)

    def uuencoded(self) -> list[tuple[Part, UUFile]]:
        """uuencoded files in text leaves, with the part each was found in."""
        return [(p, f) for p in self.leaves() for f in p.uuencoded()]

    @property
    def message_id(self) -> str | None:
        return self.root.header("message-id")


# Per-thread table the parser writes into (the C call runs without the GIL):
# 16k words hold about 600 parts with their headers; bigger structures get a
# one-off array.
_TABLE_CAP = 16384
_parse_table = lib.mw_parse_table
_NULL = ffi.NULL
_tables = threading.local()


class _Table:
    """A thread's scratch table and an int64 view of it, made once."""

    __slots__ = ("buf", "chars", "words")

    def __init__(self, words: int) -> None:
        self.buf = ffi.new("int64_t[]", words)
        self.chars = ffi.cast("char *", self.buf)
        self.words = memoryview(ffi.buffer(self.buf)).cast("q")


def _table_scratch() -> _Table:
    try:
        return _tables.t  # type: ignore[no-any-return]
    except AttributeError:
        table = _tables.t = _Table(_TABLE_CAP)
        return table


def _limit(value: int, hi: int, name: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"ParseLimits.{name} must be a non-negative int, got {value!r}")
    return min(value, hi)


def parse(raw: bytes, limits: ParseLimits | None = None) -> ParsedMessage:
    """Parse a message.  Malformed mail never raises: see ``Part.flags``.

    Raises TypeError for non-bytes input and NativeMemoryError when the core runs
    out of memory.  The GIL is released while the C parser runs.
    """
    # The fixed cost of this wrapper is paid by every message and is a large
    # share of the total on small mail, so: no limits struct when the defaults
    # apply, both tables kept as one bytes copy that parts read only when made
    # or asked, and no Part made here.
    if not isinstance(raw, bytes):
        raise TypeError(f"parse() needs bytes, got {type(raw).__name__}")
    if limits is None:
        lim = _NULL
        max_decoded = _DEFAULT_MAX_DECODED
    else:
        lim = ffi.new("mw_limits *")
        lim.max_depth = _limit(limits.max_depth, _U32_MAX, "max_depth")
        lim.max_parts = _limit(limits.max_parts, _U32_MAX, "max_parts")
        lim.max_header_bytes = _limit(limits.max_header_bytes, _U64_MAX, "max_header_bytes")
        max_decoded = _limit(limits.max_decoded_bytes, _U64_MAX, "max_decoded_bytes")
    try:
        table = _tables.t
    except AttributeError:
        table = _table_scratch()
    # bytes go to a uint8_t * argument as a pointer to their buffer (no copy,
    # no from_buffer object).
    need = _parse_table(raw, len(raw), lim, table.buf, _TABLE_CAP)
    if need > _TABLE_CAP:  # a structure too big for the scratch table: rare, parse again
        table = _Table(need)
        need = _parse_table(raw, len(raw), lim, table.buf, need)
    if need < 0:  # mw_parse_table returns a failure as its negated status
        check(-need, "mw_parse_table")
    words = table.words
    # The tables copied in one piece (the scratch is reused); records become
    # ints only for the parts that get made, header fields only when read.
    m = _Budget(raw, _unpack(table.chars, need << 3), max_decoded, words[0])
    return ParsedMessage(raw, m, [None] * words[1])
