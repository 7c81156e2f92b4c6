"""clamd's protocol on `mailwarden serve`: the real `clamdscan --stream` and raw INSTREAM."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.testing import build_message
from tests.conftest import EICAR, need
from tests.integration.protocols_serve import SPAM, Served, exchange, serve_protocols
from tests.integration.test_clamd import zipped
from tests.services import ensure_packages

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ensure_packages("clamdscan")
    with serve_protocols(tmp_path_factory.mktemp("clamd")) as server:
        yield server


def clamdscan(served: Served, tmp: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    conf = tmp / "clamd.conf"
    conf.write_text(f"TCPSocket {served.clamd}\nTCPAddr 127.0.0.1\n")
    return subprocess.run(
        ["clamdscan", "--config-file", str(conf), "--stream", "--no-summary", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_clamdscan_gets_our_antivirus_verdicts(served: Served, tmp_path: Path) -> None:
    files = {
        "clean.txt": b"nothing to see here\n",
        "eicar.com": EICAR,
        "nested.zip": zipped("inner.zip", zipped("eicar.com", EICAR)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    clean = clamdscan(served, tmp_path, tmp_path / "clean.txt")
    assert clean.returncode == 0, clean
    assert clean.stdout.strip() == f"{tmp_path / 'clean.txt'}: OK"
    # Two files, one infected (inside two archive levels): exit 1, a line per file.
    both = clamdscan(served, tmp_path, tmp_path / "eicar.com", tmp_path / "nested.zip")
    assert both.returncode == 1, both
    lines = both.stdout.strip().splitlines()
    assert lines[0] == f"{tmp_path / 'eicar.com'}: Eicar-Test-Signature FOUND"
    assert lines[1].startswith(f"{tmp_path / 'nested.zip'}: ") and lines[1].endswith(" FOUND")
    # Every scan is in the message event log under the listener's name.
    events = served.cli("events", "--json", "--status", "infected")
    assert events.returncode == 0, events
    ingresses = [json.loads(line)["ingress"] for line in events.stdout.splitlines()]
    assert ingresses.count("clamd") >= 2, ingresses


def test_what_we_cannot_look_into_is_found_not_ok(served: Served, tmp_path: Path) -> None:
    need(shutil.which("zip") is not None, "zip is not installed")
    (tmp_path / "secret.txt").write_bytes(b"what is in here?\n")
    archive = tmp_path / "secret.zip"
    subprocess.run(
        ["zip", "-q", "-j", "-P", "password", str(archive), str(tmp_path / "secret.txt")],
        check=True,
        timeout=30,
    )
    result = clamdscan(served, tmp_path, archive)
    assert result.returncode == 1, result
    assert result.stdout.strip() == f"{archive}: Mailwarden.NotScanned.Encrypted FOUND"


def test_a_limit_hit_is_found_not_ok_and_spam_is_no_virus(served: Served, tmp_path: Path) -> None:
    # 2 MB of zeros in a zip: far over the antivirus's decompression ratio limit (250).
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zipped("zeros.bin", bytes(2 * 1024 * 1024)))
    result = clamdscan(served, tmp_path, bomb)
    assert result.returncode == 1, result
    assert result.stdout.strip() == f"{bomb}: Mailwarden.NotScanned.MaxRatio FOUND"
    # clamd's protocol is antivirus only: GTUBE is no virus.
    spam = tmp_path / "gtube.eml"
    spam.write_bytes(SPAM)
    assert clamdscan(served, tmp_path, spam).stdout.strip() == f"{spam}: OK"


def test_a_stream_over_max_size_is_refused(served: Served, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (1024 * 1024 + 1))  # [clamd] max_size = 1 MiB in serve_protocols
    result = clamdscan(served, tmp_path, big)
    assert result.returncode == 2, result
    assert "INSTREAM size limit exceeded" in result.stdout + result.stderr


def instream(data: bytes, prefix: bytes = b"z", chunk: int = 7) -> bytes:
    end = b"\0" if prefix == b"z" else b"\n"
    body = b"".join(
        struct.pack(">I", len(data[i : i + chunk])) + data[i : i + chunk]
        for i in range(0, len(data), chunk)
    )
    return prefix + b"INSTREAM" + end + body + struct.pack(">I", 0)


def test_command_forms_and_sessions(served: Served) -> None:
    port = served.clamd
    assert exchange(port, b"zPING\0") == b"PONG\0"
    assert exchange(port, b"nPING\n") == b"PONG\n"
    assert exchange(port, b"PING\n") == b"PONG\n"
    assert exchange(port, b"nVERSION\n").startswith(b"mailwarden ")
    assert exchange(port, instream(EICAR)) == b"stream: Eicar-Test-Signature FOUND\0"
    assert exchange(port, instream(b"hello\n", b"n")) == b"stream: OK\n"
    session = b"zIDSESSION\0zPING\0" + instream(EICAR) + b"zEND\0"
    assert exchange(port, session) == b"1: PONG\0" + b"2: stream: Eicar-Test-Signature FOUND\0"
    # Exim's scan file: the message after an mbox "From " line, LF line ends.
    eml = build_message(attachments=[("eicar.com", EICAR)]).replace(b"\r\n", b"\n")
    mbox = b"From MAILER-DAEMON Sun Dec 06 16:33:47 2026\n" + eml
    assert exchange(port, instream(mbox, chunk=4096)) == b"stream: Eicar-Test-Signature FOUND\0"
    # We never read the client's files.
    assert exchange(port, b"zSCAN /etc/passwd\0") == b"UNKNOWN COMMAND\0"
