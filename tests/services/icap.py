"""A real c-icap with its ClamAV module (virus_scan over clamd) on 127.0.0.1.

clamd has no database here (freshclam cannot reach its mirrors) and EICAR is not built in, so
it loads a two-line custom database: the EICAR body and the project's test marker. c-icap's
``avscan`` service (virus_scan with 204 allowed) hands objects to that clamd over its UNIX
socket. Recipe as verified in ../shared/notes/services.md section 4.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port, need
from tests.services import ensure_packages

__all__ = ["IcapServer", "running_icap"]

_MARKER = b"MAILWARDEN-TEST-MALWARE-MARKER"
# The EICAR string without its trailing "$H+H*", so the signature matches it anywhere.
_EICAR_BODY = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!"

_CLAMD = """\
DatabaseDirectory {dir}/db
LocalSocket {dir}/clamd.sock
LocalSocketMode 666
Foreground yes
User root
LogFile {dir}/clamd.log
PidFile {dir}/clamd.pid
TemporaryDirectory {dir}/tmp
StreamMaxLength 50M
"""

_MODULES = Path("/usr/lib/x86_64-linux-gnu/c_icap")

_CICAP = """\
Port 127.0.0.1:{port}
User root
Group root
PidFile {dir}/c-icap.pid
CommandsSocket {dir}/c-icap.ctl
TmpDir {dir}/tmp
ServerLog {dir}/server.log
AccessLog {dir}/access.log
ModulesDir {modules}
ServicesDir {modules}
TemplateDir /usr/share/c_icap/templates/
LoadMagicFile /etc/c-icap/c-icap.magic
StartServers 1
MaxServers 2
Module common clamd_mod.so
clamd_mod.ClamdSocket {dir}/clamd.sock
Service antivirus_module virus_scan.so
ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple
virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE
virus_scan.SendPercentData 0
virus_scan.DefaultEngine clamd
"""


class IcapServer:
    """A started c-icap + clamd pair; ``url`` is the ICAP service to scan with."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"icap://127.0.0.1:{port}/avscan"
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.directory / log).open("ab") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start(self) -> None:
        """Start clamd, wait for PONG, then c-icap, and wait for its OPTIONS answer."""
        clamd = self._spawn(["clamd", "-c", str(self.directory / "clamd.conf")], "clamd.out")
        _wait(lambda: _clamd_pong(self.directory / "clamd.sock"), clamd, "clamd")
        cicap = self._spawn(
            ["c-icap", "-N", "-f", str(self.directory / "c-icap.conf")], "c-icap.out"
        )
        _wait(lambda: _icap_options(self.port), cicap, "c-icap")

    def stop(self) -> None:
        """Stop both by PID, c-icap first."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


def _wait(probe: object, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        if probe():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not answer within 30 s")


def _clamd_pong(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"zPING\0")
            return sock.recv(16).startswith(b"PONG")
    except OSError:
        return False


def _icap_options(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(
                f"OPTIONS icap://127.0.0.1:{port}/avscan ICAP/1.0\r\n"
                f"Host: 127.0.0.1\r\nEncapsulated: null-body=0\r\n\r\n".encode()
            )
            return sock.recv(64).startswith(b"ICAP/1.0 200")
    except OSError:
        return False


@contextmanager
def running_icap() -> Iterator[IcapServer]:
    """Run c-icap with the ClamAV module on a free port; both stopped (by PID) on exit."""
    ensure_packages("c-icap", "libc-icap-mod-virus-scan", "clamav-daemon")
    need(shutil.which("c-icap") is not None, "c-icap is not installed")
    need((_MODULES / "virus_scan.so").exists(), "c-icap's virus_scan module is not installed")
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-icap-"))
    try:
        (directory / "db").mkdir()
        (directory / "tmp").mkdir()
        (directory / "db" / "lab.ndb").write_text(
            f"Lab.Test.EICAR-Body:0:*:{_EICAR_BODY.hex()}\nLab.Test.Marker:0:*:{_MARKER.hex()}\n"
        )
        (directory / "clamd.conf").write_text(_CLAMD.format(dir=directory))
        port = free_port()
        (directory / "c-icap.conf").write_text(
            _CICAP.format(dir=directory, port=port, modules=_MODULES)
        )
        server = IcapServer(directory, port)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
