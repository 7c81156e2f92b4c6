"""A real rbldnsd on 127.0.0.1 serving DNS list zones from a throwaway directory.

rbldnsd answers over UDP only and drops to the ``rbldns`` user, so the zone directory must be
readable by that user and the query log (``-l +file``, unbuffered) writable by it. The log has
one line per query received, which is how tests count the packets that reached the server.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.conftest import free_port, need
from tests.services import ensure_packages

__all__ = ["Rbldnsd", "running_rbldnsd"]


class Rbldnsd:
    """A started rbldnsd: its UDP port, zone directory and query log."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory
        self.query_log = directory / "query.log"
        self.baseline = 0

    def queries(self) -> list[str]:
        """The query-log lines since start-up, one per query that reached the server."""
        try:
            text = self.query_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()][self.baseline :]

    def stop(self) -> None:
        """Stop the daemon (by its PID) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _probe(port: int, zone: str) -> bool:
    query = dns.message.make_query(f"probe.{zone}", "A")
    try:
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
    except (dns.exception.Timeout, OSError):
        return False
    return reply.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR)


@contextmanager
def running_rbldnsd(zones: Mapping[str, tuple[str, str]]) -> Iterator[Rbldnsd]:
    """Run rbldnsd with ``zones``: zone name -> (dataset type, zone file text).

    Example: ``{"ip.rep.test": ("ip4set", ":127.0.0.2:Listed $\\n192.0.2.1\\n")}``.
    The start-up probes are left out of ``queries()``, so it counts only what the test caused.
    """
    ensure_packages("rbldnsd")
    binary = shutil.which("rbldnsd") or "/usr/sbin/rbldnsd"
    need(Path(binary).exists(), "rbldnsd is not installed")
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-rbldnsd-"))
    directory.chmod(0o755)
    args: list[str] = []
    for index, (zone, (dataset, text)) in enumerate(zones.items()):
        name = f"zone{index}.txt"
        (directory / name).write_text(text, encoding="utf-8")
        args.append(f"{zone}:{dataset}:{name}")
    log = directory / "query.log"
    log.touch()
    log.chmod(0o666)
    port = free_port()
    process = subprocess.Popen(
        [
            *(binary, "-n", "-u", "rbldns", "-w", str(directory), "-b", f"127.0.0.1/{port}"),
            *("-t", "60", "-l", f"+{log}", *args),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Rbldnsd(process, port, directory)
    try:
        first_zone = next(iter(zones))
        for _ in range(100):
            if process.poll() is not None:
                raise AssertionError(f"rbldnsd exited with {process.returncode}")
            if _probe(port, first_zone):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("rbldnsd did not answer within 5 s")
        server.baseline = len(server.queries())
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
