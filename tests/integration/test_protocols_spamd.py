"""SpamAssassin's spamd protocol on `mailwarden serve`, driven by the real `spamc`."""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.testing import build_message
from tests.integration.protocols_serve import (
    CLEAN,
    GTUBE,
    INFECTED,
    SPAM,
    Served,
    exchange,
    serve_protocols,
)
from tests.services import ensure_packages

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ensure_packages("spamc")
    with serve_protocols(tmp_path_factory.mktemp("spamd")) as server:
        yield server


def spamc(served: Served, message: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["spamc", "-d", "127.0.0.1", "-p", str(served.spamd), "-x", *args],
        input=message,
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_spamc_check_clean_spam_and_infected(served: Served) -> None:
    clean = spamc(served, CLEAN, "-c")
    assert (clean.returncode, clean.stdout) == (0, b"0.0/5.0\n"), clean
    spam = spamc(served, SPAM, "-c")
    assert spam.returncode == 1, spam
    assert float(spam.stdout.split(b"/")[0]) >= 100.0
    # A virus is no spam score, but the rule rejects it: the client is told "spam" at least
    # at the threshold, so spamc -c and Exim's spam= fail closed.
    infected = spamc(served, INFECTED, "-c")
    assert (infected.returncode, infected.stdout) == (1, b"5.0/5.0\n"), infected


def test_spamc_symbols_report_and_process(served: Served) -> None:
    assert spamc(served, SPAM, "-y").stdout == b"GTUBE"
    assert b"AV_INFECTED" in spamc(served, INFECTED, "-y").stdout.split(b",")
    report = spamc(served, SPAM, "-R").stdout.decode()
    assert "Content analysis details:" in report and " GTUBE " in report
    # REPORT_IFSPAM (-r) says nothing about a clean message.
    assert spamc(served, CLEAN, "-r").stdout == b""
    assert " GTUBE " in spamc(served, SPAM, "-r").stdout.decode()
    processed = spamc(served, SPAM).stdout
    head, _, body = processed.partition(b"\r\n\r\n")
    assert b"X-Spam-Flag: YES" in head and GTUBE.encode() in body
    assert b"X-Spam-Flag: NO" in spamc(served, CLEAN).stdout
    # HEADERS: spamd sends the header block only; spamc puts its own copy of the body after it.
    headers = spamc(served, SPAM, "--headers").stdout
    assert b"X-Spam-Flag: YES" in headers and headers.count(b"Buy now!") == 1, headers


def test_hook_mailwarden_learn(served: Served) -> None:
    """spamc -L spam reaches the antispam plugin's Bayes through the hook, into its journal."""
    message = build_message(subject="cheap pills", body="pills pills pills cheap cheap\n")
    learned = spamc(served, message, "-L", "spam", "-u", "carol")
    assert learned.returncode == 0, learned
    assert b"successfully" in learned.stdout
    journal = served.cli("antispam", "journal")
    assert journal.returncode == 0, journal
    entries = [line for line in journal.stdout.splitlines() if "spamd:127.0.0.1:carol" in line]
    assert len(entries) == 1 and " learn spam " in entries[0], journal.stdout
    forgot = spamc(served, message, "-L", "forget")
    assert forgot.returncode == 0, forgot
    journal = served.cli("antispam", "journal").stdout
    assert any(" unlearn spam " in line for line in journal.splitlines()), journal


def test_mail_checked_through_spamd_is_autolearned(served: Served) -> None:
    """As SpamAssassin's spamd: what its MTA delivers on the answer is real mail, learned."""
    message = build_message(subject="minutes of the meeting", body="see the attached notes\n")
    assert spamc(served, message, "-c").returncode == 0
    journal = served.journal_with(" autolearn learn ham ")
    assert " autolearn learn ham " in journal, journal


def test_compressed_request_and_ping(served: Served) -> None:
    body = zlib.compress(SPAM)
    request = (
        f"CHECK SPAMC/1.5\r\nUser: nobody\r\nCompress: zlib\r\nContent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    reply = exchange(served.spamd, request)
    assert reply.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; "), reply
    request = f"HEADERS SPAMC/1.5\r\nContent-length: {len(SPAM)}\r\n\r\n".encode() + SPAM
    reply = exchange(served.spamd, request)
    assert reply.endswith(b"MIME-Version: 1.0\r\n\r\n") and b"X-Spam-Flag: YES" in reply, reply
    assert exchange(served.spamd, b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"
    assert exchange(served.spamd, b"HELLO SPAMC/1.5\r\n\r\n").startswith(
        b"SPAMD/1.5 76 EX_PROTOCOL"
    )


def test_tell_is_refused_unless_allowed(tmp_path: Path) -> None:
    with serve_protocols(tmp_path, allow_tell=False) as served:
        # spamc exits 0 whatever the code of a TELL reply; it reports nothing learned.
        refused = spamc(served, CLEAN, "-L", "ham")
        assert b"successfully" not in refused.stdout, refused
        tell = f"TELL SPAMC/1.5\r\nMessage-class: ham\r\nSet: local\r\nContent-length: {len(CLEAN)}"
        reply = exchange(served.spamd, tell.encode() + b"\r\n\r\n" + CLEAN)
        assert reply.startswith(b"SPAMD/1.5 69 EX_UNAVAILABLE"), reply
        journal = served.cli("antispam", "journal")
        assert journal.returncode == 0 and journal.stdout == "", journal
