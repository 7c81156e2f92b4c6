"""The antivirus reads every container, document and encoding ClamAV reads in mail (issue 18).

Samples are built once per module with the real tools (Debian's 7z, cpio, arj, jlha, gcab,
xorriso, zstd, ar, mscompress, binhex, Free Pascal's chmcmd; libarchive's writer; pikepdf)
and, for RAR, OLE2 with a VBA project, TNEF, RTF and OneNote (which no free tool writes),
writers here checked by independent readers (unar and 7z, olevba, clamscan), each carrying EICAR;
every one must be found *inside* the container (the object named ``sample/member``, not the
container's own bytes), and real ``clamscan`` over the same files with a database made here
must find nothing mailwarden misses. What cannot be read gives a status other than ``clean``
with a reason naming the format.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.testing import build_message
from tests.conftest import EICAR, corpus_dir
from tests.services import ensure_packages
from tests.unit.test_antivirus import Run, av_findings

TOOLS = (
    "p7zip-full",
    "cpio",
    "arj",
    "jlha-utils",
    "lhasa",
    "gcab",
    "xorriso",
    "zstd",
    "binutils",
    "mscompress",
    "macutils",
    "libarchive13",
    "unar",
    "fp-utils-3.2.2",
)

# EICAR and some text that does not compress to nothing, so every tool really compresses
random.seed(18)
PAYLOAD = EICAR + b"\n" + bytes(random.choice(b"abcdefghij \n") for _ in range(6000))


def run(argv: list[str], cwd: Path, **kwargs: Any) -> bytes:
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL  # arj and jlha ask questions on a terminal
    result = subprocess.run(argv, cwd=cwd, capture_output=True, check=True, timeout=60, **kwargs)
    return result.stdout


def tool_samples(work: Path, payload: bytes = PAYLOAD) -> dict[str, bytes]:
    """One sample per format a Debian tool writes (benchmarks/av builds big ones with it)."""
    (work / "payload.com").write_bytes(payload)
    out: dict[str, bytes] = {}
    run(["7z", "a", "-bd", "-tzip", "-mm=Deflate64", "d64.zip", "payload.com"], work)
    out["deflate64.zip"] = (work / "d64.zip").read_bytes()
    run(["7z", "a", "-bd", "s.7z", "payload.com"], work)
    out["archive.7z"] = (work / "s.7z").read_bytes()
    for fmt in ("newc", "odc", "bin", "crc"):
        out[f"{fmt}.cpio"] = run(["cpio", "-o", "-H", fmt], work, input=b"payload.com\n")
    run(["arj", "a", "-y", "s.arj", "payload.com"], work)
    out["archive.arj"] = (work / "s.arj").read_bytes()
    run(["jlha", "a", "s.lzh", "payload.com"], work)
    out["archive.lzh"] = (work / "s.lzh").read_bytes()
    run(["gcab", "-c", "-z", "s.cab", "payload.com"], work)
    out["archive.cab"] = (work / "s.cab").read_bytes()
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", "s.iso", "payload.com"], work)
    out["image.iso"] = (work / "s.iso").read_bytes()
    out["payload.com.zst"] = run(["zstd", "-q", "-c", "payload.com"], work)
    run(["ar", "rc", "s.a", "payload.com"], work)
    out["archive.a"] = (work / "s.a").read_bytes()
    run(["mscompress", "payload.com"], work)
    out["payload.co_"] = (work / "payload.com_").read_bytes()
    out["payload.hqx"] = run(["binhex", "-d", "payload.com"], work)
    (work / "index.html").write_text("<html><body>help</body></html>")
    (work / "s.hhp").write_text(
        "[OPTIONS]\nCompiled file=s.chm\nDefault topic=index.html\nTitle=t\n\n"
        "[FILES]\nindex.html\npayload.com\n"
    )
    run([chmcmd(), "s.hhp"], work)  # Free Pascal's CHM compiler (LZX, as Microsoft's hhc)
    out["help.chm"] = (work / "s.chm").read_bytes()
    return out


def chmcmd() -> str:
    found = shutil.which("chmcmd") or next(iter(sorted(Path("/usr/bin").glob("chmcmd-*"))), None)
    assert found is not None, "fp-utils installs chmcmd"
    return str(found)


def library_samples(work: Path, payload: bytes = PAYLOAD) -> dict[str, bytes]:
    """One sample per format written through a library or a writer of this module."""
    import libarchive
    import pikepdf

    out: dict[str, bytes] = {}
    with libarchive.file_writer(str(work / "s.xar"), "xar") as archive:
        archive.add_file_from_memory("payload.com", len(payload), payload)
    out["archive.xar"] = (work / "s.xar").read_bytes()
    pdf = pikepdf.new()
    pdf.add_blank_page()
    pdf.attachments["payload.com"] = pikepdf.AttachedFileSpec(pdf, payload)
    stream = io.BytesIO()
    pdf.save(stream, compress_streams=True)
    out["embedded.pdf"] = stream.getvalue()
    # the writer has no DIFAT sectors: 6 MB at most (benchmarks/av passes 10 MB payloads)
    ole_payload = payload[: 6 << 20]
    out["document.doc"] = compound_file({"WordDocument": bytes(4096), "Payload": ole_payload})
    out["winmail.dat"] = tnef([("payload.com", payload)])
    out["object.rtf"] = rtf_with_object(payload)
    out["notebook.one"] = onenote(payload)
    out["page.html"] = (
        b'<html><body><a href="data:application/octet-stream;base64,'
        + base64.b64encode(payload)
        + b'">x</a></body></html>'
    )
    out["payload.tar.zst"] = _zstd_tar(payload)
    out["archive.rar"] = rar4({"payload.com": payload})
    # a split archive's first volume: the spanning marker, local headers, no central directory
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("payload.com", payload)
    whole = zipped.getvalue()
    out["split.z01"] = b"PK\x07\x08" + whole[: whole.rfind(b"PK\x01\x02")]
    # the compressor is plain Python (8 s a MB): benchmarks/av times a 1 MB macro
    out["macro.doc"] = vba_document(vba_module(payload[: 1 << 20]))
    return out


def vba_module(payload: bytes) -> str:
    """VBA source that carries ``payload``'s text lines as string constants."""
    lines = payload.decode("latin-1").splitlines()
    body = "".join(f'    s = s & "{line}"\r\n' for line in lines)
    return f'Attribute VB_Name = "Module1"\r\nSub AutoOpen()\r\n{body}End Sub\r\n'


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zstd_tar(payload: bytes) -> bytes:
    tar = _tar({"payload.com": payload})
    return subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout


# -- writers for formats no Debian tool writes -----------------------------------------------


def compound_file(streams: dict[str, bytes]) -> bytes:
    """A minimal OLE2 compound file (MS-CFB v3) with ``streams`` (``a/b`` names stream ``b`` in
    storage ``a``); those under 4096 bytes live in the mini stream, as the format requires."""
    sector = 512
    body = bytearray()
    placed: dict[str, tuple[int, int]] = {}
    chains: list[tuple[int, int]] = []  # (first sector, sector count) of every FAT chain
    mini = bytearray()
    mini_fat: list[int] = []
    for name, data in streams.items():
        if len(data) < 4096:
            first, count = len(mini) // 64, -(-len(data) // 64)
            mini_fat += [first + i + 1 for i in range(count - 1)] + [0xFFFFFFFE] * (count > 0)
            placed[name] = (first if data else 0xFFFFFFFE, len(data))
            mini += data + bytes(-len(data) % 64)
            continue
        placed[name] = (len(body) // sector, len(data))
        chains.append((len(body) // sector, -(-len(data) // sector)))
        body += data + bytes(-len(data) % sector)
    root = (0xFFFFFFFE, 0)
    mini_fat_at, mini_fat_count = 0xFFFFFFFE, 0
    if mini:
        root = (len(body) // sector, len(mini))
        chains.append((root[0], -(-len(mini) // sector)))
        body += mini + bytes(-len(mini) % sector)
        table = struct.pack(f"<{len(mini_fat)}I", *mini_fat)
        table += b"\xff" * (-len(table) % sector)
        mini_fat_at, mini_fat_count = len(body) // sector, len(table) // sector
        chains.append((mini_fat_at, mini_fat_count))
        body += table
    # the directory: the root, then every storage and stream, each storage's children chained
    # through their right-sibling pointers
    nodes: list[tuple[str, int, int, int]] = [("Root Entry", 5, *root)]
    index: dict[str, int] = {"": 0}
    children: dict[int, list[int]] = {0: []}
    for path in streams:
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            key = "/".join(parts[:depth])
            if key in index:
                continue
            is_stream = depth == len(parts)
            start, size = placed[key] if is_stream else (0, 0)
            index[key] = len(nodes)
            nodes.append((parts[depth - 1], 2 if is_stream else 1, start, size))
            children.setdefault(index[key], [])
            children[index["/".join(parts[: depth - 1])]].append(index[key])
    none = 0xFFFFFFFF
    right = {kid: kids[i + 1] for kids in children.values() for i, kid in enumerate(kids[:-1])}
    first = {parent: kids[0] for parent, kids in children.items() if kids}

    def entry(number: int) -> bytes:
        name, kind, start, size = nodes[number]
        encoded = (name + "\0").encode("utf-16-le")
        return (
            encoded.ljust(64, b"\0")
            + struct.pack("<HBB", len(encoded), kind, 1)
            + struct.pack("<III", none, right.get(number, none), first.get(number, none))
            + bytes(16 + 4 + 16)
            + struct.pack("<IQ", start, size)
        )

    directory = b"".join(entry(n) for n in range(len(nodes)))
    directory += bytes(-len(directory) % sector)
    dir_sector = len(body) // sector
    dir_count = len(directory) // sector
    per_fat = sector // 4
    # FAT sectors needed for the body, the directory and themselves (up to the header's 109)
    n_fat = 1
    while (dir_sector + dir_count + n_fat) > n_fat * per_fat:
        n_fat += 1
    assert n_fat <= 109, "a compound file this large needs DIFAT sectors"
    fat_sector = dir_sector + dir_count
    fat = [0xFFFFFFFF] * (n_fat * per_fat)
    for start, count in [*chains, (dir_sector, dir_count)]:
        for i in range(count):
            fat[start + i] = start + i + 1 if i + 1 < count else 0xFFFFFFFE
    for i in range(n_fat):
        fat[fat_sector + i] = 0xFFFFFFFD
    header = (
        bytes.fromhex("d0cf11e0a1b11ae1")
        + bytes(16)
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + bytes(6)
        + struct.pack("<IIIII", 0, n_fat, dir_sector, 0, 4096)
        + struct.pack("<IIII", mini_fat_at, mini_fat_count, 0xFFFFFFFE, 0)
    )
    difat = [fat_sector + i for i in range(n_fat)] + [none] * (109 - n_fat)
    header += struct.pack("<109I", *difat)
    return header + bytes(body) + directory + struct.pack(f"<{len(fat)}I", *fat)


def ovba_compress(data: bytes) -> bytes:
    """MS-OVBA 2.4.1 compression (the format of VBA source and the dir stream): 4096-byte
    chunks of literal and copy tokens, a chunk that would not shrink stored raw."""
    out = bytearray(b"\x01")
    for chunk_start in range(0, len(data), 4096):
        chunk = data[chunk_start : chunk_start + 4096]
        tokens = bytearray()
        at = 0
        seen: dict[bytes, list[int]] = {}
        while at < len(chunk):
            flags, group = 0, bytearray()
            for bit in range(8):
                if at >= len(chunk):
                    break
                bits = max((at - 1).bit_length(), 4)
                longest = (0xFFFF >> bits) + 3
                best, where = 0, 0
                for candidate in reversed(seen.get(chunk[at : at + 3], [])[-16:]):
                    length = 0
                    while (
                        length < longest
                        and at + length < len(chunk)
                        and chunk[candidate + length] == chunk[at + length]
                    ):
                        length += 1
                    if length > best:
                        best, where = length, candidate
                step = best if best >= 3 else 1
                if best >= 3:
                    flags |= 1 << bit
                    token = ((at - where - 1) << (16 - bits)) | (best - 3)
                    group += struct.pack("<H", token)
                else:
                    group.append(chunk[at])
                for i in range(at, at + step):
                    seen.setdefault(chunk[i : i + 3], []).append(i)
                at += step
            tokens += bytes([flags]) + group
        if len(tokens) > 4096 and len(chunk) == 4096:
            out += struct.pack("<H", 0x3FFF) + chunk  # raw: size 4098, signature 3, flag 0
        else:
            out += struct.pack("<H", 0xB000 | (len(tokens) + 2 - 3)) + tokens
    return bytes(out)


def vba_document(source: str) -> bytes:
    """A Word 97 document whose VBA project holds one module with ``source`` (MS-OVBA: the
    PROJECT stream, VBA/_VBA_PROJECT, the compressed VBA/dir records and the module stream
    with its source compressed after a performance cache)."""

    def record(ident: int, data: bytes) -> bytes:
        return struct.pack("<HI", ident, len(data)) + data

    def text(ident: int, value: str, unicode_id: int) -> bytes:
        return record(ident, value.encode()) + record(unicode_id, value.encode("utf-16-le"))

    cache = 4096  # the module's performance cache, skipped by MODULEOFFSET
    records = (
        record(0x01, struct.pack("<I", 1))  # SYSKIND: 32-bit Windows
        + record(0x02, struct.pack("<I", 0x409))  # LCID
        + record(0x14, struct.pack("<I", 0x409))  # LCIDINVOKE
        + record(0x03, struct.pack("<H", 1252))  # CODEPAGE
        + record(0x04, b"Project")
        + text(0x05, "", 0x40)  # DOCSTRING
        + text(0x06, "", 0x3D)  # HELPFILEPATH
        + record(0x07, struct.pack("<I", 0))  # HELPCONTEXT
        + record(0x08, struct.pack("<I", 0))  # LIBFLAGS
        + struct.pack("<HIIH", 0x09, 4, 1, 0)  # VERSION
        + text(0x0C, "", 0x3C)  # CONSTANTS
        + record(0x0F, struct.pack("<H", 1))  # MODULES: one
        + record(0x13, struct.pack("<H", 0xFFFF))  # PROJECTCOOKIE
        + text(0x19, "Module1", 0x47)  # MODULENAME
        + text(0x1A, "Module1", 0x32)  # MODULESTREAMNAME
        + text(0x1C, "", 0x48)  # MODULEDOCSTRING
        + record(0x31, struct.pack("<I", cache))  # MODULEOFFSET
        + record(0x1E, struct.pack("<I", 0))  # MODULEHELPCONTEXT
        + record(0x2C, struct.pack("<H", 0xFFFF))  # MODULECOOKIE
        + record(0x21, b"")  # MODULETYPE: procedural
        + record(0x2B, b"")  # module terminator
        + record(0x10, b"")  # dir terminator
    )
    project = 'ID="{00000000-0000-0000-0000-000000000000}"\r\nModule=Module1\r\nName="Project"\r\n'
    return compound_file(
        {
            "WordDocument": bytes(4096),
            "Macros/PROJECT": project.encode(),
            "Macros/VBA/_VBA_PROJECT": struct.pack("<HHBH", 0x61CC, 0xFFFF, 0, 0),
            "Macros/VBA/dir": ovba_compress(records),
            "Macros/VBA/Module1": bytes(cache) + ovba_compress(source.encode("latin-1")),
        }
    )


def rar4(files: dict[str, bytes]) -> bytes:
    """A RAR 4 archive with ``files`` stored (method 0x30): no free program writes RAR, and
    unar, 7z and libarchive read what this writes (checked below)."""

    def block(kind: int, flags: int, fields: bytes, data: bytes = b"") -> bytes:
        head = struct.pack("<BHH", kind, flags, 5 + 2 + len(fields)) + fields
        crc = zlib.crc32(head) & 0xFFFF
        return struct.pack("<H", crc) + head + data

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, struct.pack("<HI", 0, 0))
    for name, data in files.items():
        encoded = name.encode()
        fields = struct.pack(
            "<IIBIIBBHI",
            len(data),  # packed size
            len(data),  # unpacked size
            2,  # host OS: Windows
            zlib.crc32(data),
            0x5A210000,  # DOS time
            20,  # version needed: 2.0
            0x30,  # method: store
            len(encoded),
            0x20,  # attributes: archive
        )
        out += block(0x74, 0x8000, fields + encoded, data)
    return out + block(0x7B, 0x4000, b"")


def tnef(attachments: list[tuple[str, bytes]]) -> bytes:
    """A TNEF stream (MS-OXTNEF) with attachments: rendering data, title, data each."""

    def attribute(level: int, kind: int, ident: int, data: bytes) -> bytes:
        checksum = sum(data) & 0xFFFF
        return (
            struct.pack("<BII", level, (kind << 16) | ident, len(data))
            + data
            + struct.pack("<H", checksum)
        )

    out = struct.pack("<IH", 0x223E9F78, 0x0001)
    out += attribute(1, 0x0009, 0x9006, struct.pack("<I", 0x00010000))  # TNEF version
    for name, data in attachments:
        out += attribute(2, 0x0002, 0x9002, bytes(14))  # attAttachRendData starts one
        out += attribute(2, 0x0001, 0x8010, name.encode() + b"\0")  # attAttachTitle
        out += attribute(2, 0x0006, 0x800F, data)  # attAttachData
    return out


def rtf_with_object(data: bytes) -> bytes:
    """An RTF document embedding ``data`` as an OLE1 Package object, hex in ``\\objdata``."""
    native = data
    ole1 = (
        struct.pack("<II", 0x00000501, 2)
        + struct.pack("<I", 8)
        + b"Package\0"
        + struct.pack("<II", 0, 0)
        + struct.pack("<I", len(native))
        + native
    )
    hexed = binascii.hexlify(ole1)
    lines = b"\n".join(hexed[i : i + 64] for i in range(0, len(hexed), 64))
    return b"{\\rtf1{\\object\\objemb{\\*\\objclass Package}{\\*\\objdata\n" + lines + b"\n}}}"


def onenote(data: bytes) -> bytes:
    """A OneNote section's header GUID and one FileDataStoreObject holding ``data``."""
    header = bytes.fromhex("e4525c7b8cd8a74daeb15378d02996d3") + bytes(1024)
    store = bytes.fromhex("e716e3bd65261145a4c48d4d0b7a9eac") + struct.pack("<QIQ", len(data), 0, 0)
    return header + store + data + bytes(-len(data) % 8) + bytes(64)


# -- the samples -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    ensure_packages(*TOOLS)
    work = tmp_path_factory.mktemp("samples")
    return {**tool_samples(work), **library_samples(work)}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    runner = Run(tmp_path_factory.mktemp("home"))
    try:
        yield runner
    finally:
        runner.close()


def encoded_messages() -> dict[str, bytes]:
    """Encodings a part carries whatever it declares: x-uuencode, yEnc, an mbox as bytes."""
    uu = b"begin 644 payload.com\n"
    for i in range(0, len(PAYLOAD), 45):
        uu += binascii.b2a_uu(PAYLOAD[i : i + 45])
    uu += b"`\nend\n"
    head = (
        b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
    )
    x_uu = (
        head + b"Content-Type: application/octet-stream; name=payload.com\r\n"
        b"Content-Transfer-Encoding: x-uuencode\r\n\r\n" + uu.replace(b"\n", b"\r\n") + b"--b--\r\n"
    )
    yenc = bytearray()
    for byte in PAYLOAD:
        value = (byte + 42) & 0xFF
        if value in (0, 10, 13, 61):
            yenc += b"=" + bytes([(value + 64) & 0xFF])
        else:
            yenc.append(value)
    y_part = b"=ybegin line=128 size=%d name=payload.com\r\n" % len(PAYLOAD)
    y_part += b"\r\n".join(bytes(yenc[i : i + 128]) for i in range(0, len(yenc), 128))
    y_part += b"\r\n=yend size=%d\r\n" % len(PAYLOAD)
    yenc_msg = head + b"Content-Type: application/octet-stream\r\n\r\n" + y_part + b"--b--\r\n"
    inner = build_message(attachments=[("payload.com", PAYLOAD)])
    mbox = b"From alice@example.org Mon Jan  1 10:00:00 2024\n" + inner.replace(b"\r\n", b"\n")
    return {
        "x-uuencode.eml": x_uu,
        "yenc.eml": yenc_msg,
        "mailbox.mbox": build_message(attachments=[("mailbox.mbox", mbox)]),
    }


def detected_inside(outcome: Any, name: str) -> set[str]:
    """Where EICAR was found below ``name`` (the container itself does not count)."""
    return {
        details["object"]
        for code, _status, details in av_findings(outcome)
        if code == "AV_INFECTED" and details.get("object", "").startswith(f"{name}/")
    }


def test_every_format_is_read_and_the_file_inside_detected(
    samples: dict[str, bytes], gateway: Run
) -> None:
    missed = {}
    for name, data in samples.items():
        outcome = gateway.process(build_message(attachments=[(name, data)]))
        if not detected_inside(outcome, name):
            missed[name] = [
                (c, s, d.get("reason") or d.get("error")) for c, s, d in av_findings(outcome)
            ]
    assert missed == {}
    assert len(samples) >= 20


def test_the_written_rar_is_one_unar_and_7z_read(samples: dict[str, bytes], tmp_path: Path) -> None:
    """The RAR writer above is checked by two independent readers, so the sample is a RAR a
    user could have received, not one only our reader accepts."""
    (tmp_path / "s.rar").write_bytes(samples["archive.rar"])
    run(["unar", "-q", "-o", "unar", "s.rar"], tmp_path)
    run(["7z", "x", "-bd", "-o7z", "s.rar"], tmp_path)
    for tool in ("unar", "7z"):
        assert (tmp_path / tool / "payload.com").read_bytes() == PAYLOAD, tool


def test_vba_macro_source_is_decompressed_and_scanned(
    samples: dict[str, bytes], gateway: Run, tmp_path: Path
) -> None:
    """EICAR only in a macro's compressed source: found in the source, as clamscan finds it."""
    document = samples["macro.doc"]
    assert EICAR not in document
    outcome = gateway.process(build_message(attachments=[("macro.doc", document)]))
    assert detected_inside(outcome, "macro.doc") == {
        "macro.doc/Macros/VBA/Module1/Module1.bas (VBA source)"
    }
    ensure_packages("clamav")
    (tmp_path / "macro.doc").write_bytes(document)
    (tmp_path / "eicar.ndb").write_text(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
    proc = subprocess.run(
        ["clamscan", "--no-summary", "--database=eicar.ndb", "macro.doc"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.stdout.strip() == "macro.doc: Eicar-Test-Signature.UNOFFICIAL FOUND", proc.stdout


def test_encodings_in_any_part_are_decoded(gateway: Run) -> None:
    for name, raw in encoded_messages().items():
        outcome = gateway.process(raw)
        verdict = outcome.decision.verdict
        assert verdict.antivirus.value == "infected", (name, av_findings(outcome))
        objects = {d["object"] for c, _s, d in av_findings(outcome) if c == "AV_INFECTED"}
        # found in the decoded file, not in the raw message (where it is encoded)
        assert any("payload.com" in o for o in objects), (name, objects)


def clamscan_finds(files: dict[str, bytes], work: Path) -> set[str]:
    """The names of ``files`` real clamscan finds EICAR in (written under ``work/files``)."""
    ensure_packages("clamav")
    clamscan = shutil.which("clamscan")
    assert clamscan is not None
    database = work / "eicar.ndb"
    database.write_text(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
    (work / "files").mkdir()
    for name, data in files.items():
        (work / "files" / name).write_bytes(data)
    proc = subprocess.run(
        [clamscan, "--no-summary", "-r", f"--database={database}", str(work / "files")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return {
        Path(line.rsplit(": ", 1)[0]).name
        for line in proc.stdout.splitlines()
        if line.endswith(" FOUND")
    }


def test_clamscan_detects_nothing_mailwarden_misses(
    samples: dict[str, bytes], gateway: Run, tmp_path: Path
) -> None:
    theirs = clamscan_finds({**samples, **encoded_messages()}, tmp_path)
    files = tmp_path / "files"
    assert len(theirs) >= 10  # the tools made real files clamscan reads
    ours = set()
    for path in sorted(files.iterdir()):
        raw = path.read_bytes()
        if not path.name.endswith((".eml",)):
            raw = build_message(attachments=[(path.name, raw)])
        if gateway.process(raw).decision.verdict.antivirus.value == "infected":
            ours.add(path.name)
    assert theirs - ours == set()


# -- nothing recognised and unread is called clean --------------------------------------------


def _pe_with_sections(*names: bytes) -> bytes:
    """A PE header with these section names (enough for the packer check)."""
    pe = bytearray(1024)
    pe[0:2] = b"MZ"
    struct.pack_into("<I", pe, 0x3C, 0x80)
    pe[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HH", pe, 0x84, 0x14C, len(names))
    struct.pack_into("<H", pe, 0x94, 0xE0)
    table = 0x80 + 24 + 0xE0
    for i, name in enumerate(names):
        pe[table + 40 * i : table + 40 * i + 8] = name.ljust(8, b"\0")
    return bytes(pe) + b"packed data " * 100


def _zip_with_method(method: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.txt", b"some text " * 50)
    data = bytearray(out.getvalue())
    struct.pack_into("<H", data, 8, method)  # local header
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 10, method)
    return bytes(data)


UNREADABLE: list[tuple[str, bytes, str, str]] = [
    ("implode.zip", _zip_with_method(6), "not_scanned", "zip: compression method 6 (Implode)"),
    ("ppmd.zip", _zip_with_method(98), "not_scanned", "zip: compression method 98 (PPMd)"),
    ("fsg.exe", _pe_with_sections(b"FSG!", b".text"), "not_scanned", "pe: packed with FSG"),
    ("petite.exe", _pe_with_sections(b".petite"), "not_scanned", "pe: packed with Petite"),
    ("upx.exe", _pe_with_sections(b"UPX0", b"UPX1"), "not_scanned", "pe: packed with UPX"),
    ("app.sis", bytes(8) + b"\x19\x04\x00\x10" + bytes(200), "not_scanned", "sis:"),
    ("a.kwj", b"KWAJ\x88\xf0\x27\xd1" + bytes(100), "not_scanned", "kwaj:"),
    ("broken.cpio", b"070701" + b"zz" * 100, "corrupted", "cpio:"),
    ("broken.arj", b"\x60\xea" + bytes(200), "corrupted", "arj:"),
    ("broken.chm", b"ITSF" + bytes(300), "corrupted", "chm:"),
    ("broken.cab", b"MSCF\0\0\0\0" + bytes(200), "corrupted", "cab:"),
    ("broken.zst", b"\x28\xb5\x2f\xfd" + b"\xff" * 64, "corrupted", "zstd:"),
    (
        "broken.one",
        bytes.fromhex("e4525c7b8cd8a74daeb15378d02996d3")
        + bytes.fromhex("e716e3bd65261145a4c48d4d0b7a9eac")
        + struct.pack("<QIQ", 1 << 40, 0, 0),
        "corrupted",
        "onenote:",
    ),
    ("broken.pdf", b"%PDF-1.4\n" + b"\xff" * 50, "corrupted", "pdf:"),
    ("broken.doc", bytes.fromhex("d0cf11e0a1b11ae1") + bytes(600), "corrupted", ":"),
    ("broken.dat", b"\x78\x9f\x3e\x22" + b"\xff" * 40, "corrupted", "tnef:"),
    (
        "broken.szdd",
        b"SZDD\x88\xf0\x27\x33A\0" + struct.pack("<I", 1000) + b"\x00\x01",
        "corrupted",
        "szdd:",
    ),
    (
        "broken.hqx",
        b"(This file must be converted with BinHex 4.0)\n:!!!!:\n",
        "corrupted",
        "binhex:",
    ),
    ("broken.xar", b"xar!" + bytes(200), "corrupted", "xar:"),
    ("broken.iso", bytes(0x8001) + b"CD001" + bytes(4000), "corrupted", "iso:"),
    ("broken.lzh", b"\x00\x00-lh5-" + bytes(300), "corrupted", "lzh:"),
    ("broken.a", b"!<arch>\n" + b"\xff" * 100, "corrupted", "ar:"),
    ("broken.rar", b"Rar!\x1a\x07\x00" + bytes(100), "corrupted", "rar:"),
    ("a.alz", b"ALZ\x01" + bytes(100), "not_scanned", "alz:"),
]


@pytest.mark.parametrize(
    ("name", "data", "status", "reason"), UNREADABLE, ids=[u[0] for u in UNREADABLE]
)
def test_a_recognised_object_that_cannot_be_read_is_never_clean(
    gateway: Run, name: str, data: bytes, status: str, reason: str
) -> None:
    outcome = gateway.process(build_message(attachments=[(name, data)]))
    verdict = outcome.decision.verdict
    assert verdict.antivirus.value != "clean", name
    problems = [(s, d) for _c, s, d in av_findings(outcome) if d.get("object") == name]
    assert problems, av_findings(outcome)
    texts = [
        f"{d.get('reason', '')}{d.get('error', '')}{d.get('member', '')}" for _s, d in problems
    ]
    assert any(reason in text for text in texts), texts
    assert any(s in (status, "not_scanned", "corrupted", "encrypted") for s, _d in problems)


def test_a_symlink_unar_restores_is_never_followed_out_of_the_archive(tmp_path: Path) -> None:
    """unar restores an absolute symlink as it is: reading it as a member would scan (and
    account) any file of this host the sender names."""
    from mailwarden_antivirus.archives import ArchiveLimits, Unpacker
    from mailwarden_antivirus.readers.sevenzip_tool import read_with_7z

    ensure_packages("unar")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"a file of the host")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        link = tarfile.TarInfo("link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
        info = tarfile.TarInfo("real.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"real"))
    members = dict(read_with_7z(Unpacker(ArchiveLimits()), archive.getvalue(), "alz", tool="unar"))
    assert members == {"real.txt": b"real"}


def test_encrypted_ole2_documents_from_the_corpus_are_encrypted(gateway: Run) -> None:
    folder = corpus_dir() / "av" / "clamav-other-scanfiles" / "ole2_encryption"
    for path in sorted(folder.iterdir()):
        outcome = gateway.process(build_message(attachments=[(path.name, path.read_bytes())]))
        assert outcome.decision.verdict.antivirus.value == "encrypted", path.name


# -- depth counts containers, not layers -------------------------------------------------------


def test_tgz_in_tgz_five_deep_is_read_with_the_default_limits(gateway: Run) -> None:
    data = PAYLOAD
    name = "payload.com"
    for level in range(5):
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w:gz") as archive:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        data, name = tar.getvalue(), f"level{level}.tgz"
    outcome = gateway.process(build_message(attachments=[(name, data)]))
    assert outcome.decision.verdict.antivirus.value == "infected", av_findings(outcome)
    assert detected_inside(outcome, name)


# -- signature databases: PE section and import hashes, freshclam's containers, YARA ----------


def test_pe_section_and_import_hashes_match_what_clamscan_reports() -> None:
    from mailwarden_antivirus.signatures import load_signatures

    av = corpus_dir() / "av"
    base = av / "clamav-unit-sigs" / "pe_allmatch"
    expected = json.loads((av / "EXPECTED.json").read_text())["pe_allmatch"]
    files = [p for p in (base / "alert-sigs").iterdir() if p.suffix in (".mdb", ".msb", ".imp")]
    sigs = load_signatures(files)
    assert sigs.skipped == {}
    got = set(sigs.scan((base / "test.exe").read_bytes()))
    want = {
        name.removesuffix(".UNOFFICIAL")
        for name in expected["clamscan_1.4.6_detections"]
        if any(kind in name for kind in (".MDB_", ".MSB_", ".IMP_"))
    }
    assert len(want) >= 40
    assert got == want
    # a section hash never matches what is not a PE file, nor another PE
    assert sigs.scan((av / "clamav-samples" / "clam.exe").read_bytes()) == []


def cvd(files: dict[str, bytes], *, damage: bool = False) -> bytes:
    body = gzip.compress(_tar(files))
    digest = hashlib.md5(body).hexdigest()
    header = f"ClamAV-VDB:06 Dec 2026 10-00 +0000:1:{len(files)}:90:{digest}:X:tests:0"
    if damage:
        body = body[:-1] + bytes([body[-1] ^ 1])
    return header.encode().ljust(512, b" ") + body


def test_freshclam_containers_are_read_and_a_damaged_one_is_reported(tmp_path: Path) -> None:
    from mailwarden_antivirus.signatures import load_signatures

    hdb = f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Cvd.Eicar.Hash\n".encode()
    ndb = f"Cvd.Eicar.Body:0:*:{EICAR[:40].hex()}\n".encode()
    (tmp_path / "main.cvd").write_bytes(cvd({"main.hdb": hdb, "main.info": b"x"}))
    (tmp_path / "daily.cld").write_bytes(cvd({"daily.ndb": ndb, "daily.pdb": b"R:example\n"}))
    (tmp_path / "bytecode.cvd").write_bytes(cvd({"b.hdb": hdb}, damage=True))
    sigs = load_signatures([tmp_path])
    assert sorted(sigs.scan(b"x" + EICAR)) == ["Cvd.Eicar.Body"]
    assert sorted(sigs.scan(EICAR)) == ["Cvd.Eicar.Body", "Cvd.Eicar.Hash"]
    assert sigs.skipped == {
        ".cvd container not read: MD5 in the header does not match the contents "
        "(damaged download?)": 1,
        "phishing domain lists (.pdb)": 1,
    }


def test_yara_rules_skipped_without_yara_python_are_compiled_once_it_is_there(
    tmp_path: Path,
) -> None:
    """The compiled cache of a start without yara-python must not keep the skip."""
    from mailwarden_antivirus.signatures import load_signatures

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.yar").write_text('rule Found_It { strings: $a = "FIND-ME-YARA" condition: $a }\n')
    cache = tmp_path / "cache"
    # a Python where `import yara` fails, exactly as before `pip install yara-python`
    script = (
        "import sys, json; sys.modules['yara'] = None\n"
        "from pathlib import Path\n"
        "from mailwarden_antivirus.signatures import load_signatures\n"
        f"s = load_signatures([Path({str(rules)!r})], cache_dir=Path({str(cache)!r}))\n"
        "print(json.dumps(dict(s.skipped)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(proc.stdout.splitlines()[-1]) == {
        "YARA rules: yara-python is not installed": 1
    }
    sigs = load_signatures([rules], cache_dir=cache)
    assert sigs.skipped == {}
    assert sigs.scan(b"...FIND-ME-YARA...") == ["YARA.Found_It"]


# -- MIME evasions: every plausible reading is scanned ------------------------------------------


def _evasion(headers: str, body: str) -> bytes:
    eicar = base64.encodebytes(EICAR).decode()
    text = (
        "From: alice@example.org\nTo: bob@example.net\nSubject: evasion\nMIME-Version: 1.0\n"
        + headers
        + "\n"
        + body.replace("EICAR64", eicar.strip())
    )
    return text.replace("\n", "\r\n").encode()


_ATTACHMENT = (
    "Content-Type: application/octet-stream; name=e.com\n"
    "Content-Transfer-Encoding: base64\n\nEICAR64\n"
)
EVASIONS = {
    "HEADER_NAME_JUNK": _evasion(
        "Content-Type(x): multipart/mixed; boundary=b\n",
        f"--b\nContent-Type: text/plain\n\nhi\n--b\n{_ATTACHMENT}--b--\n",
    ),
    "DUPLICATE_CONTENT_TYPE": _evasion(
        "Content-Type: text/plain\nContent-Type: multipart/mixed; boundary=b\n",
        f"--b\nContent-Type: text/plain\n\nhi\n--b\n{_ATTACHMENT}--b--\n",
    ),
    "DUPLICATE_BOUNDARY": _evasion(
        'Content-Type: multipart/mixed; boundary="fake"; boundary="real"\n',
        f"--real\nContent-Type: text/plain\n\nhi\n--real\n{_ATTACHMENT}--real--\n",
    ),
    "NESTED_COMMENT": _evasion(
        'Content-Type: multipart/mixed; (x (y) boundary="b1"; ) boundary="b2"\n',
        f"--b1\nContent-Type: text/plain\n\nhi\n--b1\n{_ATTACHMENT}--b1--\n",
    ),
    "PART_OUTSIDE_BOUNDARIES": _evasion(
        "Content-Type: multipart/mixed; boundary=b\n",
        f"{_ATTACHMENT}--b\nContent-Type: text/plain\n\nhi\n--b--\n",
    ),
}


@pytest.mark.parametrize("flag", sorted(EVASIONS))
def test_mime_evasions_are_flagged_and_every_reading_scanned(gateway: Run, flag: str) -> None:
    from mailwarden_native import MalformationFlag, parse

    raw = EVASIONS[flag]
    assert parse(raw).flags & MalformationFlag[flag]
    outcome = gateway.process(raw)
    assert outcome.decision.verdict.antivirus.value == "infected", av_findings(outcome)
    objects = {d["object"] for c, _s, d in av_findings(outcome) if c == "AV_INFECTED"}
    # found in the decoded attachment of another reading, not in the raw message
    assert any(o.startswith("(") for o in objects), objects


def test_plain_messages_raise_no_evasion_flag() -> None:
    from mailwarden_native import MalformationFlag, parse

    evasions = (
        MalformationFlag.DUPLICATE_CONTENT_TYPE
        | MalformationFlag.DUPLICATE_BOUNDARY
        | MalformationFlag.HEADER_NAME_JUNK
        | MalformationFlag.NESTED_COMMENT
        | MalformationFlag.PART_OUTSIDE_BOUNDARIES
    )
    raw = build_message(attachments=[("a.txt", b"hello")], html="<p>hi</p>")
    commented = raw.replace(b"multipart/mixed;", b"multipart/mixed; (a comment)", 1)
    for message in (raw, commented):
        assert not parse(message).flags & evasions


# -- out of the box: freshclam's directory, and saying when only the test signature is loaded --


def _sigs_info(home: Path, config: str) -> str:
    from click.testing import CliRunner

    from mailwarden.cli import cli

    (home / "mailwarden.toml").write_text(f'[gateway]\nhome = "{home}"\n{config}')
    result = CliRunner().invoke(cli, ["sigs", "info", "--config", str(home / "mailwarden.toml")])
    assert result.exit_code == 0, result.output
    return result.output


def test_freshclam_directory_is_used_and_builtin_only_is_said_plainly(tmp_path: Path) -> None:
    from mailwarden_antivirus import AntivirusConfig

    assert AntivirusConfig().system_database == "/var/lib/clamav"
    freshclam = tmp_path / "clamav"
    freshclam.mkdir()
    empty = _sigs_info(tmp_path, f'[antivirus]\nsystem_database = "{freshclam}"\n')
    assert "WARNING           only the built-in EICAR test signature is loaded" in empty
    hdb = f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Freshclam.Eicar\n".encode()
    (freshclam / "daily.cvd").write_bytes(cvd({"daily.hdb": hdb}))
    config = f'[antivirus]\nsystem_database = "{freshclam}"\n'
    with_db = _sigs_info(tmp_path, config)
    assert "WARNING" not in with_db and "2 signatures loaded" in with_db
    run = Run(tmp_path / "home", config)
    try:
        outcome = run.process(build_message(attachments=[("e.com", EICAR)]))
        assert "Freshclam.Eicar" in outcome.decision.verdict.virus_names
        plugin = run.runner.gateway.plugins.plugins["antivirus"].obj
        assert "WARNING" not in plugin.banner_note()
    finally:
        run.close()
    run = Run(tmp_path / "home2", f'[antivirus]\nsystem_database = "{tmp_path / "none"}"\n')
    try:
        plugin = run.runner.gateway.plugins.plugins["antivirus"].obj
        assert plugin.banner_note().startswith("WARNING: only the built-in EICAR test signature")
    finally:
        run.close()


def test_the_dashboard_says_when_only_the_test_signature_is_loaded(tmp_path: Path) -> None:
    from tests.web.conftest import Web

    freshclam = tmp_path / "clamav"
    freshclam.mkdir()
    config = f'[antivirus]\nsystem_database = "{freshclam}"\n'
    warning = "WARNING: only the built-in EICAR test signature is loaded: no real virus"
    pages = []
    for home in ("home-empty", "home-freshclam"):
        web = Web(tmp_path / home, config)
        try:
            auditor, _ = web.login("auditor")
            page = auditor.get("/")
            assert page.status_code == 200
            pages.append(page.text[page.text.index('id="signatures"') :])
        finally:
            web.close()
        hdb = f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Freshclam.Eicar\n".encode()
        (freshclam / "daily.cvd").write_bytes(cvd({"daily.hdb": hdb}))
    assert warning in pages[0]
    assert warning not in pages[1] and "2 signatures loaded" in pages[1]


@settings(max_examples=12, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000))
def test_szdd_and_binhex_decoders_agree_with_the_debian_tools(data: bytes) -> None:
    from mailwarden_antivirus.archives import ArchiveLimits, Unpacker

    ensure_packages("mscompress", "macutils")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "f.bin").write_bytes(data)
        encoded = {"hqx": run(["binhex", "-d", "f.bin"], work)}
        run(["mscompress", "f.bin"], work)
        expected = {"hqx": data}
        if (work / "f.bin_").exists():  # mscompress leaves some short files alone
            encoded["szdd"] = (work / "f.bin_").read_bytes()
            # mscompress gets a few inputs wrong (b"\x01" comes back b"\x00"): the reference
            # is what Debian's msexpand makes of the file
            expected["szdd"] = run(["msexpand"], work, input=encoded["szdd"])
    for kind, sample in encoded.items():
        unpacker = Unpacker(ArchiveLimits())
        items = list(unpacker.walk(sample, kind, 1))
        # the decoded file may itself look like a damaged format (4 bytes of TNEF magic): only
        # the encoding is judged here
        assert [p for p in unpacker.problems if p.label == kind] == [], kind
        assert bytes(items[1].data) == expected[kind], kind
