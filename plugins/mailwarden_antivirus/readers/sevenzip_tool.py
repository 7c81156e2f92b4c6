"""ARJ, CHM and NSIS installers through the ``7z`` program (Debian's ``7zip``/``p7zip-full``),
and LHA archives through ``lha`` (Debian's ``lhasa``) where libarchive gives up.

libarchive reads none of the first three, and not every LHA method (lh1, for one).
7z extracts into a private temporary directory, with the
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

from ..archives import _Corrupt, _Encrypted, _LimitHit, _Unsupported
from . import Budget, Members


def _program() -> str | None:
    for name in ("7z", "7zz", "7za"):
        found = shutil.which(name)
        if found:
            return found
    return None


def read_with_7z(
    budget: Budget, data: bytes, fmt: str, *, count: bool = True, tool: str = "7z"
) -> Members:
    """The files of an archive 7z (or ``tool="lhasa"``) opens, each accounted as a member
    (unless ``count`` is false: the caller counts the ones it keeps)."""
    program = _program() if tool == "7z" else shutil.which(tool)
    if program is None:
        package = "7zip" if tool == "7z" else "lhasa"
        raise _Unsupported(
            f"{fmt}: the {tool} program is not installed (apt-get install {package})"
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
            raise _LimitHit("max_seconds", f"{fmt}: {tool} ran out of the unpacking time") from None
        text = proc.stdout + proc.stderr
        if "Wrong password" in text or "encrypted" in text.lower():
            raise _Encrypted(f"{fmt}: password-protected")
        if proc.returncode != 0 and "Unsupported" in text:
            raise _Unsupported(f"{fmt}: 7z: unsupported method")
        files = sorted(p for p in out.rglob("*") if p.is_file())
        if proc.returncode != 0 and not files:
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["failed"]
            raise _Corrupt(f"{fmt}: {tool}: {last[0][:200]}")
        for path in files:
            if count:
                budget._member()
            size = path.stat().st_size
            budget._grow(size)
            budget._ratio(size, len(data))
            name = os.fsencode(os.path.relpath(path, out)).decode("utf-8", "replace")
            yield name, path.read_bytes()
        if proc.returncode != 0:
            raise _Corrupt(f"{fmt}: {tool} stopped with status {proc.returncode}")
