"""Encodings that hide a file inside text or a small header: BinHex 4.0, SZDD (MS-DOS
``COMPRESS.EXE``), uuencode and yEnc in any part whatever its declared transfer encoding, and
``data:`` URIs and inline base64 in HTML.

Python 3.11 dropped ``binhex`` (and ``binascii``'s hqx functions) and no maintained library
reads BinHex or SZDD, so both are decoded here; they are small and bounded by the budget.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import urllib.parse
from collections.abc import Callable

from ..errors import Corrupt
from . import Budget, Members

# -- BinHex 4.0 ----------------------------------------------------------------------------------

_HQX = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_HQX_TO_B64 = bytes.maketrans(
    _HQX, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)


def _binhex(budget: Budget, data: bytes) -> Members:
    start = data.find(b"(This file must be converted")
    colon = data.find(b":", data.find(b"\n", start) if start >= 0 else 0)
    if colon < 0:
        raise Corrupt("binhex: no ':' starts the encoded data")
    end = data.find(b":", colon + 1)
    text = data[colon + 1 : end if end >= 0 else len(data)]
    text = text.translate(None, b"\r\n\t ")
    bad = text.translate(None, _HQX)
    if bad:
        raise Corrupt(f"binhex: byte {bad[0]:#04x} is not in the BinHex alphabet")
    # 4 characters carry 3 bytes: map to base64's alphabet and let binascii do the work
    mapped = text.translate(_HQX_TO_B64)
    # a last group of 2 or 3 characters carries 1 or 2 bytes; 1 character carries none
    rest = len(mapped) % 4
    mapped = mapped[:-1] if rest == 1 else mapped + b"=" * (-rest % 4)
    try:
        packed = bytearray(binascii.a2b_base64(mapped))
    except binascii.Error as exc:
        raise Corrupt(f"binhex: {exc}") from None
    out = bytearray()
    i = 0
    room = budget._room()
    while i < len(packed):
        marker = packed.find(0x90, i)
        if marker < 0:
            out += packed[i:]
            break
        out += packed[i:marker]
        if marker + 1 >= len(packed):
            break
        count = packed[marker + 1]
        i = marker + 2
        if count == 0:
            out.append(0x90)
        elif out:
            out.extend(out[-1:] * (count - 1))
        if len(out) > room:
            budget._grow(len(out))
    budget._ratio(len(out), len(data))
    name_len = out[0] if out else 0
    head = 1 + name_len + 1 + 4 + 4 + 2
    if len(out) < head + 10:
        raise Corrupt("binhex: the header is cut off")
    name = out[1 : 1 + name_len].decode("latin-1")
    data_len, rsrc_len = struct.unpack_from(">II", out, head)
    fork = head + 8 + 2
    budget._member()
    budget._grow(data_len + rsrc_len)
    yield name or "data fork", bytes(out[fork : fork + data_len])
    if rsrc_len:
        rsrc = fork + data_len + 2
        yield f"{name} (resource fork)", bytes(out[rsrc : rsrc + rsrc_len])


# -- SZDD ----------------------------------------------------------------------------------------


def _szdd(budget: Budget, data: bytes) -> Members:
    if len(data) < 14:
        raise Corrupt("szdd: the header is cut off")
    (expected,) = struct.unpack_from("<I", data, 10)
    budget._member()
    # The 4 KiB window starts as spaces and slot (i - 16) mod 4096 holds output byte i: with
    # 4096 spaces before the output, a match is a slice of the output itself.
    out = bytearray(b" " * 4096)
    i = 14
    n = len(data)
    checked = 1 << 16
    while i < n:
        control = data[i]
        i += 1
        for bit in range(8):
            if i >= n:
                break
            if control & (1 << bit):
                out.append(data[i])
                i += 1
                continue
            if i + 1 >= n:
                raise Corrupt("szdd: a match is cut off")
            at = data[i] | ((data[i + 1] & 0xF0) << 4)
            length = (data[i + 1] & 0x0F) + 3
            i += 2
            m = len(out)
            src = m - ((((m - 16) - at) & 0xFFF) or 4096)
            if src + length <= m:
                out += out[src : src + length]
            else:  # the match overlaps what it writes
                for k in range(length):
                    out.append(out[src + k])
        if len(out) > checked:
            # every 64 KiB of output: the clock, the ratio and the room left
            checked = len(out) + (1 << 16)
            budget._check_clock()
            budget._ratio(len(out), n)
            if len(out) > budget._room():
                budget._grow(len(out))
    del out[:4096]
    budget._grow(len(out))
    if len(out) != expected:
        raise Corrupt(f"szdd: {len(out)} bytes decompressed, the header says {expected}")
    yield "(expanded)", bytes(out)


# -- uuencode and yEnc ---------------------------------------------------------------------------

_UU = re.compile(rb"^begin [0-7]{3,4} ([^\r\n]*)\r?\n(.*?)^end\s*$", re.MULTILINE | re.DOTALL)
_YENC = re.compile(rb"^=ybegin ([^\r\n]*)\r?\n(.*?)^=yend", re.MULTILINE | re.DOTALL)


def _uudecode(body: bytes) -> bytes:
    out = bytearray()
    for line in body.splitlines():
        if not line or line in (b"`", b" "):
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # some encoders pad short lines: decode what the length byte announces
            count = ((line[0] - 32) & 63) * 4 // 3 + 1
            try:
                out += binascii.a2b_uu(line[: count + 1])
            except binascii.Error:
                continue
    return bytes(out)


def _ydecode(body: bytes) -> bytes:
    out = bytearray()
    escape = False
    for line in body.splitlines():
        if line.startswith(b"=ypart "):
            continue
        for c in line:
            if escape:
                out.append((c - 64 - 42) & 0xFF)
                escape = False
            elif c == 0x3D:
                escape = True
            else:
                out.append((c - 42) & 0xFF)
    return bytes(out)


def _uuencoded(budget: Budget, data: bytes) -> Members:
    for match in _UU.finditer(data):
        budget._member()
        decoded = _uudecode(match.group(2))
        budget._grow(len(decoded))
        yield match.group(1).decode("latin-1").strip() or "uuencoded", decoded
    for match in _YENC.finditer(data):
        budget._member()
        decoded = _ydecode(match.group(2))
        budget._grow(len(decoded))
        name = re.search(rb"name=(.*)$", match.group(1))
        yield (name.group(1).decode("latin-1").strip() if name else "yenc"), decoded


# -- HTML: data: URIs and inline base64 ----------------------------------------------------------

_DATA_URI = re.compile(rb"data:([\w/+.-]*)((?:;[\w=.+-]+)*?)(;base64)?,([^\"'\s)>]*)", re.I)
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{128,}={0,2}")
# every base64 character to "A", every other byte to " ": a run of 128 is then one find()
_B64_CLASS = bytes(
    65 if chr(byte).isascii() and (chr(byte).isalnum() or chr(byte) in "+/") else 32
    for byte in range(256)
)


def _html(budget: Budget, data: bytes) -> Members:
    spans: list[tuple[int, int]] = []
    # a case-insensitive pattern is tried at every position: most HTML has no data: URI
    uris = _DATA_URI.finditer(data) if b"data:" in data.lower() else iter(())
    for index, match in enumerate(uris):
        payload = match.group(4)
        try:
            if match.group(3):
                decoded = base64.b64decode(payload + b"=" * (-len(payload) % 4))
            else:
                decoded = urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            continue
        spans.append(match.span(4))
        budget._member()
        budget._grow(len(decoded))
        yield f"data: URI {index} ({match.group(1).decode('latin-1') or 'text/plain'})", decoded
    # the regex is tried at every position of the text: only where a run exists
    runs = _BASE64_RUN.finditer(data) if b"A" * 128 in data.translate(_B64_CLASS) else iter(())
    for index, match in enumerate(runs):
        if any(start <= match.start() < end for start, end in spans):
            continue
        run = match.group(0)
        try:
            decoded = base64.b64decode(run[: len(run) // 4 * 4])
        except binascii.Error:
            continue
        budget._member()
        budget._grow(len(decoded))
        yield f"base64 {index}", decoded


READ: dict[str, Callable[[Budget, bytes], Members]] = {
    "binhex": _binhex,
    "szdd": _szdd,
    "uuencode": _uuencoded,
    "html": _html,
}


def read_encoding(budget: Budget, data: bytes, kind: str) -> Members:
    """The files ``data`` encodes, for ``kind`` in :data:`READ`."""
    return READ[kind](budget, data)
