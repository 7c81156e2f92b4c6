"""``mailwarden reputation serve`` started for real, as an operator would, on 127.0.0.1.

The service runs as a child process of the test from a throwaway data directory, with a
self-signed certificate it makes on first start; the tests trust that certificate through
``[reputation] http_ca_file`` exactly as a gateway would. ``GET /v1/server-stats`` (not itself
counted) tells how many requests reached the service, which is how tests show that nothing was
sent.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

__all__ = ["RepService", "running_service"]


class RepService:
    """A started reputation service: where it listens and the certificate to trust."""

    def __init__(
        self, process: subprocess.Popen[str], port: int, data: Path, log: Path, token: str = ""
    ) -> None:
        self.process = process
        self.token = token
        self.port = port
        self.data = data
        self.log = log

    @property
    def url(self) -> str:
        """The base URL gateways are configured with."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The service's self-signed certificate."""
        return self.data / "tls" / "cert.pem"

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts the service's certificate."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def server_stats(self) -> dict[str, Any]:
        """Requests served by path, and the statistics received, as the service reports them."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        reply = httpx.get(
            f"{self.url}/v1/server-stats", verify=self.tls(), timeout=5, headers=headers
        )
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        return result

    def lookups_received(self) -> int:
        """How many ``POST /v1/lookup`` requests reached the service."""
        return int(self.server_stats()["by_path"].get("/v1/lookup", 0))

    def stop(self) -> None:
        """Stop the service (by its PID) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _ready(service: RepService) -> bool:
    try:
        reply = httpx.get(f"{service.url}/health", verify=service.tls(), timeout=0.5)
    except (httpx.HTTPError, OSError):
        return False
    return reply.status_code == 200


@contextmanager
def running_service(
    data: Path, *feeds: Path, port: int | None = None, token: str = ""
) -> Iterator[RepService]:
    """Run ``mailwarden reputation serve --data DATA --load FEED...`` until the block ends."""
    port = port or free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data / "serve.log"
    args = [sys.executable, "-m", "mailwarden", "reputation", "serve", "--data", str(data)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    for feed in feeds:
        args += ["--load", str(feed)]
    if token:
        args += ["--token", token]
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True)
    service = RepService(process, port, data, log, token)
    try:
        deadline = time.monotonic() + 30
        while not (service.ca_file.exists() and _ready(service)):
            if process.poll() is not None:
                raise AssertionError(f"reputation serve exited: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"reputation serve did not answer: {log.read_text()}")
            time.sleep(0.1)
        yield service
    finally:
        service.stop()
