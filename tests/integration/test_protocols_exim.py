"""Real Exim scanning through mailwarden: ``spam = nobody`` on our spamd listener and
``av_scanner = clamd:`` on our clamd listener, with contrib/exim/exim-mailwarden.conf as is."""

from __future__ import annotations

import json
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.testing import build_message
from tests.conftest import EICAR
from tests.integration.protocols_serve import GTUBE, Served, serve_protocols
from tests.services.exim import Exim

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).resolve().parents[2] / "contrib" / "exim" / "exim-mailwarden.conf"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Exim]]:
    with serve_protocols(tmp_path_factory.mktemp("exim")) as served:
        with Exim(CONFIG, {"SPAMD_PORT": served.spamd, "CLAMD_PORT": served.clamd}) as exim:
            yield served, exim


def send(exim: Exim, message: bytes) -> tuple[int, str]:
    """The reply to the final dot."""
    with smtplib.SMTP("127.0.0.1", exim.port, timeout=120) as client:
        client.ehlo("client.example.org")
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        code, text = client.data(message)
        return code, text.decode()


def test_exim_gets_our_score_and_rejects_above_our_threshold(
    setup: tuple[Served, Exim],
) -> None:
    served, exim = setup
    # No Date and no Message-ID: a few points, below the threshold, so Exim accepts it.
    mild = (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: exim mild\r\n"
        b"\r\nSee you at the meeting.\r\n"
    )
    code, text = send(exim, mild)
    assert code == 250, (text, exim.log())
    queued = re.search(r"id=(\S+)", text)
    assert queued is not None, text
    headers = exim.headers(queued[1])
    found = re.search(r"X-Spam-Score: (-?[0-9.]+) ", headers)
    assert found is not None, headers
    events = served.cli("events", "--json", "--subject", "exim mild")
    ours = [json.loads(line)["verdict"]["spam_score"] for line in events.stdout.splitlines()]
    assert ours and 0 < ours[0] < 5.0, events
    assert float(found[1]) == round(ours[0], 1)

    spam = build_message(subject="exim spam", body=f"Buy now!\n{GTUBE}\n")
    code, text = send(exim, spam)
    assert code == 550, (code, text)
    assert text == "Spam score 1000.0 is above the threshold"


def test_exim_rejects_eicar_with_our_signature_name(setup: tuple[Served, Exim]) -> None:
    _, exim = setup
    message = build_message(subject="exim eicar", attachments=[("eicar.com", EICAR)])
    code, text = send(exim, message)
    assert (code, text) == (550, "This message contains malware (Eicar-Test-Signature)"), exim.log()
    clean = build_message(subject="exim clean", body="Nothing to see.\n")
    code, text = send(exim, clean)
    assert code == 250, (text, exim.log())
