"""Every ingress answers without Nagle's algorithm: a multi-line reply written in pieces must
not wait for the client's delayed ACK (40 ms on Linux, twice per message at Postfix's
content-filter transport before this was fixed)."""

from __future__ import annotations

import asyncio
import gc
import socket
from pathlib import Path
from typing import Any

from mailwarden.ingress.content_filter import start_content_filter
from mailwarden.ingress.milter import start_milter_server
from mailwarden.ingress.smtp import GatewaySMTP, start_smtp_servers
from mailwarden.testing import _gateway
from tests.conftest import free_port


def _server_sockets() -> list[socket.socket]:
    """The server side of every open ingress connection in this process."""
    from mailwarden.ingress import milter

    found = []
    for obj in gc.get_objects():
        if isinstance(obj, (GatewaySMTP, milter.MilterConnection)) and obj.transport is not None:
            sock = obj.transport.get_extra_info("socket")
            if sock is not None:
                found.append(sock)
    return found


def test_smtp_content_filter_and_milter_connections_have_nagle_off(tmp_path: Path) -> None:
    config = (
        f"[smtp]\nport = {free_port()}\n"
        f'[content_filter]\nenabled = true\nport = {free_port()}\nreinject = "127.0.0.1:1"\n'
        f"[milter]\nenabled = true\nport = {free_port()}\n"
    )

    async def main() -> None:
        gateway = _gateway(None, False, config, tmp_path / "home")
        async with gateway:
            servers: list[asyncio.Server] = [
                *await start_smtp_servers(gateway, implicit_tls=False),
                await start_content_filter(gateway),
                await start_milter_server(gateway),
            ]
            clients: list[Any] = []
            try:
                for server in servers:
                    port = server.sockets[0].getsockname()[1]
                    clients.append(await asyncio.open_connection("127.0.0.1", port))
                for _ in range(100):
                    if len(_server_sockets()) >= len(servers):
                        break
                    await asyncio.sleep(0.02)
                sockets = _server_sockets()
                assert len(sockets) == len(servers)
                for sock in sockets:
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            finally:
                for _reader, writer in clients:
                    writer.close()
                for server in servers:
                    server.close()
                    await server.wait_closed()

    asyncio.run(main())
