"""ARJ, CHM and NSIS installers through the ``7z`` program (Debian's ``7zip``/``p7zip-full``),
ALZip archives through ``unar`` (Debian's ``unar``, The Unarchiver's XADMaster), and LHA
archives through ``lha`` (Debian's ``lhasa``), then ``unar``, where libarchive gives up.

libarchive reads none of the first four, and not every LHA method or header (lh1, for one).
The program extracts into a private temporary directory, with the
size of any file it writes capped by RLIMIT_FSIZE at what the message may still decompress and
with the time left for the message as its timeout; the files are then read back through the
budget like any other member.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import Corrupt, Encrypted, LimitHit, Unsupported
from . import Budget, Members

#: the Debian package that installs each program
PACKAGES = {"7z": "p7zip-full", "lhasa": "lhasa", "unar": "unar"}


def _program() -> str | None:
    for name in ("7z", "7zz", "7za"):
        found = shutil.which(name)
        if found:
            return found
    return None


def read_with_7z(
    budget: Budget, data: bytes, fmt: str, *, count: bool = True, tool: str = "7z"
) -> Members:
    """The files of an archive 7z (or ``tool="lhasa"`` or ``"unar"``) opens, each accounted as
    a member (unless ``count`` is false: the caller counts the ones it keeps)."""
    program = _program() if tool == "7z" else shutil.which(tool)
    if program is None:
        raise Unsupported(
            f"{fmt}: the {tool} program is not installed (apt-get install {PACKAGES[tool]})"
        )
    room = max(budget._room(), 1)
    seconds = max(budget._seconds_left(), 0.1)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (room + 1, room + 1))

    with tempfile.TemporaryDirectory(prefix="mw-7z-") as tmp:
        archive = Path(tmp) / f"object.{fmt}"
        archive.write_bytes(data)
        out = Path(tmp) / "out"
        out.mkdir()
        argv = [program, "x", "-y", "-bd", "-p", f"-o{out}", str(archive)]
        if tool == "lhasa":
            argv = [program, f"xqw={out}", str(archive)]
        elif tool == "unar":
            # -nr: an archive inside is walked (and counted) here, not unpacked by unar; an
            # empty password makes an encrypted archive fail instead of asking for one
            argv = [program, "-q", "-f", "-D", "-nr", "-k", "skip", "-p", "", "-o", str(out)]
            argv.append(str(archive))
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=seconds,
                preexec_fn=cap,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise LimitHit("max_seconds", f"{fmt}: {tool} ran out of the unpacking time") from None
        text = proc.stdout + proc.stderr
        if "wrong password" in text.lower() or "encrypted" in text.lower():
            raise Encrypted(f"{fmt}: password-protected")
        if proc.returncode != 0 and "Unsupported" in text:
            raise Unsupported(f"{fmt}: 7z: unsupported method")
        # a symlink an archive made (unar and 7z restore them) may point anywhere on this host
        files = sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink())
        if proc.returncode != 0 and not files:
            # GNUstep (under unar) logs date warnings on stderr: not the reason
            said = [line for line in text.splitlines() if line.strip() and "NSCalendar" not in line]
            last = said[-1:] or ["failed"]
            raise Corrupt(f"{fmt}: {tool}: {last[0][:200]}")
        for path in files:
            if count:
                budget._member()
            size = path.stat().st_size
            budget._grow(size)
            budget._ratio(size, len(data))
            name = os.fsencode(os.path.relpath(path, out)).decode("utf-8", "replace")
            yield name, path.read_bytes()
        if proc.returncode != 0:
            raise Corrupt(f"{fmt}: {tool} stopped with status {proc.returncode}")


def read_with_unar(budget: Budget, data: bytes, fmt: str) -> Members:
    """The files of an archive only ``unar`` reads here (ALZip)."""
    return read_with_7z(budget, data, fmt, tool="unar")
