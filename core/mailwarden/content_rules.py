"""Content rules of a rule: attachment names, detected types and sizes, with their own action.

An attachment is judged by what it is, not by what its headers say: names are taken from the
MIME part and from the members of zip and tar archives (nested archives too, within limits),
and each object's type is detected from its first bytes. Everything here is bounded (members
listed, bytes read per member, nesting depth) so a hostile archive costs a known amount.
"""

from __future__ import annotations

import fnmatch
import io
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailwarden_native import MalformationFlag, ParsedMessage
from mailwarden_sdk import Category, Finding

from .config import ContentRules

__all__ = ["DETECTOR", "ContentObject", "check_content", "content_objects", "mime_ambiguities"]

#: The ``detector`` of the findings content rules produce.
DETECTOR = "content"

# Extensions that run code when opened on the desktops mail users have: the last extension of
# a "double extension" name (``invoice.pdf.exe``) is judged against these.
EXECUTABLE_EXTENSIONS = frozenset(
    "exe scr com pif bat cmd vbs vbe js jse wsf wsh hta msi msp cpl jar ps1 lnk reg "
    "dll sys iso img vhd".split()
)
# Bytes read from each archive member: enough for every magic number we detect.
_SNIFF = 4096


@dataclass(frozen=True)
class ContentObject:
    """One attachment or archive member as content rules see it."""

    name: str
    size: int
    head: bytes
    part: int
    #: The archive names leading to this object, outermost first (empty for a MIME part).
    path: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """Where the object sits, e.g. ``files.zip/inner.zip/invoice.pdf.exe``."""
        return "/".join((*self.path, self.name))


def _archive_members(
    data: bytes, rules: ContentRules, depth: int, path: tuple[str, ...], part: int
) -> Iterator[ContentObject]:
    if depth >= rules.archive_depth:
        return
    if data.startswith(b"PK\x03\x04"):
        yield from _zip_members(data, rules, depth, path, part)
    elif _is_tar(data):
        yield from _tar_members(data, rules, depth, path, part)


def _is_tar(data: bytes) -> bool:
    # ustar magic at 257, or a compressed stream that tarfile can open (gzip, bzip2, xz).
    return data[257:262] == b"ustar" or data.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))


def _zip_members(
    data: bytes, rules: ContentRules, depth: int, path: tuple[str, ...], part: int
) -> Iterator[ContentObject]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()[: rules.archive_members]
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    for info in infos:
        if info.is_dir():
            continue
        head = b""
        nested = b""
        if not info.flag_bits & 0x1:  # encrypted members are judged by name only
            try:
                with archive.open(info) as member:
                    # A nested archive must be read whole to list it; its size was declared
                    # by the zip and is bounded by nested_limit.
                    if info.file_size <= rules.nested_limit:
                        nested = member.read(rules.nested_limit + 1)
                        head = nested[:_SNIFF]
                    else:
                        head = member.read(_SNIFF)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
                pass
        obj = ContentObject(info.filename, info.file_size, head, part, path)
        yield obj
        if nested:
            yield from _archive_members(nested, rules, depth + 1, (*path, info.filename), part)


def _tar_members(
    data: bytes, rules: ContentRules, depth: int, path: tuple[str, ...], part: int
) -> Iterator[ContentObject]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return
    with archive:
        count = 0
        while count < rules.archive_members:
            try:
                info = archive.next()
            except (tarfile.TarError, OSError, EOFError, ValueError):
                return
            if info is None:
                return
            count += 1
            if not info.isfile():
                continue
            head = b""
            nested = b""
            try:
                member = archive.extractfile(info)
                if member is not None:
                    if info.size <= rules.nested_limit:
                        nested = member.read(rules.nested_limit + 1)
                        head = nested[:_SNIFF]
                    else:
                        head = member.read(_SNIFF)
            except (tarfile.TarError, OSError, EOFError, ValueError):
                pass
            yield ContentObject(info.name, info.size, head, part, path)
            if nested:
                yield from _archive_members(nested, rules, depth + 1, (*path, info.name), part)


def content_objects(message: ParsedMessage, rules: ContentRules) -> Iterator[ContentObject]:
    """Every attachment of ``message`` and the members of its archives, outermost first."""
    for part in message.leaves():
        if part.index == 0 and not part.filename:
            continue  # a single-part message's body is the message, not an attachment
        data = part.decoded()
        name = part.filename or ""
        if not name and part.disposition != "attachment" and part.content_type.startswith("text/"):
            continue  # body text is not an attachment
        yield ContentObject(name, len(data), data[:_SNIFF], part.index)
        yield from _archive_members(data, rules, 0, (name or f"part{part.index}",), part.index)


def _double_extension(name: str) -> bool:
    # "invoice.pdf.exe", "photo.jpg   .scr": two extensions, the last one executable.
    base = name.rsplit("/", 1)[-1].rstrip(". ").lower()
    pieces = [p.strip() for p in base.split(".")]
    return len(pieces) >= 3 and pieces[-1] in EXECUTABLE_EXTENSIONS and bool(pieces[-2])


def _mask_pattern(masks: list[str]) -> re.Pattern[str] | None:
    if not masks:
        return None
    # fnmatch's translation, case-insensitive, matched against the bare file name.
    return re.compile("|".join(fnmatch.translate(m.lower()) for m in masks), re.IGNORECASE)


def check_content(
    message: ParsedMessage,
    rules: ContentRules,
    detect_type: Callable[[bytes], str],
) -> list[Finding]:
    """Findings for what ``rules`` block in ``message``; empty when nothing is blocked."""
    if not rules.active:
        return []
    masks = _mask_pattern(rules.names)
    types = {t.lower() for t in rules.types}
    findings: list[Finding] = []

    def blocked(code: str, obj: ContentObject, **details: object) -> None:
        extra = {key: str(value) for key, value in details.items()}
        findings.append(
            Finding(
                code=code,
                detector=DETECTOR,
                category=Category.CONTENT,
                status="blocked",
                part=obj.part,
                details={"object": obj.where, **extra},
            )
        )

    if rules.max_message_size and len(message.raw) > rules.max_message_size:
        findings.append(
            Finding(
                code="CONTENT_MESSAGE_TOO_LARGE",
                detector=DETECTOR,
                category=Category.CONTENT,
                status="blocked",
                details={"size": str(len(message.raw)), "limit": str(rules.max_message_size)},
            )
        )
    for obj in content_objects(message, rules):
        bare = obj.name.rsplit("/", 1)[-1]
        if masks is not None and bare and masks.fullmatch(bare.lower()):
            blocked("CONTENT_NAME_BLOCKED", obj, name=bare)
        if rules.double_extensions and _double_extension(bare):
            blocked("CONTENT_DOUBLE_EXTENSION", obj, name=bare)
        if types and obj.head:
            kind = detect_type(obj.head)
            if kind in types:
                blocked("CONTENT_TYPE_BLOCKED", obj, type=kind, name=bare)
        if rules.max_attachment_size and obj.size > rules.max_attachment_size:
            blocked(
                "CONTENT_ATTACHMENT_TOO_LARGE", obj, size=obj.size, limit=rules.max_attachment_size
            )
    return findings


# Flags for structures mail clients read differently (the antivirus scans every reading; these
# let a rule act on the ambiguity itself, the `malformed` action).
_AMBIGUOUS = (
    MalformationFlag.DUPLICATE_CONTENT_TYPE
    | MalformationFlag.DUPLICATE_BOUNDARY
    | MalformationFlag.HEADER_NAME_JUNK
    | MalformationFlag.NESTED_COMMENT
    | MalformationFlag.PART_OUTSIDE_BOUNDARIES
)


_AMBIGUOUS_BITS = int(_AMBIGUOUS)


def mime_ambiguities(message: ParsedMessage) -> list[Finding]:
    """One ``MIME_AMBIGUOUS`` finding (status ``malformed``) naming the ambiguous structures
    the parser flagged in ``message``; empty for a message every reader reads alike."""
    # As ints: the flag enum's & and call are the most of this for the many messages
    # without any of them.
    if not int(message.flags) & _AMBIGUOUS_BITS:
        return []
    flags = MalformationFlag(int(message.flags)) & _AMBIGUOUS
    names = sorted(f.name or "" for f in MalformationFlag if f in _AMBIGUOUS and f & flags)
    return [
        Finding(
            code="MIME_AMBIGUOUS",
            detector=DETECTOR,
            category=Category.CONTENT,
            status="malformed",
            details={"flags": ",".join(names)},
        )
    ]
