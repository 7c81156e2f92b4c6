"""Antivirus readers: MB/s of the unpacking walk per format, on a 10 MB sample of each.

Usage: python benchmarks/av/bench_readers.py [--size MB] [--rounds R]

Each sample is built with the same tools and writers as tests/unit/test_av_formats.py (Debian's
7z, cpio, arj, jlha, gcab, xorriso, zstd, ar, mscompress, binhex, upx; libarchive, pikepdf; the
tests' OLE2, TNEF, RTF and OneNote writers) around one payload of SIZE MB of text-like bytes
(random words: compressible about 2:1, like documents). The walk is the antivirus's
``Unpacker.walk`` with the default limits, signatures not run: the figure is what reading the
format costs. MB/s is the sample's size over the median walk time of R rounds; the ratio column
compares with zip (Deflate, the standard library's zipfile) in the same run, because only
ratios carry between runs on a shared machine. The OLE2 sample is capped at 6 MB (the tests'
compound-file writer has no DIFAT sectors).
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mailwarden_antivirus.archives import ArchiveLimits, Unpacker  # noqa: E402
from tests.conftest import EICAR  # noqa: E402
from tests.unit import test_av_formats as builders  # noqa: E402
from tests.unit.test_av_upx import packed_program  # noqa: E402


def payload(size: int) -> bytes:
    rng = random.Random(18)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(5000)
    ]
    out = bytearray(EICAR + b"\n")
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:size])


def samples(size: int) -> dict[str, bytes]:
    data = payload(size)
    with tempfile.TemporaryDirectory() as tmp:
        out = {
            **builders.tool_samples(Path(tmp), data),
            **builders.library_samples(Path(tmp), data),
        }
        upx = shutil.which("upx") or shutil.which("upx-ucl")
        if upx:  # contrib/debian/install-upx.sh installs it
            out["packed.exe"] = packed_program(upx, Path(tmp), 32, payload=data)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("payload.com", data)
    # the same zip without its central directory (a split archive's first volume, a cut
    # download): read by its local headers
    whole = zipped.getvalue()
    out = {
        "deflate.zip": whole,
        "no-central-directory.zip": whole[: whole.rfind(b"PK\x01\x02")],
        **out,
    }
    return out


def walk_seconds(data: bytes, name: str) -> tuple[float, int, list[str]]:
    unpacker = Unpacker(ArchiveLimits(max_seconds=600, max_ratio=1e6, max_total_size=1 << 30))
    start = time.perf_counter()
    out = sum(len(item.data) for item in unpacker.walk(data, name, 1))
    elapsed = time.perf_counter() - start
    return elapsed, out, [f"{p.status}: {p.details}" for p in unpacker.problems]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=10.0, help="payload MB (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    built = samples(int(args.size * 1024 * 1024))
    rates: dict[str, tuple[float, int, int]] = {}
    for name, data in built.items():
        times = []
        for _ in range(args.rounds):
            seconds, out, problems = walk_seconds(data, name)
            times.append(seconds)
        if problems:
            print(f"# {name}: {problems}", file=sys.stderr)
        rates[name] = (len(data) / 1e6 / statistics.median(times), len(data), out)
    base = rates["deflate.zip"][0]
    print("| sample | size MB | walked out MB | MB/s | vs zip Deflate |")
    print("|---|---:|---:|---:|---:|")
    for name, (rate, size, out) in rates.items():
        print(f"| {name} | {size / 1e6:.1f} | {out / 1e6:.1f} | {rate:.1f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
