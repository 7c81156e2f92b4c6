"""The peers ``mailwarden bench`` measures beside the gateway, started as its CLI starts them."""

from __future__ import annotations

import os

import pytest

from mailwarden.bench.peers import spamd_check, spamd_server
from tests.conftest import make_message, need
from tests.services import ensure_packages

pytestmark = pytest.mark.integration


def test_the_spamassassin_peer_answers_under_the_clis_private_umask() -> None:
    # The CLI runs every command under umask 077; spamd's children (nobody) could not read
    # the site configuration written under it, died, and the bench's SpamAssassin row read
    # "failed: Connection reset by peer" on every run.
    need(os.geteuid() == 0, "spamd's children run as nobody: the peer needs root")
    ensure_packages("spamd")
    previous = os.umask(0o077)
    try:
        with spamd_server(1) as port:
            check = spamd_check(port)
            for _ in range(2):
                check(make_message())
    finally:
        os.umask(previous)
