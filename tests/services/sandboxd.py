"""The reference analysis server (``mailwarden_sandbox.reference_server``) run for real.

It is started as its own process (uvicorn) on a free 127.0.0.1 port, waited for over HTTP, and
stopped by PID, like the other services.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

__all__ = ["ReferenceServer", "running_reference_server"]


class ReferenceServer:
    """A running reference server: its URL, what it was sent, and its release switch."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process

    def tasks(self) -> list[dict[str, Any]]:
        """Every submission: id, name, size, sha256, submitted and finished times."""
        result: list[dict[str, Any]] = httpx.get(f"{self.url}/control/tasks", timeout=5).json()
        return result

    def finish(self) -> None:
        """Let every held analysis report."""
        httpx.post(f"{self.url}/control/finish", timeout=5).raise_for_status()


@contextmanager
def running_reference_server(
    *, delay: float = 0.0, hold: bool = False, log: Path | None = None
) -> Iterator[ReferenceServer]:
    """Run the reference server; ``delay`` seconds per analysis, ``hold`` until finish()."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "mailwarden_sandbox.reference_server",
        "--port",
        str(port),
        "--delay",
        str(delay),
    ]
    if hold:
        args.append("--hold")
    out = log.open("ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = ReferenceServer(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"reference server exited with {process.returncode}")
            try:
                server.tasks()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("reference server did not answer within 30 s") from None
                time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if log:
            out.close()  # type: ignore[union-attr]
