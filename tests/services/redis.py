"""A real redis-server on 127.0.0.1 with its own port and directory (Debian ``redis-server``).

Started in the foreground from a generated config (no persistence, no protected mode
needed on loopback), probed with PING, stopped (or killed, to test an outage) by its PID.
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

__all__ = ["Redis", "running_redis"]


def _ping(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """One redis-server: :meth:`start`, :meth:`kill` (SIGKILL, an outage), :meth:`stop`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        ensure_packages("redis-server")
        self.host = host
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        need(Path(self.binary).exists(), "redis-server is not installed")
        self.directory = Path(tempfile.mkdtemp(prefix="mailwarden-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> Redis:
        config = self.directory / "redis.conf"
        config.write_text(
            # Another address than loopback is a test network namespace's (the cluster test):
            # protected mode would refuse its clients, and nothing else can reach it.
            f"bind {self.host}\nprotected-mode no\nport {self.port}\ndir {self.directory}\n"
            f'logfile {self.directory / "redis.log"}\nsave ""\nappendonly no\n'
            "daemonize no\n"
        )
        self.process = subprocess.Popen(
            [self.binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while not _ping(self.port, self.host):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-500:]
                raise AssertionError(f"redis-server did not answer PING: {log}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL by PID: Redis disappears as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


@contextmanager
def running_redis() -> Iterator[Redis]:
    """A started redis-server, stopped and its directory removed at the end."""
    server = Redis().start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
