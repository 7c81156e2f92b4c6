"""`mailwarden serve` with the clamd, spamd and rspamd-HTTP listeners on, for the protocol tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port


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
        return subprocess.run(
            [sys.executable, "-m", "mailwarden", *args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "MAILWARDEN_HOME": str(self.home)},
            timeout=60,
        )


def _wait(port: int, process: subprocess.Popen[str], log: Path, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mailwarden serve exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"mailwarden serve did not listen on {port}: {log.read_text()}")


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
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MAILWARDEN_HOME": str(home)},
        )
    served = Served(process, home, log, **ports)
    try:
        for port in ports.values():
            _wait(port, process, log)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
