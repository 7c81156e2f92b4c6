"""``mailwarden serve``: the gateway with its listeners, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from . import __version__
from .ingress.smtp import start_smtp_server
from .pipeline import Gateway

__all__ = ["default_config_text", "run", "write_default_config"]


def default_config_text() -> str:
    """The commented default configuration that ``mailwarden init`` writes."""
    return files("mailwarden").joinpath("default_config.toml").read_text(encoding="utf-8")


def write_default_config(path: Path) -> bool:
    """Write the default config to ``path`` unless a file is there; True if written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(default_config_text(), encoding="utf-8")
    return True


async def run(gateway: Gateway, announce: Callable[[str], None] = print) -> None:
    """Start the gateway and its listeners, announce them, and serve until signalled."""
    await gateway.start()
    servers: list[asyncio.Server] = []
    try:
        cfg = gateway.config
        announce(f"mailwarden {__version__}")
        announce(f"  config   {cfg.source or '(embedded defaults)'}")
        announce(f"  plugins  {', '.join(gateway.plugins.plugins) or '(none)'}")
        if cfg.smtp.enabled:
            servers.append(await start_smtp_server(gateway))
            announce(f"  smtp     {cfg.smtp.listen}:{cfg.smtp.port}  (gateway listener)")
        announce(f"  delivery maildir {gateway.maildir.root}")
        announce(f"  events   {gateway.events.directory}")
        announce("ready")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        await gateway.stop()
