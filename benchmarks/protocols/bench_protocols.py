"""Messages/s through the clamd, spamd and rspamd-HTTP listeners next to ``Gateway.scan``
called directly, in one run.

``mailwarden serve`` runs the three listeners (antispam without DNS, as ``mailwarden bench``
runs it); this process sends the same generated messages through each with ``--concurrency``
connections in flight (asyncio clients speaking the raw protocols: clamd ``zINSTREAM`` in
64 KiB chunks, spamd ``CHECK``, HTTP ``POST /checkv2`` on keep-alive connections). The
baseline is ``Gateway.scan`` in this process with the same config and concurrency, run first
and last (the mean). The listeners also record an event per scan (``Gateway.record``), which
the direct scan does not; ``scan+record`` shows that cost. Everything shares the machine's
cores, so only the ratios within one run mean anything.

    .venv/bin/python benchmarks/protocols/bench_protocols.py --messages 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mailwarden.bench.corpus import generate  # noqa: E402
from mailwarden.bench.run import OFFLINE_ANTISPAM  # noqa: E402
from mailwarden.config import parse_config  # noqa: E402
from mailwarden.pipeline import Gateway  # noqa: E402
from mailwarden.plugins import build_plugin_manager  # noqa: E402
from tests.integration.protocols_serve import serve_protocols  # noqa: E402


async def _rate(
    messages: list[bytes], width: int, one: Callable[[bytes], Awaitable[None]]
) -> float:
    queue = list(messages)

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return len(messages) / (time.perf_counter() - began)


async def direct(messages: list[bytes], width: int, home: Path, record: bool) -> float:
    plugins = build_plugin_manager()
    config = parse_config(OFFLINE_ANTISPAM, plugins.config_schemas())
    config.gateway.home = str(home)
    async with Gateway(config, plugins=plugins) as gateway:

        async def one(raw: bytes) -> None:
            decision = await gateway.scan(raw)
            if record:
                gateway.record(decision, ingress="bench", reply="")

        await one(messages[0])  # warm: plugin start-up is not measured
        return await _rate(messages, width, one)


async def clamd(messages: list[bytes], width: int, port: int) -> float:
    async def one(raw: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"zINSTREAM\0")
        for i in range(0, len(raw), 65536):
            chunk = raw[i : i + 65536]
            writer.write(struct.pack(">I", len(chunk)) + chunk)
        writer.write(struct.pack(">I", 0))
        reply = await reader.readuntil(b"\0")
        assert reply.startswith(b"stream: "), reply
        writer.close()

    return await _rate(messages, width, one)


async def spamd(messages: list[bytes], width: int, port: int) -> float:
    async def one(raw: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"CHECK SPAMC/1.5\r\nUser: nobody\r\nContent-length: {len(raw)}\r\n\r\n"
        writer.write(head.encode() + raw)
        reply = await reader.read()
        assert reply.startswith(b"SPAMD/1.5 0 EX_OK"), reply
        writer.close()

    return await _rate(messages, width, one)


async def http(messages: list[bytes], width: int, port: int) -> float:
    queue = list(messages)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            raw = queue.pop()
            head = f"POST /checkv2 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}\r\n\r\n"
            writer.write(head.encode() + raw)
            status = await reader.readuntil(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 200 "), status
            length = int(status.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            json.loads(await reader.readexactly(length))
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return len(messages) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    messages = generate(args.messages, seed=7)
    size = sum(map(len, messages))
    width = args.concurrency
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-protocols-") as tmp:
        root = Path(tmp)
        rates["direct (first)"] = asyncio.run(direct(messages, width, root / "d1", False))
        rates["direct scan+record"] = asyncio.run(direct(messages, width, root / "d2", True))
        with serve_protocols(root / "serve", OFFLINE_ANTISPAM, clamd_max_size=50 << 20) as served:
            asyncio.run(spamd(messages[:20], width, served.spamd))  # warm the server
            rates["clamd INSTREAM"] = asyncio.run(clamd(messages, width, served.clamd))
            rates["spamd CHECK"] = asyncio.run(spamd(messages, width, served.spamd))
            rates["http /checkv2"] = asyncio.run(http(messages, width, served.http))
        rates["direct (last)"] = asyncio.run(direct(messages, width, root / "d3", False))
    base = (rates["direct (first)"] + rates["direct (last)"]) / 2
    print(f"{len(messages)} messages, {size / 1e6:.1f} MB, {width} in flight")
    print(f"{'path':<22} {'msg/s':>8} {'vs Gateway.scan':>16}")
    for name, rate in rates.items():
        print(f"{name:<22} {rate:8.1f} {rate / base:15.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"baseline": base, "rates": rates}, indent=2) + "\n")


if __name__ == "__main__":
    main()
