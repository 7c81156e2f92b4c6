"""A real Exim (Debian's exim4-daemon-heavy) on 127.0.0.1 with its own config, spool and port.

Debian's Exim and Postfix packages conflict (both are the system's MTA): installing
exim4-daemon-heavy removes Postfix, which the other integration tests need. So the package
is not installed: its .deb is fetched with ``apt-get download`` (its libraries are installed
as ordinary packages) and unpacked under a cache directory, and that binary runs as a
foreground daemon (``-bdf``) with ``-C`` our config file (``contrib/exim/``) and ``-D``
macros for its ports and directories. Never the system's daemon, config or spool.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port, need
from tests.services import ensure_packages

__all__ = ["Exim", "exim_binary"]

# exim4-daemon-heavy's library dependencies (apt-cache depends), which do not conflict.
_LIBRARIES = (
    "libdb5.3",
    "libgnutls-dane0",
    "libgnutls30",
    "libidn12",
    "libldap-2.5-0",
    "libmariadb3",
    "libnsl2",
    "libpcre2-8-0",
    "libperl5.36",
    "libpq5",
    "libsasl2-2",
    "libspf2-2",
    "libsqlite3-0",
)
_CACHE = Path(os.environ.get("MAILWARDEN_EXIM_CACHE", "/var/cache/mailwarden-tests/exim"))


def exim_binary() -> Path:
    """The exim4 binary: the installed one, else unpacked from the downloaded package."""
    installed = Path("/usr/sbin/exim4")
    if installed.is_file():
        return installed
    unpacked = _CACHE / "root" / "usr" / "sbin" / "exim4"
    if unpacked.is_file():
        return unpacked
    need(shutil.which("apt-get") is not None and os.geteuid() == 0, "needs apt-get as root")
    ensure_packages(*_LIBRARIES)
    _CACHE.mkdir(parents=True, exist_ok=True)
    # apt's sandbox user cannot write into a root-only directory; a warning, not an error.
    fetched = subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", "download", "exim4-daemon-heavy"],
        cwd=_CACHE,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    debs = sorted(_CACHE.glob("exim4-daemon-heavy_*.deb"))
    need(bool(debs), f"apt-get download exim4-daemon-heavy failed: {fetched.stderr[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(_CACHE / "root")], check=True)
    return unpacked


class Exim:
    """One Exim daemon on a free 127.0.0.1 port, running ``config`` with ``macros``."""

    def __init__(self, config: Path, macros: dict[str, str | int]) -> None:
        need(os.geteuid() == 0, "Exim's daemon must start as root")
        self.binary = exim_binary()
        # The exim user writes the spool; pytest's tmp_path is 0700 root.
        self.root = Path(tempfile.mkdtemp(prefix="mailwarden-exim-"))
        self.root.chmod(0o755)
        self.spool = self.root / "spool"
        self.logs = self.root / "log"
        for d in (self.spool, self.logs):
            d.mkdir()
            shutil.chown(d, "Debian-exim", "Debian-exim")
        self.port = free_port()
        self.config = config
        self.macros = {
            **{k: str(v) for k, v in macros.items()},
            "SMTP_PORT": str(self.port),
            "SPOOL": str(self.spool),
            "LOG": str(self.logs),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> list[str]:
        defines = [f"-D{k}={v}" for k, v in self.macros.items()]
        return [str(self.binary), "-C", str(self.config), *defines, *args]

    def start(self) -> Exim:
        out = (self.root / "daemon.out").open("wb")
        self.process = subprocess.Popen(self.command("-bdf"), stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exim exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"exim did not listen on {self.port}: {self.log()}")

    def headers(self, message_id: str) -> str:
        """The header lines of a queued message (``exim -Mvh``)."""
        result = subprocess.run(
            self.command("-Mvh", message_id), capture_output=True, text=True, timeout=30
        )
        return result.stdout

    def queue(self) -> list[str]:
        """The ids of the queued messages."""
        result = subprocess.run(self.command("-bpi"), capture_output=True, text=True, timeout=30)
        return result.stdout.split()

    def log(self) -> str:
        parts = [self.root / "daemon.out", self.logs / "mainlog", self.logs / "paniclog"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.is_file())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Exim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
