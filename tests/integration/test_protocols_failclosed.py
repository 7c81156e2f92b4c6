"""Fail closed through every protocol: when the antivirus cannot scan (its clamd engine is
unreachable), no client is told "clean"."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import EICAR, free_port
from tests.integration.protocols_serve import INFECTED, Served, exchange, serve_protocols

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # Nothing listens there: every antivirus scan is an engine error.
    broken = (
        '[antivirus]\nengines = ["clamd"]\n'
        f'[antivirus.clamd]\naddress = "127.0.0.1:{free_port()}"\n'
    )
    with serve_protocols(tmp_path_factory.mktemp("failclosed"), broken) as server:
        yield server


def test_clamd_answers_error(served: Served) -> None:
    reply = exchange(
        served.clamd, b"zINSTREAM\0" + len(EICAR).to_bytes(4, "big") + EICAR + bytes(4)
    )
    assert reply == b"stream: Mailwarden antivirus error ERROR\0"


def test_spamd_answers_tempfail(served: Served) -> None:
    request = f"CHECK SPAMC/1.5\r\nContent-length: {len(INFECTED)}\r\n\r\n".encode() + INFECTED
    assert exchange(served.spamd, request) == b"SPAMD/1.5 75 EX_TEMPFAIL\r\n\r\n"


def test_http_answers_soft_reject(served: Served) -> None:
    request = f"POST /checkv2 HTTP/1.0\r\nContent-Length: {len(INFECTED)}\r\n\r\n".encode()
    head, _, body = exchange(served.http, request + INFECTED).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    result = json.loads(body)
    assert result["action"] == "soft reject"
    assert result["messages"]["smtp_message"].startswith("4.")
