"""The milter's own CPU per message, in parts, without Postfix: the protocol alone and the
pipeline behind it, measured in this process (``time.thread_time``/``process_time``), so the
figures hold up on a shared machine where end-to-end rates do not.

  protocol  one MTA connection per message (OPTNEG, macros, CONNECT, HELO, MAIL, RCPT, the
            headers and body of smtp-source's 1 KiB message, EOB, QUIT) fed to a
            ``MilterConnection`` over an in-memory transport, a handler that accepts at once
  pipeline  ``GatewayMilter.end_of_message`` on the same message with a gateway on the
            configuration given (every detector off by default, ``--detectors`` for the
            four): the loop thread's CPU, and the whole process's (the verdict hooks run in a
            worker thread)
  whole     both together: the connection's packets handled by ``GatewayMilter``, what
            ``mailwarden serve`` does per message but for the socket system calls

``--native-headers`` alternates the protocol with and without the C core's header run in one
process (``--headers 12`` for a message from outside).

Compare two versions by running it with ``PYTHONPATH`` set to the other checkout's ``core/``:

    .venv/bin/python benchmarks/smtp/bench_milter_parts.py
    PYTHONPATH=/tmp/before/core .venv/bin/python benchmarks/smtp/bench_milter_parts.py

or let it alternate the two, a process per round and version, and print the min and median
of each part's rounds (``--rounds`` of each, the other checkout first):

    .venv/bin/python benchmarks/smtp/bench_milter_parts.py --compare-core /tmp/before/core
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mailwarden.bench.run import OFFLINE_ANTISPAM  # noqa: E402
from mailwarden.ingress.milter import (  # noqa: E402
    GatewayMilter,
    MilterMessage,
    MilterResult,
    MilterServer,
    encode_packet,
)
from mailwarden.pipeline import Gateway  # noqa: E402
from tests.milter_mta import MemoryTransport, headers_and_body  # noqa: E402

# What smtp-source -l 1024 sends, with the Received line Postfix adds.
BODY = b"".join(b"%d" % (i % 10) + b"X" * 78 + b"\r\n" for i in range(1, 13)) + b"X" * 64 + b"\r\n"
RAW = (
    b"Received: from vm ([127.0.0.1])\r\n\tby mx.test (Postfix) with ESMTP id ABC123\r\n"
    b"\tfor <bob@example.net>; Sun,  6 Dec 2026 19:21:44 +0000 (UTC)\r\n"
    b"From: <alice@example.org>\r\nTo: <bob@example.net>\r\n"
    b"Date: Sun,  6 Dec 2026 19:21:44 +0000 (UTC)\r\nMessage-Id: <05dd.0003.0000@vm>\r\n\r\n"
) + BODY


def _with_received(raw: bytes, extra: int) -> bytes:
    """``raw`` with ``extra`` more Received fields on top, as a message that crossed that
    many relays carries them (mail from outside has 5-15 such trace and signature fields)."""
    trace = b"".join(
        b"Received: from relay%d.example.net (relay%d.example.net [192.0.2.%d])\r\n"
        b"\tby relay%d.example.org with ESMTPS id R%06d; Sun,  6 Dec 2026 19:21:%02d +0000\r\n"
        % (i, i, i % 250 + 1, i + 1, i, i % 60)
        for i in range(extra)
    )
    return trace + raw


NO_DETECTORS = '[detectors]\ndisabled = ["antivirus", "antispam", "reputation", "sandbox"]\n'


def _stream() -> tuple[bytes, bytes, bytes]:
    """One connection as Postfix writes it: OPTNEG, then one message, then QUIT."""
    out: list[bytes] = []

    def macro(stage: str, **values: str) -> None:
        data = stage.encode()
        for name, value in values.items():
            data += f"{{{name}}}".encode() + b"\0" + value.encode() + b"\0"
        out.append(encode_packet("D", data))

    macro("C", client_addr="127.0.0.1", client_name="localhost", daemon_name="mx")
    out.append(encode_packet("C", b"localhost\0" + b"4" + struct.pack("!H", 4000) + b"127.0.0.1\0"))
    macro("H", tls_version="")
    out.append(encode_packet("H", b"vm\0"))
    macro("M", i="ABC123", mail_addr="alice@example.org")
    out.append(encode_packet("M", b"<alice@example.org>\0SIZE=1385\0"))
    macro("R", rcpt_addr="bob@example.net")
    out.append(encode_packet("R", b"<bob@example.net>\0"))
    headers, body = headers_and_body(RAW)
    out += [encode_packet("L", n.encode() + b"\0" + v.encode() + b"\0") for n, v in headers]
    out.append(encode_packet("B", body))
    macro("E", i="ABC123")
    out.append(encode_packet("E"))
    optneg = encode_packet("O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF))
    return optneg, b"".join(out), encode_packet("Q")


class _Accept:
    async def end_of_message(self, message: MilterMessage) -> MilterResult:
        message.raw()
        return MilterResult("accept", add_headers=[("X-Spam-Status", "No, score=0.0")])


async def _connection(server: MilterServer, stream: tuple[bytes, bytes, bytes]) -> bytes:
    """One MTA connection's packets through ``server``; what it wrote back."""
    optneg, message, quit_ = stream
    connection = server._connection()
    transport = MemoryTransport()
    connection.connection_made(transport)
    connection.data_received(optneg)
    connection.data_received(message)
    while connection.deciding is not None:
        await connection.deciding
    connection.data_received(quit_)
    connection.connection_lost(None)
    return bytes(transport.written)


async def protocol(n: int) -> float:
    """CPU ms per message of the protocol alone."""
    stream = _stream()
    server = MilterServer(_Accept())
    began = time.thread_time()
    for _ in range(n):
        await _connection(server, stream)
    return (time.thread_time() - began) * 1000 / n


async def native_headers(rounds: int, n: int) -> None:
    """The protocol with the C core's header run and with it off (each header packet through
    the codec, as before it), interleaved in this process: the min and median of the rounds'
    CPU per connection. Alternating in one process sees differences of a few microseconds
    that separate processes on a shared machine do not."""
    from mailwarden.ingress.milter import server as milter_server

    stream = _stream()
    server = MilterServer(_Accept())
    got: dict[str, list[float]] = {"native": [], "codec": []}
    header = milter_server._HEADER
    try:
        for _ in range(rounds):
            for way in got:
                # Off: no command byte matches the run's, so every packet takes the codec's path.
                milter_server._HEADER = header if way == "native" else -1
                began = time.thread_time()
                for _ in range(n):
                    await _connection(server, stream)
                got[way].append((time.thread_time() - began) * 1e6 / n)
    finally:
        milter_server._HEADER = header
    for way, values in got.items():
        print(
            f"header packets, {way + ':':7} {min(values):6.1f} us min, "
            f"{statistics.median(values):6.1f} us median per connection"
        )


def _gateway(config: str, home: Path) -> Gateway:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "mailwarden.toml"
    path.write_text(f'[gateway]\nhome = "{home}"\n[events]\nenabled = false\n{config}')
    return Gateway.from_file(str(path))


def _settle(gateway: Gateway) -> None:
    """Commit what the antispam plugin queued (Bayes autolearn's group commit): the lessons
    of the messages measured count in their CPU, those of the warm-up do not."""
    plugin = gateway.plugins.plugins.get("antispam")
    flush = getattr(getattr(getattr(plugin, "obj", None), "bayes", None), "flush", None)
    if flush is not None:
        flush()


async def pipeline(n: int, config: str, home: Path) -> tuple[float, float]:
    """CPU ms per message of ``GatewayMilter.end_of_message``: loop thread, whole process."""
    gateway = _gateway(config, home)
    headers, body = headers_and_body(RAW)

    def message() -> MilterMessage:
        return MilterMessage(
            macros={"i": "ABC123", "client_addr": "127.0.0.1"},
            family="4",
            address="127.0.0.1",
            helo="vm",
            sender="<alice@example.org>",
            recipients=[("<bob@example.net>", [])],
            headers=list(headers),
            body=bytearray(body),
        )

    async with gateway:
        milter = GatewayMilter(gateway)
        for _ in range(50):
            await milter.end_of_message(message())
        _settle(gateway)
        thread, process = time.thread_time(), time.process_time()
        for _ in range(n):
            await milter.end_of_message(message())
        _settle(gateway)
        return (
            (time.thread_time() - thread) * 1000 / n,
            (time.process_time() - process) * 1000 / n,
        )


async def whole(n: int, config: str, home: Path) -> tuple[float, float]:
    """CPU ms per message of a connection's packets handled by ``GatewayMilter``: loop
    thread, whole process."""
    stream = _stream()
    async with _gateway(config, home) as gateway:
        server = MilterServer(GatewayMilter(gateway))

        async def one() -> None:
            written = await _connection(server, stream)
            assert written.endswith(encode_packet("a")), written[-40:]

        for _ in range(50):
            await one()
        _settle(gateway)
        thread, process = time.thread_time(), time.process_time()
        for _ in range(n):
            await one()
        _settle(gateway)
        return (
            (time.thread_time() - thread) * 1000 / n,
            (time.process_time() - process) * 1000 / n,
        )


def compare(args: argparse.Namespace, other: str) -> int:
    """Alternate this checkout's ``core/`` and ``other`` (one process per round and
    version); the min and median of each part's rounds and the ratio of the medians."""
    argv = [sys.executable, __file__, "--rounds", "1", "--messages", str(args.messages)]
    argv += ["--parts", args.parts, "--headers", str(args.headers)]
    argv += ["--detectors"] if args.detectors else []
    got: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for version, path in (("other", other), ("this", "")):
            env = dict(os.environ, PYTHONPATH=path)
            out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
            for line in out.stdout.splitlines():
                found = re.match(r"(.*?):\s+([\d.]+) ms CPU per message", line)
                if found:
                    part = " ".join(found[1].replace(",", " ").split())
                    got.setdefault((part, version), []).append(float(found[2]))
    print(f"{'ms CPU per message':45} {'other min/median':>17} {'this min/median':>17}  ratio")
    for part in dict.fromkeys(p for p, _ in got):
        a, b = got[(part, "other")], got[(part, "this")]
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{part:45} {min(a):8.3f}/{ma:.3f} {min(b):8.3f}/{mb:.3f}  {mb / ma:5.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="the best of this many rounds")
    parser.add_argument("--detectors", action="store_true", help="the four detectors on")
    parser.add_argument(
        "--headers",
        type=int,
        default=0,
        help="this many more header fields (Received lines) in the message, 6 without",
    )
    parser.add_argument(
        "--parts", default="protocol,pipeline,whole", help="which parts, comma-separated"
    )
    parser.add_argument(
        "--native-headers",
        action="store_true",
        help="only the protocol, with the C core's header run and without, alternated",
    )
    parser.add_argument(
        "--compare-core",
        metavar="DIR",
        help="alternate with another checkout's core/ (a process per round and version)",
    )
    args = parser.parse_args()
    global RAW
    RAW = _with_received(RAW, args.headers)
    if args.compare_core:
        return compare(args, args.compare_core)
    if args.native_headers:
        asyncio.run(native_headers(args.rounds, args.messages))
        return 0
    parts = set(args.parts.split(","))
    config = OFFLINE_ANTISPAM + ("" if args.detectors else NO_DETECTORS)
    what = "four detectors" if args.detectors else "no detectors"
    if "protocol" in parts:
        asyncio.run(protocol(200))
        proto = min(asyncio.run(protocol(args.messages)) for _ in range(args.rounds))
        print(f"protocol alone:                     {proto:.3f} ms CPU per message")
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-milter-") as work:
        for part, run in (("pipeline", pipeline), ("whole", whole)):
            if part not in parts:
                continue
            loop, process = min(
                asyncio.run(run(args.messages, config, Path(work) / f"{part}{i}"))
                for i in range(args.rounds)
            )
            print(f"{part + ',':9} {what + ', loop thread:':25} {loop:.3f} ms CPU per message")
            print(f"{part + ',':9} {what + ', whole process:':25} {process:.3f} ms CPU per message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
