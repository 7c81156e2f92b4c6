"""UPX-packed PE files: programs linked here by binutils (``as`` and ``ld``'s PE emulations,
Debian's own binutils) with the EICAR file in their data, packed by the real ``upx`` (Debian's
upx-ucl), then sent as attachments. The unpacked image is scanned, what ``clamscan`` finds in
the same files is found, and a file upx cannot unpack is never called clean.

ClamAV's shared ``clam.exe`` cannot be the sample: upx refuses it (``CantPackException: bad
dllname``), so the programs are linked here instead.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from mailwarden.testing import build_message
from tests.conftest import EICAR
from tests.services import ensure_packages, ensure_upx
from tests.unit import test_av_formats
from tests.unit.test_antivirus import Run, av_findings, process_with
from tests.unit.test_av_formats import clamscan_finds

# One import (KERNEL32!ExitProcess), so upx sees an ordinary console program. The import
# table's RVAs are written as address - image base, the base being fixed at link time.
_PROGRAM = """
        .text
        .globl _start
_start:
{code}
        .section .idata$2,"w"
        .long ilt - 0x400000, 0, 0, dllname - 0x400000, iat - 0x400000
        .long 0, 0, 0, 0, 0
        .section .idata$4,"w"
ilt:    {word} exit_name - 0x400000, 0
        .section .idata$5,"w"
iat:
__imp_ExitProcess: {word} exit_name - 0x400000, 0
        .section .idata$6,"w"
exit_name: .short 0
        .asciz "ExitProcess"
        .balign 2
dllname: .asciz "KERNEL32.dll"
        .data
payload: .incbin "payload.com"
        .fill {zeros}, 1, 0
"""
_ARCH = {
    32: ("--32", "i386pe", "long", "        pushl $0\n        call *__imp_ExitProcess"),
    64: (
        "--64",
        "i386pep",
        "quad",
        "        sub $40, %rsp\n        xor %ecx, %ecx\n        call *__imp_ExitProcess(%rip)",
    ),
}
UNPACKED = "(unpacked by upx)"
PAYLOAD = EICAR + b"\n" + bytes(range(256)) * 16


def run(argv: list[str], cwd: Path) -> None:
    subprocess.run(
        argv, cwd=cwd, capture_output=True, check=True, timeout=120, stdin=subprocess.DEVNULL
    )


def packed_program(
    upx: str, work: Path, bits: int, *, zeros: int = 0, payload: bytes = PAYLOAD
) -> bytes:
    """A PE program (PE32 or PE32+) carrying ``payload`` in its data, packed with upx
    (benchmarks/av builds a 10 MB one with it)."""
    flag, emulation, word, code = _ARCH[bits]
    (work / "payload.com").write_bytes(payload)
    (work / "p.s").write_text(_PROGRAM.format(code=code, word=f".{word}", zeros=zeros))
    run(["as", flag, "-o", "p.o", "p.s"], work)
    link = ["ld", "-m", emulation, "--image-base", "0x400000", "-e", "_start"]
    run([*link, "--subsystem", "console", "-o", "p.exe", "p.o"], work)
    run([upx, "-q", "-f", "-o", "p.upx.exe", "p.exe"], work)
    packed = (work / "p.upx.exe").read_bytes()
    for name in ("p.o", "p.exe", "p.upx.exe"):
        (work / name).unlink()
    return packed


def renamed(packed: bytes) -> bytes:
    """The packed file with its sections renamed (UPX0 -> .text...), as malware hides upx."""
    out = bytearray(packed)
    for old, new in ((b"UPX0", b".text"), (b"UPX1", b".data"), (b"UPX2", b".rdata")):
        at = out.find(old + b"\0", 0, 1024)
        assert at > 0
        out[at : at + 8] = new.ljust(8, b"\0")
    return bytes(out)


@pytest.fixture(scope="module")
def upx() -> str:
    ensure_packages("binutils")
    return ensure_upx()


@pytest.fixture(scope="module")
def samples(upx: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("upx")
    pe32 = packed_program(upx, work, 32)
    return {
        "packed32.exe": pe32,
        "packed64.exe": packed_program(upx, work, 64),
        "renamed.exe": renamed(pe32),
    }


gateway = test_av_formats.gateway  # one gateway for the module's tests


def findings_on(outcome: object, name: str) -> list[tuple[str, str, dict[str, str]]]:
    return [f for f in av_findings(outcome) if f[2].get("object", "").startswith(name)]


def test_upx_packed_programs_are_unpacked_and_what_clamscan_finds_is_found(
    samples: dict[str, bytes], gateway: Run, tmp_path: Path
) -> None:
    for name, data in samples.items():
        assert EICAR not in data  # only the unpacked image shows it
        outcome = gateway.process(build_message(attachments=[(name, data)]))
        found = [d["object"] for code, _s, d in findings_on(outcome, name) if code == "AV_INFECTED"]
        assert found == [f"{name}/{UNPACKED}"], (name, av_findings(outcome))
        assert outcome.decision.verdict.antivirus.value == "infected"
    theirs = clamscan_finds(samples, tmp_path)
    # ClamAV's own unpacker reads the PE32 ones (renamed sections too): real UPX files
    assert {"packed32.exe", "renamed.exe"} <= theirs
    assert theirs <= set(samples)  # all of which mailwarden detected above


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_upx_file_is_corrupted_with_upx_s_reason_never_clean(
    samples: dict[str, bytes], gateway: Run, damage: str
) -> None:
    data = bytearray(samples["packed32.exe"])
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:  # the compressed image (UPX1's first bytes): upx's checksum catches it
        header = data.find(b"UPX1\0", 0, 1024)
        (start,) = struct.unpack_from("<I", data, header + 20)  # PointerToRawData
        for at in range(start + 16, start + 80):
            data[at] ^= 0x55
    outcome = gateway.process(build_message(attachments=[("damaged.exe", bytes(data))]))
    assert outcome.decision.verdict.antivirus.value != "clean"
    problems = findings_on(outcome, "damaged.exe")
    assert [(code, status) for code, status, _d in problems] == [("AV_CORRUPTED", "corrupted")]
    error = problems[0][2]["error"]
    assert error.startswith("pe: packed with UPX, unpack failed: "), error
    assert "Exception" in error  # upx's own words (CantUnpackException, checksum error)


def test_an_image_over_the_size_limit_stops_upx_and_is_not_scanned(
    upx: str, tmp_path: Path
) -> None:
    """2 MB of image from 20 KB of packed file: upx's writes stop at the message's limit."""
    data = packed_program(upx, tmp_path, 32, zeros=2_000_000)
    assert len(data) < 100_000
    config = "[antivirus.limits]\nmax_total_size = 1000000\nmax_ratio = 100000\n"
    outcome = process_with(tmp_path, build_message(attachments=[("big.exe", data)]), config)
    assert outcome.decision.verdict.antivirus.value != "clean"
    problems = findings_on(outcome, "big.exe")
    assert [(code, d.get("limit")) for code, _s, d in problems] == [
        ("AV_NOT_SCANNED", "max_total_size")
    ]
    assert problems[0][2]["reason"].startswith("pe: the image upx unpacks is over ")
