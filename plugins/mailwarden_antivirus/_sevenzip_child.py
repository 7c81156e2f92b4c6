"""Reads one 7z archive in a child process: ``python _sevenzip_child.py LIMITS_JSON``.

py7zr parses a 7z header in pure Python with no way to stop it part way: a 1 MB archive
listing 400,000 empty entries kept it busy for half a minute, past every time limit of the
antivirus. Run here, the reader can be killed at the unpacker's deadline (the parent does
that), and the entry count is read from the header before py7zr builds its per-entry objects.

Input: the archive on stdin. Output on stdout: one ``M`` record per member (``>I`` name
length, UTF-8 name, ``>Q`` data length, data), then one ``E`` record (``>I`` length, JSON
``{"status": ..., ...}``) saying how reading ended: ``ok``, ``refused`` (the header lists
more entries than may be taken out; nothing was read), ``limit`` (a size, ratio or member
limit was passed while extracting), ``encrypted``, ``unsupported`` or ``corrupted``
(``exception`` and ``error`` name what the reader raised). Members written before a failure
are still sent: a damaged last member must not hide the first.

Only the standard library and py7zr are imported here, so the child starts fast and never
loads the gateway.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
from typing import Any, BinaryIO


class LimitHit(Exception):
    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(detail)
        self.limit = limit


def declared_entries(py7zr: Any, data: bytes, allowed: int) -> int:
    """How many entries the header lists (at least ``allowed + 1`` when it lists more), read
    without building py7zr's per-entry objects; the encoded header is decoded by py7zr."""
    from py7zr import archiveinfo
    from py7zr.properties import PROPERTY

    def streams(fp: BinaryIO) -> int:
        # PackInfo and UnpackInfo cost one object per folder; the sizes and CRCs of the
        # substreams (one per file) are what grows with the entry count, so count those first.
        pid = fp.read(1)
        if pid == PROPERTY.PACK_INFO:
            archiveinfo.PackInfo.retrieve(fp)
            pid = fp.read(1)
        folders = 0
        if pid == PROPERTY.UNPACK_INFO:
            folders = archiveinfo.UnpackInfo.retrieve(fp).numfolders
            pid = fp.read(1)
        if pid == PROPERTY.SUBSTREAMS_INFO and fp.read(1) == PROPERTY.NUM_UNPACK_STREAM:
            total = 0
            for _ in range(folders):
                total += archiveinfo.read_uint64(fp)
                if total > allowed:
                    break
            return total
        return folders

    class Counting(archiveinfo.Header):
        entries = 0

        def _extract_header_info(self, fp: BinaryIO) -> None:
            pid = fp.read(1)
            if pid == PROPERTY.MAIN_STREAMS_INFO:
                start = fp.tell()
                self.entries = streams(fp)
                if self.entries > allowed:
                    return
                fp.seek(start)
                archiveinfo.StreamsInfo.retrieve(fp)
                pid = fp.read(1)
            if pid == PROPERTY.FILES_INFO:
                self.entries = max(self.entries, archiveinfo.read_uint64(fp))

    fp = io.BytesIO(data)
    signature = archiveinfo.SignatureHeader.retrieve(fp)
    after = fp.tell()
    fp.seek(signature.nextheaderofs, os.SEEK_CUR)
    header = io.BytesIO(fp.read(signature.nextheadersize))
    counted = Counting.retrieve(fp, header, after)
    return int(counted.entries)


def extract(data: bytes, limits: dict[str, Any], out: BinaryIO) -> dict[str, Any]:
    import py7zr
    import py7zr.io

    allowed = int(limits["members"])
    room = int(limits["room"])
    try:
        listed = declared_entries(py7zr, data, allowed)
    except Exception:  # the real reader below reports what is wrong with the header
        listed = 0
    if listed > allowed:
        return {
            "status": "refused",
            "limit": "max_members",
            "detail": f"the 7z header lists over {allowed} entries; none was read",
        }

    state = {"members": 0, "total": 0}

    class Capped(py7zr.io.Py7zIO):
        def __init__(self, packed: int) -> None:
            self.buffer = io.BytesIO()
            self.packed = packed

        def write(self, s: bytes | bytearray) -> int:
            state["total"] += len(s)
            if state["total"] > room:
                raise LimitHit("max_total_size", "members decompress to over the size limit")
            out_size = self.buffer.tell() + len(s)
            if out_size > limits["ratio_floor"] and out_size > self.packed * limits["ratio"]:
                raise LimitHit("max_ratio", f"a member decompresses over {limits['ratio']:g} times")
            return self.buffer.write(s)

        def read(self, size: int | None = None) -> bytes:
            return self.buffer.read(size)

        def seek(self, offset: int, whence: int = 0) -> int:
            return self.buffer.seek(offset, whence)

        def flush(self) -> None:
            return None

        def size(self) -> int:
            return self.buffer.getbuffer().nbytes

    class Factory(py7zr.io.WriterFactory):
        def __init__(self) -> None:
            self.products: dict[str, Capped] = {}

        def create(self, filename: str) -> py7zr.io.Py7zIO:
            state["members"] += 1
            if state["members"] > allowed:
                raise LimitHit("max_members", "more members than the limit")
            product = self.products[filename] = Capped(max(len(data), 1))
            return product

    factory = Factory()
    result: dict[str, Any] = {"status": "ok"}
    try:
        with py7zr.SevenZipFile(io.BytesIO(data)) as archive:
            if archive.needs_password():
                return {"status": "encrypted"}
            archive.extractall(factory=factory)
    except LimitHit as hit:
        return {"status": "limit", "limit": hit.limit, "detail": str(hit)}
    except py7zr.exceptions.PasswordRequired:
        return {"status": "encrypted"}
    except py7zr.exceptions.UnsupportedCompressionMethodError as exc:
        result = {"status": "unsupported", "detail": str(exc)[:200]}
    except Exception as exc:  # CrcError, zlib.error, AssertionError, ...: this archive only
        result = {"status": "corrupted", "exception": type(exc).__name__, "error": str(exc)[:200]}
    for name, product in factory.products.items():
        encoded = name.encode("utf-8", "surrogateescape")
        body = product.buffer.getvalue()
        out.write(b"M" + struct.pack(">I", len(encoded)) + encoded)
        out.write(struct.pack(">Q", len(body)) + body)
    return result


def main() -> None:
    limits = json.loads(sys.argv[1])
    data = sys.stdin.buffer.read()
    out = sys.stdout.buffer
    result = extract(data, limits, out)
    end = json.dumps(result).encode()
    out.write(b"E" + struct.pack(">I", len(end)) + end)
    out.flush()


if __name__ == "__main__":
    main()
