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
        #: Per-backend frontends (``pinned=True``), in the order of the backends.
        self.pinned: list[int] = []

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
def running_haproxy(
    backends: Sequence[int | tuple[str, int]],
    *,
    version: int = 2,
    listen: str = "127.0.0.1",
    check: bool = False,
    pinned: bool = False,
) -> Iterator[HAProxy]:
    """HAProxy on ``listen`` in front of ``backends`` (ports on 127.0.0.1, or (address, port))
    with PROXY protocol ``version`` (1 or 2), round robin. ``check``: health checks every
    0.3 s, a backend out after one failure. ``pinned``: one more frontend per backend, on the
    ports :attr:`HAProxy.pinned` lists, so a test can pick the node and still come through the
    balancer."""
    ensure_packages("haproxy")
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    need(Path(binary).exists(), "haproxy is not installed")
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-haproxy-"))
    port = free_port()
    send = "send-proxy-v2" if version == 2 else "send-proxy"
    health = " check inter 300 fall 1 rise 1" if check else ""
    targets = [b if isinstance(b, tuple) else ("127.0.0.1", b) for b in backends]
    servers = "".join(
        f"    server n{i} {host}:{backend} {send}{health}\n"
        for i, (host, backend) in enumerate(targets)
    )
    pinned_ports = [free_port() for _ in targets] if pinned else []
    singles = "".join(
        f"listen pinned{i}\n    bind {listen}:{pinned_ports[i]}\n"
        f"    server n{i} {host}:{backend} {send}\n"
        for i, (host, backend) in enumerate(targets)
        if pinned
    )
    (directory / "haproxy.cfg").write_text(
        "global\n    maxconn 400\n    nbthread 1\n"  # one thread: strict round robin
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n"
        "    timeout server 60s\n"
        f"frontend smtp\n    bind {listen}:{port}\n    default_backend nodes\n"
        f"backend nodes\n    balance roundrobin\n{servers}{singles}"
    )
    with (directory / "haproxy.out").open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(directory / "haproxy.cfg")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = HAProxy(process, port, directory)
    server.pinned = pinned_ports
    try:
        deadline = time.monotonic() + 20
        while not port_open(port, listen):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not start: {server.log()}")
            time.sleep(0.02)
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
