"""Packed executables and installers: UPX unpacked with ``upx -d`` when the program is there,
other packers (and UPX without the program) reported as not unpacked, by name.

The packer is recognised from the section names it leaves (as ClamAV's PE unpackers and
PEiD do); NSIS installers from their ``NullsoftInst`` first header (then 7z opens them) and
InstallShield ones from their stream markers.
"""

from __future__ import annotations

import shutil
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


def sections(data: bytes | memoryview) -> list[bytes]:
    """The section names of a PE file (empty when the headers are cut off)."""
    raw = bytes(data[:4096])
    if len(raw) < 0x40:
        return []
    (pe,) = struct.unpack_from("<I", raw, 0x3C)
    if pe + 24 > len(raw):
        return []
    (count,) = struct.unpack_from("<H", raw, pe + 6)
    (optional,) = struct.unpack_from("<H", raw, pe + 20)
    table = pe + 24 + optional
    names = []
    for i in range(min(count, 96)):
        at = table + 40 * i
        if at + 8 > len(raw):
            break
        names.append(raw[at : at + 8].rstrip(b"\0"))
    return names


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
    if found == "UPX":
        return "pe-upx"
    if found:
        return "pe-packed"
    raw = bytes(data)
    if b"\xef\xbe\xad\xdeNullsoftInst" in raw:
        return "nsis"
    if b"InstallShield" in raw[-65536:] or b"ISSetupStream" in raw:
        return "installshield"
    return "pe"


def read_packed(budget: Budget, data: bytes, kind: str) -> Members:
    """The unpacked image of a UPX-packed PE; other packers are reported by name."""
    name = packer(data) or "unknown packer"
    program = shutil.which("upx") or shutil.which("upx-ucl")
    if kind != "pe-upx":
        raise Unsupported(f"pe: packed with {name}, not unpacked")
    if program is None:
        raise Unsupported("pe: packed with UPX, not unpacked (the upx program is not installed)")
    with tempfile.TemporaryDirectory(prefix="mw-upx-") as tmp:
        packed = Path(tmp) / "packed.exe"
        packed.write_bytes(data)
        out = Path(tmp) / "unpacked.exe"
        try:
            proc = subprocess.run(
                [program, "-d", "-q", "-o", str(out), str(packed)],
                capture_output=True,
                text=True,
                timeout=max(budget._seconds_left(), 0.1),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise LimitHit("max_seconds", "pe: upx -d ran out of the unpacking time") from None
        if proc.returncode != 0 or not out.is_file():
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
            raise Corrupt(f"pe: UPX-packed, upx -d: {detail[0][:200]}")
        budget._member()
        size = out.stat().st_size
        budget._grow(size)
        budget._ratio(size, len(data))
        yield "(unpacked by upx)", out.read_bytes()
