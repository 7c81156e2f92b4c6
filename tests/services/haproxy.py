"""A real HAProxy on 127.0.0.1 balancing SMTP (TCP mode) over backends with the PROXY protocol.

Debian's ``haproxy`` run in the foreground (``-db``) from a generated config in a throwaway
directory; each backend gets ``send-proxy-v2`` (or ``send-proxy``, v1), so the node behind
learns the real client. Waited for by connecting, stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port, need
from tests.integration.test_gateway_relay import port_open
from tests.services import ensure_packages

__all__ = ["HAProxy", "running_haproxy"]


class HAProxy:
    """A started HAProxy: the port clients connect to, round robin over the backends."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    def log(self) -> str:
        try:
            return (self.directory / "haproxy.out").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextmanager
def running_haproxy(backends: Sequence[int], *, version: int = 2) -> Iterator[HAProxy]:
    """HAProxy in front of 127.0.0.1:``backends`` with PROXY protocol ``version`` (1 or 2)."""
    ensure_packages("haproxy")
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    need(Path(binary).exists(), "haproxy is not installed")
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-haproxy-"))
    port = free_port()
    send = "send-proxy-v2" if version == 2 else "send-proxy"
    servers = "".join(
        f"    server n{i} 127.0.0.1:{backend} {send}\n" for i, backend in enumerate(backends)
    )
    (directory / "haproxy.cfg").write_text(
        "global\n    maxconn 200\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n"
        "    timeout server 60s\n"
        f"frontend smtp\n    bind 127.0.0.1:{port}\n    default_backend nodes\n"
        f"backend nodes\n    balance roundrobin\n{servers}"
    )
    with (directory / "haproxy.out").open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(directory / "haproxy.cfg")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = HAProxy(process, port, directory)
    try:
        deadline = time.monotonic() + 20
        while not port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not start: {server.log()}")
            time.sleep(0.02)
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
