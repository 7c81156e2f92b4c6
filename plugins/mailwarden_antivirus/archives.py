"""Unpacking what a message carries, within limits, into the objects the engines scan.

Every decoded MIME leaf, every uuencoded file in a text body, and every member of the archives
among them (zip and the formats built on it, gzip, bzip2, xz, tar, 7z through py7zr, rar through
rarfile; nested to any depth the limits allow; messages inside archives are parsed and walked
too) is yielded as an :class:`Item`. What could not be looked into is recorded as a
:class:`Problem` with the antivirus status it stands for: ``encrypted``, ``corrupted``, or
``not_scanned`` naming the limit that stopped the walk (or ``format`` for a container with no
reader).

Everything here runs on untrusted input, so each decompression is bounded as it happens (never
by the sizes an archive declares): output is read in chunks against the remaining total size
and the member's compression ratio, and the clock and member count are checked between chunks.
Once a limit is hit the whole walk stops, because a bomb's purpose is to exhaust the scanner
and carrying on with the next member would help it.
"""

from __future__ import annotations

import binascii
import bz2
import functools
import importlib.util
import io
import json
import lzma
import re
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from mailwarden_sdk import ParsedMessage, Part, detect_type, parse

from . import readers
from .errors import Corrupt, Encrypted, LimitHit, Refused, Unsupported, describe
from .readings import alternative_readings

__all__ = [
    "ARCHIVE_TYPES",
    "ArchiveLimits",
    "Item",
    "Problem",
    "Unpacker",
]

#: zip containers under other names: their members are scanned like a zip's (macros live there).
ZIP_TYPES = frozenset({"zip", "docx", "xlsx", "pptx", "odt", "ods", "odp", "jar", "apk"})
COMPRESSED_TYPES = frozenset({"gzip", "bzip2", "xz"})
#: wrappers around one member: with a tar inside (tgz, tar.zst) they and the tar are one level.
_WRAPPERS = frozenset({*COMPRESSED_TYPES, "zstd"})
#: encodings of a file (not containers): what they decode to stays at their level.
_ENCODINGS = frozenset({"uuencode", "binhex", "szdd"})
#: zip compression methods by number, for the reason given when one cannot be read
ZIP_METHODS = {
    1: "Shrink",
    2: "Reduce",
    3: "Reduce",
    4: "Reduce",
    5: "Reduce",
    6: "Implode",
    9: "Deflate64",
    10: "PKWARE DCL Implode",
    18: "IBM TERSE",
    19: "IBM LZ77",
    20: "zstd (old id)",
    93: "zstd",
    94: "MP3",
    95: "xz",
    96: "JPEG",
    97: "WavPack",
    98: "PPMd",
    99: "AES encryption",
}
#: what :meth:`Unpacker.walk` opens (the detector unpacks these off the event loop); HTML is
#: left out: its data: URIs cost little and most mail carries HTML
ARCHIVE_TYPES = (
    ZIP_TYPES | COMPRESSED_TYPES | {"tar", "7z", "rar", "pe"} | (set(readers.READERS) - {"html"})
)
_CHUNK = 1 << 16
# Below this many decompressed bytes the ratio is not judged: a small text or a run of zeros
# compresses 100:1 without being a bomb, and at this size it costs nothing to scan.
RATIO_FLOOR = 1 << 20
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:[ \t]?", re.MULTILINE)


class ArchiveLimits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[antivirus.limits]``: how far one message is unpacked.

    ``max_depth`` counts nesting levels of archives and of messages inside archives;
    ``max_members`` the objects taken out of archives in the whole message; ``max_total_size``
    the bytes they decompress to together; ``max_ratio`` the decompressed to compressed size of
    one member (judged from 1 MiB of output on); ``max_seconds`` the time spent unpacking one
    message. The first limit hit stops the unpacking and gives the message the ``not_scanned``
    status with the limit's name.
    """

    max_depth: int = 5
    max_members: int = 1000
    max_total_size: int = 128 * 1024 * 1024
    max_ratio: float = 250.0
    max_seconds: float = 15.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_depth <= 64:
            raise ValueError("max_depth must be between 0 and 64")
        if self.max_members < 1 or self.max_total_size < 1:
            raise ValueError("max_members and max_total_size must be at least 1")
        if self.max_ratio < 1 or self.max_seconds <= 0:
            raise ValueError("max_ratio must be at least 1 and max_seconds above 0")


@dataclass(frozen=True, slots=True)
class Item:
    """One object to scan: ``label`` is its path (``invoice.zip/a/b.exe``), ``part`` the index
    of the MIME part it came from (``None``: the message as a whole), ``depth`` the nesting
    level inside archives."""

    label: str
    data: bytes | memoryview
    part: int | None
    depth: int = 0


@dataclass(frozen=True, slots=True)
class Problem:
    """An object that could not be looked into: ``status`` is an antivirus status value."""

    status: str
    code: str
    label: str
    part: int | None
    details: dict[str, str] = field(default_factory=dict)


class Unpacker:
    """One message's walk: counts members, bytes and time against ``limits`` across archives."""

    def __init__(
        self, limits: ArchiveLimits, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.max_seconds
        self.members = 0
        self.total = 0
        self.problems: list[Problem] = []
        self.stopped = False

    # -- entry points ------------------------------------------------------------------------

    def message(self, message: ParsedMessage, *, whole: bool) -> Iterator[Item]:
        """Every leaf of ``message`` decoded, its uuencoded files, their archives' members and,
        when ``whole``, the raw message (last: it repeats what the parts hold)."""
        yield from self._message(message, "", None, 0)
        # A message the parser flagged as read differently by other readers (two
        # Content-Types, two boundaries, a comment in a header name...) is walked once per
        # reading: what is found there belongs to the message as a whole.
        for name, raw in alternative_readings(message):
            if self.stopped:
                break
            try:
                other = parse(raw)
            except Exception as exc:  # a reading the parser rejects: the others still count
                self._broken("mime", exc, f"({name})", None)
                continue
            yield from self._message(other, f"({name})/", None, 0)
        if whole:
            yield Item("message", message.raw, None)

    def _message(
        self, message: ParsedMessage, prefix: str, part: int | None, depth: int
    ) -> Iterator[Item]:
        # Inside an archive the part indexes of the inner message mean nothing to the outer
        # one: everything found there belongs to the outer part holding the archive.
        for leaf in message.leaves():
            index = leaf.index if part is None else part
            label = f"{prefix}part {leaf.index}"
            try:
                label = f"{prefix}{leaf.filename or f'part {leaf.index}'}"
                yield from self._leaf(leaf, label, index, depth)
            except Exception as exc:  # this part is broken, the others are not
                self._broken("mime", exc, label, index)
            if self.stopped:
                return
        yield from self._beyond_parser_limits(message, prefix, part, depth)

    def _leaf(self, leaf: Part, label: str, index: int, depth: int) -> Iterator[Item]:
        data = leaf.decoded()
        if leaf.content_type.startswith("message/"):
            # a message the parser left whole (base64-encoded message/rfc822 is not
            # allowed by RFC 2046 and so not descended into, but mail clients open it)
            yield Item(label, data, index, depth)
            if self._deeper(label, index, depth):
                yield from self._message(parse(bytes(data)), f"{label}/", index, depth + 1)
        else:
            # uuencode and yEnc (in any part, whatever its declared encoding), an encrypted
            # OLE2 document and every other format are found by the readers' sniffing; the
            # type of the decoded body the part knows already (the parser keeps it).
            yield from self.walk(data, label, index, depth, kind=leaf.detected_type)

    def walk(
        self,
        data: bytes | memoryview,
        label: str,
        part: int | None,
        depth: int = 0,
        *,
        kind: str | None = None,
    ) -> Iterator[Item]:
        """``data`` itself, then (when it is an archive or a message) what it holds;
        ``kind``: what :func:`detect_type` says of ``data``, when known."""
        if self.stopped:
            return
        yield Item(label, data, part, depth)
        known, kind = kind, kind or "unknown"
        try:
            if known is None and len(data):
                kind = detect_type(data)
            yield from self._inside(data, kind, label, part, depth)
        except Exception as exc:  # any reader failure: this object only
            self._broken(kind, exc, label, part)

    def _inside(
        self, data: bytes | memoryview, kind: str, label: str, part: int | None, depth: int
    ) -> Iterator[Item]:
        inner: Iterator[tuple[str, bytes]] | None = None
        if kind in ZIP_TYPES:
            inner = self._zip(data, label, part)
        elif kind in COMPRESSED_TYPES:
            inner = self._compressed(kind, data)
        elif kind == "tar":
            inner = self._tar(data)
        elif kind == "7z":
            inner = self._sevenzip(data)
        elif kind == "rar":
            inner = self._rar(data)
        else:
            kind = readers.sniff(data, kind)
            if kind == "mbox" or _looks_like_message(data, label):
                if self._deeper(label, part, depth):
                    yield from self._message(parse(bytes(data)), f"{label}/", part, depth + 1)
                return
            reader = readers.READERS.get(kind)
            if reader is not None:
                inner = _lazy(reader, self, bytes(data), kind)
        if inner is None:
            return
        if not self._deeper(label, part, depth):
            return
        try:
            for name, member in inner:
                # Depth counts containers, not layers: a compression wrapper around a tar is
                # one level with it, and an encoding is no container at all.
                same = kind in _ENCODINGS or (kind in _WRAPPERS and detect_type(member) == "tar")
                yield from self.walk(member, f"{label}/{name}", part, depth + (0 if same else 1))
                if self.stopped:
                    return
        except Refused as hit:
            self._problem(
                "not_scanned", "AV_NOT_SCANNED", label, part, limit=hit.limit, reason=str(hit)
            )
        except LimitHit as hit:
            self._stop(hit, label, part)
        except Encrypted as exc:
            self._problem("encrypted", "AV_ENCRYPTED", label, part, kind=kind, member=str(exc))
        except Corrupt as exc:
            named = {"exception": exc.exception} if exc.exception else {}
            self._problem(
                "corrupted", "AV_CORRUPTED", label, part, kind=kind, error=str(exc), **named
            )
        except Unsupported as exc:
            self._unsupported(kind, str(exc), label, part)
        # Readers raise far more than they document on hostile bytes (LZMAError, CrcError,
        # IndexError, AssertionError, ...): any of them means this archive could not be read.
        except Exception as exc:
            self._broken(kind, exc, label, part)

    def _beyond_parser_limits(
        self, message: ParsedMessage, prefix: str, part: int | None, depth: int
    ) -> Iterator[Item]:
        """What the MIME parser left unparsed at one of its limits, scanned anyway.

        Past its depth, part-count or header-size limit the parser leaves the rest of a part
        as unparsed bytes, and an attachment there is never decoded. That rest is scanned as
        it is and every base64 block in it decoded and walked (within the size and member
        limits); the part is still reported ``not_scanned`` naming the limit, because a
        structure nobody parsed may hold what these two readings miss.
        """
        flags = message.flags
        kinds = type(flags)  # the parser's MalformationFlag, reached through the SDK's parse()
        # Every message comes here: one integer test (enum flag operations cost microseconds).
        if not int(flags) & _limits_mask(kinds):
            return
        for name, limit, what in _PARSER_LIMITS:
            if not flags & kinds[name]:
                continue
            for cut in message.parts:
                if not cut.flags & kinds[name]:
                    continue
                index = cut.index if part is None else part
                label = f"{prefix}part {cut.index}"
                self._problem(
                    "not_scanned",
                    "AV_NOT_SCANNED",
                    label,
                    index,
                    limit=limit,
                    reason=f"{what}; the rest was scanned as raw bytes and base64 blocks only",
                )
                start, end = _unparsed(message, cut)
                yield from self._remainder(message.raw[start:end], label, index, depth)
                if self.stopped:
                    return
        if flags & kinds.DECODED_LIMIT:
            self._problem(
                "not_scanned",
                "AV_NOT_SCANNED",
                f"{prefix}message",
                part,
                limit="mime_max_decoded_bytes",
                reason="the parts decode to more than the MIME parser's decoded-bytes limit",
            )

    def _remainder(self, data: bytes, label: str, part: int | None, depth: int) -> Iterator[Item]:
        where = f"{label}/(unparsed)"
        yield Item(where, data, part, depth)
        try:
            for number, block in enumerate(_base64_blocks(data), 1):
                self._member()
                decoded = _decode_base64(block)
                self._grow(len(decoded))
                yield from self.walk(decoded, f"{where}/base64 block {number}", part, depth)
                if self.stopped:
                    return
        except LimitHit as hit:
            self._stop(hit, where, part)

    # -- bookkeeping -------------------------------------------------------------------------

    def _problem(
        self, status: str, code: str, label: str, part: int | None, **details: str
    ) -> None:
        self.problems.append(Problem(status, code, label, part, {"object": label, **details}))

    def _unsupported(
        self, kind: str, reason: str, label: str, part: int | None, **details: str
    ) -> None:
        self._problem(
            "not_scanned",
            "AV_FORMAT_NOT_SUPPORTED",
            label,
            part,
            limit="format",
            format=kind,
            reason=reason,
            **details,
        )

    def _broken(
        self, kind: str, exc: BaseException, label: str, part: int | None, **details: str
    ) -> None:
        """``label`` could not be read: ``corrupted``, naming the format and the exception."""
        self._problem(
            "corrupted",
            "AV_CORRUPTED",
            label,
            part,
            kind=kind,
            error=describe(kind, exc),
            exception=type(exc).__name__,
            **details,
        )

    def _stop(self, hit: LimitHit, label: str, part: int | None) -> None:
        self.stopped = True
        self._problem(
            "not_scanned", "AV_NOT_SCANNED", label, part, limit=hit.limit, reason=str(hit)
        )

    def _deeper(self, label: str, part: int | None, depth: int) -> bool:
        if depth < self.limits.max_depth:
            return True
        self._stop(
            LimitHit("max_depth", f"nested deeper than {self.limits.max_depth}"), label, part
        )
        return False

    def _check_clock(self) -> None:
        if self.clock() > self.deadline:
            raise LimitHit("max_seconds", f"unpacking took over {self.limits.max_seconds:g} s")

    def _member(self) -> None:
        self._check_clock()
        self.members += 1
        if self.members > self.limits.max_members:
            raise LimitHit("max_members", f"more than {self.limits.max_members} members")

    def _seconds_left(self) -> float:
        return self.deadline - self.clock()

    def _room(self) -> int:
        return self.limits.max_total_size - self.total

    def _grow(self, size: int) -> None:
        """Account ``size`` more decompressed bytes."""
        self.total += size
        if self.total > self.limits.max_total_size:
            raise LimitHit(
                "max_total_size", f"members decompress to over {self.limits.max_total_size} bytes"
            )

    def _ratio(self, out: int, packed: int) -> None:
        if out > RATIO_FLOOR and out > max(packed, 1) * self.limits.max_ratio:
            raise LimitHit(
                "max_ratio", f"a member decompresses over {self.limits.max_ratio:g} times"
            )

    def _drain(self, stream: IO[bytes], packed: int) -> bytes:
        """Read ``stream`` to its end in chunks, every limit checked after each chunk."""
        chunks: list[bytes] = []
        out = 0
        while True:
            self._check_clock()
            chunk = stream.read(min(_CHUNK, self._room() + 1))
            if not chunk:
                return b"".join(chunks)
            out += len(chunk)
            self._grow(len(chunk))
            self._ratio(out, packed)
            chunks.append(chunk)

    # -- formats -----------------------------------------------------------------------------

    def _zip(
        self, data: bytes | memoryview, label: str, part: int | None
    ) -> Iterator[tuple[str, bytes]]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
        except Exception as exc:  # NotImplementedError, IndexError, ... too
            # no central directory (a split archive's first volume, a cut download): the
            # members are read by their local headers, and the damage is still reported
            damage = Corrupt.of("zip", exc)
            if _local_header_fits(data):
                from .readers.libarchive_formats import read_zip_local_headers

                try:
                    yield from read_zip_local_headers(self, bytes(data))
                except Corrupt:
                    pass  # libarchive stops where the directory should be: the same damage
            raise damage from None
        with archive:
            for info in archive.infolist():
                # One member's damage (a corrupt LZMA stream beside a readable member) is
                # reported for that member and the others are still read.
                try:
                    if info.is_dir():
                        continue
                    self._member()
                    if info.flag_bits & 0x1:
                        where = f"{label}/{info.filename}"
                        self._problem("encrypted", "AV_ENCRYPTED", where, part, kind="zip")
                        continue
                    if info.compress_type == 9:
                        member = self._deflate64(bytes(data), info)
                    else:
                        with archive.open(info) as stream:
                            member = self._drain(stream, info.compress_size)
                except LimitHit:
                    raise
                except NotImplementedError:  # a compression method no reader here has
                    method = info.compress_type
                    reason = (
                        f"zip: compression method {method} ({ZIP_METHODS.get(method, 'unknown')})"
                    )
                    self._unsupported("zip", reason, label, part, member=info.filename)
                    continue
                except RuntimeError as exc:
                    if "password" not in str(exc) and "encrypted" not in str(exc):
                        self._broken("zip", exc, label, part, member=info.filename)
                        continue
                    raise Encrypted(f"{info.filename}: {exc}") from None
                except Exception as exc:
                    self._broken("zip", exc, label, part, member=info.filename)
                    continue
                yield info.filename, member

    def _deflate64(self, data: bytes, info: zipfile.ZipInfo) -> bytes:
        """A Deflate64 member (zipfile has no reader for method 9) through ``inflate64``."""
        try:
            import inflate64
        except ImportError:
            raise NotImplementedError from None
        at = info.header_offset
        if data[at : at + 4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local header")
        name_len, extra_len = (
            int.from_bytes(data[at + 26 : at + 28], "little"),
            int.from_bytes(data[at + 28 : at + 30], "little"),
        )
        start = at + 30 + name_len + extra_len
        packed = data[start : start + info.compress_size]
        inflater = inflate64.Inflater()
        chunks: list[bytes] = []
        out = 0
        for offset in range(0, max(len(packed), 1), _CHUNK // 16):
            self._check_clock()
            chunk = inflater.inflate(packed[offset : offset + _CHUNK // 16])
            out += len(chunk)
            self._grow(len(chunk))
            self._ratio(out, len(packed))
            chunks.append(chunk)
        member = b"".join(chunks)
        if zlib.crc32(member) != info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
        return member

    def _compressed(self, kind: str, data: bytes | memoryview) -> Iterator[tuple[str, bytes]]:
        self._member()
        decompressor: Any
        if kind == "gzip":
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif kind == "bzip2":
            decompressor = bz2.BZ2Decompressor()
        else:
            decompressor = lzma.LZMADecompressor()
        chunks: list[bytes] = []
        pending = bytes(data)
        out = 0
        errors = (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError)
        try:
            # Output is taken in bounded steps (max_length), so a bomb never inflates at once.
            while not decompressor.eof:
                self._check_clock()
                chunk = decompressor.decompress(pending, _CHUNK)
                if kind == "gzip":
                    pending = decompressor.unconsumed_tail
                    starved = not chunk and not pending
                else:
                    pending = b""
                    starved = not chunk and decompressor.needs_input
                if starved:
                    raise Corrupt(f"{kind}: the data ends before the stream does")
                out += len(chunk)
                self._grow(len(chunk))
                self._ratio(out, len(data))
                chunks.append(chunk)
        except errors as exc:
            raise Corrupt.of(kind, exc) from None
        yield "(decompressed)", b"".join(chunks)

    def _tar(self, data: bytes | memoryview) -> Iterator[tuple[str, bytes]]:
        try:
            archive = tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:")
        except tarfile.TarError as exc:
            raise Corrupt.of("tar", exc) from None
        with archive:
            try:
                for info in archive:
                    if not info.isfile():
                        continue
                    self._member()
                    stream = archive.extractfile(info)
                    if stream is None:
                        continue
                    # tar stores members as they are: the ratio is 1, the size limit still holds.
                    yield info.name, self._drain(stream, info.size)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise Corrupt.of("tar", exc) from None

    def _sevenzip(self, data: bytes | memoryview) -> Iterator[tuple[str, bytes]]:
        # py7zr cannot be interrupted while it parses a header (400,000 entries took it past
        # every time limit), so it runs in a child process killed at the deadline.
        if importlib.util.find_spec("py7zr") is None:
            raise Unsupported("7z: py7zr is not installed")
        self._check_clock()
        limits = {
            "members": self.limits.max_members - self.members,
            "room": self._room(),
            "ratio": self.limits.max_ratio,
            "ratio_floor": RATIO_FLOOR,
        }
        try:
            done = subprocess.run(
                [sys.executable, "-I", str(_SEVENZIP_CHILD), json.dumps(limits)],
                input=bytes(data),
                capture_output=True,
                timeout=max(self.deadline - self.clock(), 0.001),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LimitHit(
                "max_seconds",
                f"reading the 7z took over {self.limits.max_seconds:g} s (its reader was stopped)",
            ) from None
        members, end = _child_records(done.stdout)
        if end is None:
            error = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["died"]
            raise Corrupt(f"7z: the reader failed ({done.returncode}): {error[0][:200]}")
        status = end.get("status")
        if status == "refused":
            raise Refused(str(end.get("limit")), str(end.get("detail")))
        if status == "limit":
            raise LimitHit(str(end.get("limit")), str(end.get("detail")))
        if status == "encrypted":
            raise Encrypted("7z archive")
        if status == "unsupported":
            raise Unsupported(f"7z: {end.get('detail')}")
        for name, member in members:
            self._member()
            self._grow(len(member))
            yield name, member
        if status != "ok":
            exception = str(end.get("exception") or "")
            raise Corrupt(f"7z: {exception}: {end.get('error')}".rstrip(": "), exception)

    def _rar(self, data: bytes | memoryview) -> Iterator[tuple[str, bytes]]:
        try:
            import rarfile
        except ImportError:
            raise Unsupported("rar: rarfile is not installed") from None
        try:
            archive = rarfile.RarFile(io.BytesIO(bytes(data)))
            if archive.needs_password():
                raise Encrypted("rar archive")
            if not archive.infolist() and len(data) > 64:
                raise Corrupt("rar: no member could be read")
            for info in archive.infolist():
                if info.is_dir():
                    continue
                self._member()
                if info.needs_password():
                    raise Encrypted(info.filename or "rar member")
                with archive.open(info) as stream:
                    yield info.filename or "member", self._drain(stream, info.compress_size or 1)
        except rarfile.RarCannotExec:
            # compressed rar members need an unrar tool; libarchive reads rar 4 (and rar 5 but
            # for filters) itself
            from .readers.libarchive_formats import read_libarchive

            yield from read_libarchive(self, bytes(data), "rar")
        except rarfile.PasswordRequired:
            raise Encrypted("rar archive") from None
        except (LimitHit, Encrypted):
            raise
        except Exception as exc:  # rarfile.Error and whatever else it raises
            raise Corrupt.of("rar", exc) from None


# (MalformationFlag name, the limit named in the finding, what happened)
_PARSER_LIMITS = (
    ("DEPTH_LIMIT", "mime_max_depth", "multiparts nested deeper than the MIME parser's limit"),
    ("PART_LIMIT", "mime_max_parts", "more parts than the MIME parser's limit"),
    ("HEADER_LIMIT", "mime_max_header_bytes", "a header block over the MIME parser's limit"),
)


@functools.cache
def _limits_mask(kinds: Any) -> int:
    return sum(int(kinds[name]) for name, _limit, _what in _PARSER_LIMITS)


# Lines of the base64 alphabet, one after the other (as an encoder writes them).
_BASE64_BLOCK = re.compile(rb"(?m)(?:^[A-Za-z0-9+/]+={0,2}[ \t]*(?:\r\n|\n|\r|\Z))+")
_BASE64_MIN = 16  # shorter runs are words on a line of their own, not encoded files


def _unparsed(message: ParsedMessage, cut: Part) -> tuple[int, int]:
    """The span of ``cut``'s body after its last parsed child: all of it for a part the
    parser did not descend into, the rest after the last part it took for one it split."""
    start = cut.body_start
    if cut.children:
        start = max(start, message.parts[cut.children[-1]].body_end)
    return start, max(start, cut.body_end)


def _base64_blocks(data: bytes) -> Iterator[bytes]:
    for match in _BASE64_BLOCK.finditer(data):
        block = match.group()
        if len(block) >= _BASE64_MIN:
            yield block


def _decode_base64(block: bytes) -> bytes:
    chars = re.sub(rb"[^A-Za-z0-9+/]", b"", block)
    rest = len(chars) % 4
    if rest == 1:  # one sextet is no byte
        chars = chars[:-1]
    elif rest:
        chars += b"=" * (4 - rest)
    return binascii.a2b_base64(chars)


_SEVENZIP_CHILD = Path(__file__).with_name("_sevenzip_child.py")


def _child_records(out: bytes) -> tuple[list[tuple[str, bytes]], dict[str, Any] | None]:
    """The members and the end record the 7z reader wrote (see ``_sevenzip_child``)."""
    members: list[tuple[str, bytes]] = []
    at = 0
    while at < len(out):
        tag = out[at : at + 1]
        if tag == b"E":
            (size,) = struct.unpack_from(">I", out, at + 1)
            end = json.loads(out[at + 5 : at + 5 + size])
            return members, end if isinstance(end, dict) else None
        if tag != b"M":
            break
        (size,) = struct.unpack_from(">I", out, at + 1)
        name = out[at + 5 : at + 5 + size].decode("utf-8", "surrogateescape")
        at += 5 + size
        (size,) = struct.unpack_from(">Q", out, at)
        members.append((name, out[at + 8 : at + 8 + size]))
        at += 8 + size
    return members, None


def _lazy(
    reader: readers.Reader, budget: Unpacker, data: bytes, kind: str
) -> Iterator[tuple[str, bytes]]:
    """The reader's members, its errors (an import, a bad header) raised inside the walk's
    handlers rather than where the reader is picked."""
    yield from reader(budget, data, kind)


def _local_header_fits(data: bytes | memoryview) -> bool:
    """Whether a zip's first local header (after a split archive's marker) describes a member
    that fits in ``data``: bytes that only start like a zip are not handed to libarchive."""
    at = 4 if data[:4] == b"PK\x07\x08" else 0
    if bytes(data[at : at + 4]) != b"PK\x03\x04" or len(data) < at + 30:
        return False
    (flags,) = struct.unpack_from("<H", data, at + 6)
    (packed,) = struct.unpack_from("<I", data, at + 18)
    name, extra = struct.unpack_from("<HH", data, at + 26)
    if at + 30 + name + extra > len(data):
        return False
    # bit 3: the sizes follow the data; 0xFFFFFFFF: they are in the zip64 extra field
    return (
        bool(flags & 0x08) or packed == 0xFFFFFFFF or at + 30 + name + extra + packed <= len(data)
    )


def _looks_like_message(data: bytes | memoryview, label: str) -> bool:
    """Whether an archive member is an e-mail message (``.eml`` or headers then a body)."""
    if label.lower().endswith(".eml"):
        return True
    head = bytes(data[:8192])
    end = head.find(b"\n\n")
    if end < 0:
        end = head.find(b"\r\n\r\n")
    if end <= 0:
        return False
    lines = head[:end].replace(b"\r\n", b"\n").split(b"\n")
    if not all(_HEADER_LINE.match(line) or line[:1] in (b" ", b"\t") for line in lines):
        return False
    names = {line.split(b":", 1)[0].lower() for line in lines if b":" in line}
    return bool(names & {b"from", b"content-type", b"mime-version", b"received", b"subject"})
