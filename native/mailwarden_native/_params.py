"""Parameter parsing for structured MIME header values.

Handles ``type/subtype; name=token; name="quoted \\"string\\""`` and RFC 2231
extended parameters: ``name*=charset'lang'%XX...`` and continuations
``name*0=...; name*1*=...`` (joined in index order, percent-decoded where
marked with ``*``, then decoded with the declared charset).  Comments are not
interpreted.  Works on unfolded ``str`` values; cheap enough to run lazily
when a caller first asks for a part's parameters.
"""

from __future__ import annotations

import binascii
import codecs
import re

_EXT_NAME = re.compile(r"^([^*]+)\*(\d+)?(\*)?$")


def _split_params(value: str) -> list[str]:
    """Split on ';' outside double-quoted strings."""
    if '"' not in value:
        return value.split(";")
    # str.find hops instead of a loop per character: values with quoted
    # RFC 2047 filenames run to hundreds of characters.
    out: list[str] = []
    start = i = 0
    while True:
        semi = value.find(";", i)
        if semi < 0:
            break
        quote = value.find('"', i, semi)
        if quote < 0:
            out.append(value[start:semi])
            start = i = semi + 1
            continue
        close = _quote_end(value, quote + 1)
        if close < 0:  # unterminated: the rest is quoted
            break
        i = close + 1
    out.append(value[start:])
    return out


def _unquote(v: str) -> str:
    if len(v) >= 1 and v[0] == '"':
        body = v[1:]
        end = _quote_end(body, 0)
        body = body[:end] if end >= 0 else body
        return re.sub(r"\\(.)", r"\1", body) if "\\" in body else body
    return v


def _quote_end(s: str, i: int) -> int:
    """Index of the quote closing a quoted string whose body starts at i (a
    backslash escapes the next character), or -1."""
    while True:
        q = s.find('"', i)
        if q < 0:
            return -1
        b = s.find("\\", i, q)
        if b < 0:
            return q
        i = b + 2


def _decode_bytes(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            codecs.lookup(charset)
            return data.decode(charset, errors="replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Return the lowercased main value and the parameters (lowercased names,
    decoded values).  The first occurrence of a plain parameter wins; an RFC
    2231 form of the same name takes precedence over the plain one."""
    segments = _split_params(value)
    main = segments[0].strip().lower()
    plain: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[str, bool]]] = {}
    for seg in segments[1:]:
        name, eq, val = seg.partition("=")
        if not eq:
            continue
        name = name.strip().lower()
        val = val.strip()
        if not name:
            continue
        m = _EXT_NAME.match(name) if "*" in name else None
        if m is None:
            plain.setdefault(name, _unquote(val))
            continue
        base, idx, star = m.group(1), m.group(2), m.group(3)
        encoded = star is not None or idx is None
        pieces = extended.setdefault(base, {})
        pieces.setdefault(int(idx) if idx is not None else 0, (_unquote(val), encoded))
    if not extended:
        return main, plain
    params = dict(plain)
    for base, pieces in extended.items():
        charset: str | None = None
        buf = bytearray()
        for n, k in enumerate(sorted(pieces) if len(pieces) > 1 else pieces):
            text, encoded = pieces[k]
            if encoded:
                if n == 0 and text.count("'") >= 2:
                    cs, _lang, text = text.split("'", 2)
                    charset = cs.strip() or None
                buf += _percent_decode(text)
            else:
                buf += text.encode("utf-8", errors="surrogateescape")
        params[base] = _decode_bytes(bytes(buf), charset)
    return main, params


# %XX for every pair of hex digits, either case: what urllib.parse.unquote_to_bytes
# decodes.
_HEX_BYTE = {
    f"{a}{b}".encode(): bytes([int(f"{a}{b}", 16)])
    for a in "0123456789abcdefABCDEF"
    for b in "0123456789abcdefABCDEF"
}


def _percent_decode(text: str) -> bytes:
    """urllib.parse.unquote_to_bytes(text): %XX escapes decoded, any other % kept."""
    data = text.encode("utf-8")
    if b"%" not in data:
        return data
    if b"=" not in data and b"\r" not in data and b"\n" not in data:
        # Nothing but the escapes is special to quoted-printable here (no '=',
        # no line break), so %XX is =XX, decoded in C: a long RFC 2231 filename
        # took 20 us through a Python step per escape.  Each % that starts a
        # valid escape shortens the data by 2, any other by less, so the length
        # tells whether every one did; if not, the exact path below decides.
        out = binascii.a2b_qp(data.replace(b"%", b"="))
        if len(out) == len(data) - 2 * data.count(b"%"):
            return out
    first, *rest = data.split(b"%")
    hexbyte = _HEX_BYTE.get
    return first + b"".join((hexbyte(item[:2]) or b"%" + item[:2]) + item[2:] for item in rest)
