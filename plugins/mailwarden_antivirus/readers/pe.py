"""Packed executables and installers: UPX unpacked with ``upx -d`` when the program is there,
other packers (and UPX without the program) reported as not unpacked, by name.

The packer is recognised from the section names it leaves (as ClamAV's PE unpackers and
PEiD do); NSIS installers from their ``NullsoftInst`` first header (then 7z opens them) and
InstallShield ones from their stream markers.
"""

from __future__ import annotations

import resource
import shutil
import signal
import struct
import subprocess
import tempfile
from pathlib import Path

from ..errors import Corrupt, LimitHit, Unsupported
from . import Budget, Members

#: section name prefix -> packer
PACKERS = {
    b"UPX": "UPX",
    b".aspack": "ASPack",
    b".adata": "ASPack",
    b"ASPack": "ASPack",
    b".MPRESS": "MPRESS",
    b"PEC2": "PECompact",
    b"pec": "PECompact",
    b".petite": "Petite",
    b".nsp": "NsPack",
    b"nsp": "NsPack",
    b"FSG!": "FSG",
    b"MEW": "MEW",
    b".yP": "Y0da",
    b".packed": "Upack",
    b".Upack": "Upack",
    b".themida": "Themida",
    b".vmp": "VMProtect",
    b".enigma": "Enigma",
    b"kkrunchy": "kkrunchy",
}


def _headers(data: bytes | memoryview) -> tuple[bytes, int, int]:
    """The first 4 KiB of a PE file, the offset of its section table and its section count
    (a count of 0 when the headers are cut off)."""
    raw = bytes(data[:4096])
    if len(raw) < 0x40:
        return raw, 0, 0
    (pe,) = struct.unpack_from("<I", raw, 0x3C)
    if pe + 24 > len(raw):
        return raw, 0, 0
    (count,) = struct.unpack_from("<H", raw, pe + 6)
    (optional,) = struct.unpack_from("<H", raw, pe + 20)
    return raw, pe + 24 + optional, min(count, 96)


def sections(data: bytes | memoryview) -> list[bytes]:
    """The section names of a PE file (empty when the headers are cut off)."""
    raw, table, count = _headers(data)
    names = []
    for i in range(count):
        at = table + 40 * i
        if at + 8 > len(raw):
            break
        names.append(raw[at : at + 8].rstrip(b"\0"))
    return names


def _upx_marker(data: bytes | memoryview) -> bool:
    """Whether UPX's pack header (``UPX!``) sits in the PE headers, after the section table:
    where upx writes it, and kept when the sections are renamed to hide the packer."""
    raw, table, count = _headers(data)
    return count > 0 and raw.find(b"UPX!", table + 40 * count, 1024) >= 0


def packer(data: bytes | memoryview) -> str | None:
    """The packer a PE file's section names betray, if any."""
    for name in sections(data):
        for prefix, packer_name in PACKERS.items():
            if name.startswith(prefix):
                return packer_name
    return None


def pe_kind(data: bytes | memoryview) -> str:
    """``pe-upx``, ``pe-packed``, ``nsis``, ``installshield`` or plain ``pe``."""
    found = packer(data)
    if found == "UPX" or (found is None and _upx_marker(data)):
        return "pe-upx"
    if found:
        return "pe-packed"
    raw = bytes(data)
    if b"\xef\xbe\xad\xdeNullsoftInst" in raw:
        return "nsis"
    if b"InstallShield" in raw[-65536:] or b"ISSetupStream" in raw:
        return "installshield"
    return "pe"


def _upx_names(data: bytes) -> bytes:
    """``data`` with its first sections named as upx named them (UPX0, UPX1, UPX2), when they
    were renamed: upx -d refuses such a file ("modified/hacked/protected") although its packed
    data is intact, and ClamAV, whose unpacker ignores the names, finds what is inside."""
    names = sections(data)
    if len(names) < 2 or names[0].startswith(b"UPX"):
        return data
    _raw, table, _count = _headers(data)
    fixed = bytearray(data)
    for i, name in enumerate(names[:3]):
        if i == 2 and name == b".rsrc":  # upx keeps the resources' name when there are some
            break
        fixed[table + 40 * i : table + 40 * i + 8] = (b"UPX%d" % i).ljust(8, b"\0")
    return bytes(fixed)


def read_packed(budget: Budget, data: bytes, kind: str) -> Members:
    """The unpacked image of a UPX-packed PE; other packers are reported by name.

    ``upx -d`` runs on a copy in a private temporary directory (it only decompresses: the
    sample is never run), with the time left for the message as its timeout and the size of
    the file it writes capped by RLIMIT_FSIZE at what the message may still decompress.
    """
    if kind != "pe-upx":
        raise Unsupported(f"pe: packed with {packer(data) or 'unknown packer'}, not unpacked")
    program = shutil.which("upx") or shutil.which("upx-ucl")
    if program is None:
        raise Unsupported("pe: packed with UPX, not unpacked (the upx program is not installed)")
    room = max(budget._room(), 1)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (room + 1, room + 1))

    with tempfile.TemporaryDirectory(prefix="mw-upx-") as tmp:
        packed = Path(tmp) / "packed.exe"
        packed.write_bytes(_upx_names(data))
        out = Path(tmp) / "unpacked.exe"
        try:
            proc = subprocess.run(
                [program, "-d", "-q", "--no-color", "-o", str(out), str(packed)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=max(budget._seconds_left(), 0.1),
                preexec_fn=cap,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise LimitHit("max_seconds", "pe: upx -d ran out of the unpacking time") from None
        size = out.stat().st_size if out.is_file() else 0
        if size > room or proc.returncode == -signal.SIGXFSZ:
            raise LimitHit("max_total_size", f"pe: the image upx unpacks is over {room} bytes")
        if proc.returncode != 0 or not out.is_file():
            # the error is on stderr ("upx: /tmp/.../packed.exe: CantUnpackException: header
            # corrupted"), the summary on stdout ("Unpacked 0 files.")
            said = [line for line in proc.stderr.splitlines() if line.strip()]
            detail = said[-1].rsplit(f"{packed}: ", 1)[-1] if said else f"status {proc.returncode}"
            raise Corrupt(f"pe: packed with UPX, unpack failed: {detail[:200]}")
        budget._member()
        budget._grow(size)
        budget._ratio(size, len(data))
        yield "(unpacked by upx)", out.read_bytes()
