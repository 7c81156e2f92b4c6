"""One console over every node: the nodes of ``[cluster]`` and the client that asks them.

The console asks every node at once (this one directly, the others over HTTP(S) with requests
signed by :mod:`.signing`, or over mutual TLS, :mod:`.mtls`) and waits ``[cluster] timeout``
seconds for each; a node that did not answer in time is listed as such, with what went wrong,
and the answers of the others are shown. Without ``[cluster]`` the console shows this node
alone. The web routes that use it are in :mod:`mailwarden.web.routes.cluster`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from . import mtls
from .signing import NODE, Signer, cluster_secret

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["API", "Console", "NodeAnswer", "NodeRefused", "merged_rows", "redis_status"]

#: Where the nodes answer each other.
API = "/cluster/v1"


@dataclass
class NodeAnswer:
    """What one node said, or why it said nothing."""

    name: str
    answered: bool
    items: list[dict[str, Any]]
    error: str = ""
    local: bool = False

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "answered": self.answered,
            "local": self.local,
            "count": len(self.items),
            "error": self.error or None,
        }


class Console:
    """The nodes of ``[cluster]`` and a client that asks them (one per web worker)."""

    def __init__(self, config: Config) -> None:
        cfg = config.cluster
        self.name = cfg.name or config.gateway.hostname
        self.peers = {n.name: n.url.rstrip("/") for n in cfg.nodes if n.name != self.name}
        self.enabled = bool(cfg.nodes)
        self.timeout = cfg.timeout
        self.known = {n.name for n in cfg.nodes}
        self.signer: Signer | None = None
        if self.enabled and (cfg.secret or cfg.secret_file):
            self.signer = Signer(cluster_secret(config), self.name, self.known)
        #: Nodes present certificates of the cluster's CA to each other (mtls.py).
        self.mtls = mtls.enabled(config)
        self._verify: Any = cfg.ca_file or True
        if self.mtls:
            self._verify = mtls.client_context(config)
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=self._verify, timeout=self.timeout)
        return self._client

    async def ask(self, node: str, method: str, target: str, body: bytes = b"") -> Any:
        """A signed request to ``node``; its JSON answer. Raises on any failure."""
        url = self.peers[node] + target
        headers = {NODE: self.name}
        if self.signer is not None:
            headers = self.signer.headers(method, target, body)
        async with asyncio.timeout(self.timeout):
            response = await self.client().request(method, url, headers=headers, content=body)
        if response.status_code >= 400:
            raise NodeRefused(response.status_code, _error_of(response))
        return response.json()

    async def fan_out(
        self, target: str, local: Callable[[], Awaitable[list[dict[str, Any]]]]
    ) -> list[NodeAnswer]:
        """``local()`` here and ``GET target`` on every other node, all at once."""

        async def one(name: str) -> NodeAnswer:
            try:
                items = await self.ask(name, "GET", target)
            except TimeoutError:
                return NodeAnswer(name, False, [], f"no answer within {self.timeout:g} s")
            except NodeRefused as exc:
                return NodeAnswer(name, False, [], str(exc))
            except (httpx.HTTPError, OSError, ValueError) as exc:
                return NodeAnswer(name, False, [], f"{exc.__class__.__name__}: {exc}".strip())
            return NodeAnswer(name, True, list(items))

        here = NodeAnswer(self.name, True, await local(), local=True)
        others = await asyncio.gather(*(one(name) for name in sorted(self.peers)))
        return [here, *others]


class NodeRefused(Exception):
    """A node answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def _error_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))[:200]
    except ValueError:
        return response.text[:200]


def redis_status(gateway: Any) -> str | None:
    """``"shared"`` while the cluster's Redis answers this node, ``"local"`` while the node goes
    on with its local state (as the metric ``mailwarden_shared_state_redis`` says), ``None``
    without ``[redis]``: what the dashboard shows."""
    shared = gateway.policy_steps.shared
    if shared is None:
        return None
    return "local" if shared.breaker.down else "shared"


def merged_rows(answers: list[NodeAnswer], key: str, limit: int) -> list[dict[str, Any]]:
    """The items of every node that answered, each with its ``node``, newest first."""
    rows = [{**item, "node": a.name} for a in answers for item in a.items]
    rows.sort(key=lambda row: float(row.get(key) or 0), reverse=True)
    return rows[:limit]
