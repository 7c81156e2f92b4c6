"""HMAC-SHA256 signed requests between the nodes of ``[cluster]``.

A request carries the sending node's name, the time and a signature over the method, the path
with its query, the time, the node and the SHA-256 of the body, keyed with the cluster's shared
secret. The receiver accepts it only from a node it knows, within :data:`MAX_SKEW` seconds,
and (for changes) once: a captured request cannot be replayed, rerouted to another path or
given another body.
"""

from __future__ import annotations

import hashlib
import hmac
import stat
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["MAX_SKEW", "NODE", "SIGNATURE", "TIME", "Signer", "cluster_secret"]

NODE = "x-mailwarden-node"
TIME = "x-mailwarden-time"
SIGNATURE = "x-mailwarden-signature"
#: Seconds a signed request is good for (clocks of the nodes may differ by this much).
MAX_SKEW = 60.0


def cluster_secret(config: Config) -> bytes:
    """The shared secret: ``[cluster] secret``, else ``secret_file`` (mode 0600, its first
    line). A file that cannot be read, or that others may read, is a :class:`ConfigError`."""
    cluster = config.cluster
    if not cluster.secret_file:
        return cluster.secret.encode()
    path = config.path_in_home(cluster.secret_file)
    try:
        mode = path.stat().st_mode
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the cluster secret: {exc}", path=config.source, key="cluster.secret_file"
        ) from exc
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"{path} is readable by group or others; chmod 0600 it",
            path=config.source,
            key="cluster.secret_file",
        )
    secret = lines[0].strip() if lines else ""
    if len(secret) < 16:
        raise ConfigError(
            "the cluster secret must be at least 16 characters",
            path=config.source,
            key="cluster.secret_file",
        )
    return secret.encode()


class Signer:
    """Signs this node's requests and checks the other nodes'."""

    def __init__(
        self,
        secret: bytes,
        node: str,
        known: set[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.node = node
        self.known = known
        self.clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def _mac(self, method: str, target: str, when: str, node: str, body: bytes) -> str:
        text = "\n".join((method.upper(), target, when, node, hashlib.sha256(body).hexdigest()))
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def headers(self, method: str, target: str, body: bytes = b"") -> dict[str, str]:
        """The headers that sign a request for ``target`` (path and query)."""
        when = f"{self.clock():.3f}"
        return {
            NODE: self.node,
            TIME: when,
            SIGNATURE: self._mac(method, target, when, self.node, body),
        }

    def check(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> str | None:
        """Why the request is refused, or ``None`` when it is a fresh one from a known node."""
        node, when, signature = headers.get(NODE, ""), headers.get(TIME, ""), headers.get(SIGNATURE)
        if node not in self.known:
            return "not signed by a node of [cluster] nodes"
        try:
            skew = abs(self.clock() - float(when))
        except ValueError:
            return "bad signature time"
        if skew > MAX_SKEW:
            return f"signature time {skew:.0f} s off (clocks of the nodes must agree)"
        expected = self._mac(method, target, when, node, body)
        if not signature or not hmac.compare_digest(expected, signature):
            return "bad signature"
        if method.upper() != "GET":
            with self._lock:
                now = self.clock()
                self._seen = {k: t for k, t in self._seen.items() if now - t <= 2 * MAX_SKEW}
                if signature in self._seen:
                    return "replayed request"
                self._seen[signature] = now
        return None
