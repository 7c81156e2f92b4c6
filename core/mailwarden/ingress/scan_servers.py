"""Starting the scan-protocol listeners (clamd, spamd, the rspamd HTTP API) that are enabled.

Apart from the protocols' shared helpers (:mod:`.scan_protocols`), which each protocol
imports: the protocols do not import what starts them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .clamd import start_clamd
from .http_scan import start_http_scan
from .spamd import start_spamd

if TYPE_CHECKING:
    from ..pipeline import Gateway

__all__ = ["start_scan_protocols"]


async def start_scan_protocols(
    gateway: Gateway, announce: Callable[[str], None], *, reuse_port: bool = False
) -> list[asyncio.Server]:
    """Start the enabled ``[clamd]``, ``[spamd]`` and ``[http_scan]`` listeners."""
    cfg = gateway.config
    servers: list[asyncio.Server] = []
    for name, section, start, what in (
        ("clamd", cfg.clamd, start_clamd, "clamd protocol: clamdscan --stream, Exim av_scanner"),
        ("spamd", cfg.spamd, start_spamd, "spamd protocol: spamc, Exim spam ="),
        ("http", cfg.http_scan, start_http_scan, "rspamd HTTP API: rspamc, POST /checkv2"),
    ):
        if section.enabled:
            servers.append(await start(gateway, reuse_port=reuse_port))
            announce(f"  {name:<8} {section.listen}:{section.port}  ({what})")
    return servers
