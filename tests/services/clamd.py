"""A real clamd on 127.0.0.1 with a custom signature database from a throwaway directory.

clamd refuses to start without a database and ships none here (freshclam cannot reach its
mirrors), so the test gives it its own signature files. It runs in the foreground as root
(``User root``), is probed with ``zPING`` and stopped by its PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port, need
from tests.services import ensure_packages

__all__ = ["Clamd", "running_clamd"]


class Clamd:
    """A started clamd: its TCP port and working directory."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the daemon (by its PID) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"zPING\0")
            return sock.recv(16).startswith(b"PONG")
    except OSError:
        return False


@contextmanager
def running_clamd(databases: Sequence[Path]) -> Iterator[Clamd]:
    """Run clamd with copies of ``databases`` (ClamAV signature files) as its only database."""
    ensure_packages("clamav-daemon")
    binary = shutil.which("clamd") or "/usr/sbin/clamd"
    need(Path(binary).exists(), "clamd is not installed")
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-clamd-"))
    db = directory / "db"
    db.mkdir()
    for path in databases:
        shutil.copy(path, db / path.name)
    (directory / "tmp").mkdir()
    port = free_port()
    (directory / "clamd.conf").write_text(
        f"DatabaseDirectory {db}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nForeground yes\n"
        f"User root\nLogFile {directory / 'clamd.log'}\nPidFile {directory / 'clamd.pid'}\n"
        f"TemporaryDirectory {directory / 'tmp'}\nStreamMaxLength 50M\n"
    )
    process = subprocess.Popen(
        [binary, "-c", str(directory / "clamd.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Clamd(process, port, directory)
    try:
        for _ in range(600):
            if process.poll() is not None:
                log = (directory / "clamd.log").read_text(errors="replace")[-500:]
                raise AssertionError(f"clamd exited with {process.returncode}: {log}")
            if _ping(port):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("clamd did not answer PING within 30 s")
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
