"""`mailwarden serve` with the clamd, spamd and rspamd-HTTP listeners on, for the protocol tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailwarden.testing import build_message
from tests.conftest import EICAR, free_port
from tests.integration.test_smtp_serve import home_cli
from tests.serving import start_serve, stop_serve

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CLEAN = build_message(subject="lunch", body="Hello Bob, lunch tomorrow at noon?\n")
SPAM = build_message(subject="offer", body=f"Buy now!\n{GTUBE}\n")
INFECTED = build_message(subject="invoice", attachments=[("eicar.com", EICAR)])


def exchange(port: int, data: bytes, timeout: float = 60.0) -> bytes:
    """Send ``data``, half-close, and read the reply to EOF (a hang fails at ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the listener may answer and close before taking everything
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


@dataclass
class Served:
    process: subprocess.Popen[str]
    home: Path
    log: Path
    clamd: int
    spamd: int
    http: int
    smtp: int

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return home_cli(self.home, *args)

    def journal_with(self, text: str, limit: float = 20.0) -> str:
        """The antispam journal once it holds ``text`` (lessons are committed in groups, a
        fraction of a second after the scan), or as it is after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while True:
            journal = self.cli("antispam", "journal").stdout
            if text in journal or time.monotonic() > deadline:
                return journal
            time.sleep(0.2)


@contextlib.contextmanager
def serve_protocols(
    tmp: Path,
    extra: str = "",
    *,
    allow_tell: bool = True,
    trusted_networks: str = "",
    clamd_max_size: int = 1048576,
) -> Iterator[Served]:
    """Run ``mailwarden serve`` from ``tmp/home`` with the three listeners on free ports."""
    home = tmp / "home"
    home.mkdir(parents=True)
    ports = {name: free_port() for name in ("clamd", "spamd", "http", "smtp")}
    tell = "true" if allow_tell else "false"
    (home / "mailwarden.toml").write_text(
        f"[smtp]\nport = {ports['smtp']}\n"
        f"[clamd]\nenabled = true\nport = {ports['clamd']}\nmax_size = {clamd_max_size}\n"
        f"{trusted_networks}"
        f"[spamd]\nenabled = true\nport = {ports['spamd']}\nallow_tell = {tell}\n{trusted_networks}"
        f"[http_scan]\nenabled = true\nport = {ports['http']}\n{trusted_networks}" + extra
    )
    log = tmp / "serve.log"
    process = start_serve(home, log, list(ports.values()))
    try:
        yield Served(process, home, log, **ports)
    finally:
        stop_serve(process, log)
