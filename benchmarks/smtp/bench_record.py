"""What recording a message costs the milter with the message event log on (issue 24): CPU per
message and how long the event loop is held, measured in this process.

One MTA connection per message (as ``bench_milter_parts.py``'s ``whole``) through
``GatewayMilter`` with ``[events] enabled = true`` (``--no-events``: off, the floor):

  cpu     loop thread and whole process CPU ms per message (the event writer's thread counts
          in the process: every queued event is committed before the clock stops)
  record  wall ms of ``Gateway.record`` per message, p50 / p99 / max (the loop is held
          throughout: an fsync in it is a stall)
  stall   a probe task on the same loop: the longest time it waited for the loop, per
          message, p50 / p99 / max (what another connection waits for its next packet)

Compare two versions by running it with ``PYTHONPATH`` set to the other checkout's ``core/``:

    .venv/bin/python benchmarks/smtp/bench_record.py
    PYTHONPATH=/tmp/before/core .venv/bin/python benchmarks/smtp/bench_record.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "smtp"))

from bench_milter_parts import NO_DETECTORS, _connection, _settle, _stream  # noqa: E402

from mailwarden.bench.run import OFFLINE_ANTISPAM  # noqa: E402
from mailwarden.ingress.milter import GatewayMilter, MilterServer, encode_packet  # noqa: E402
from mailwarden.pipeline import Gateway  # noqa: E402


def _gateway(config: str, home: Path) -> Gateway:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "mailwarden.toml"
    path.write_text(f'[gateway]\nhome = "{home}"\n{config}')
    return Gateway.from_file(str(path))


def _written(gateway: Gateway) -> None:
    """Every queued event committed (the writer's CPU counts); nothing to do on the old code."""
    flush: Callable[[], Any] | None = getattr(gateway.events, "flush", None)
    if flush is not None:
        flush()
    _settle(gateway)


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (
        statistics.median(ordered),
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        ordered[-1],
    )


async def run(n: int, config: str, home: Path, probe: bool) -> dict[str, Any]:
    stream = _stream()
    async with _gateway(config, home) as gateway:
        server = MilterServer(GatewayMilter(gateway))
        record_ms: list[float] = []
        original = gateway.record

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                record_ms.append((time.perf_counter() - began) * 1000)

        gateway.record = timed  # type: ignore[method-assign]
        worst = [0.0]
        running = True

        async def probe_loop() -> None:
            while running:
                began = time.perf_counter()
                await asyncio.sleep(0)
                worst[0] = max(worst[0], time.perf_counter() - began)

        async def one() -> None:
            written = await _connection(server, stream)
            assert written.endswith(encode_packet("a")), written[-40:]

        for _ in range(50):
            await one()
        _written(gateway)
        record_ms.clear()
        stalls: list[float] = []
        task = asyncio.create_task(probe_loop()) if probe else None
        thread, process = time.thread_time(), time.process_time()
        for _ in range(n):
            worst[0] = 0.0
            await one()
            stalls.append(worst[0] * 1000)
        _written(gateway)
        cpu = (time.thread_time() - thread, time.process_time() - process)
        running = False
        if task is not None:
            await task
        return {
            "loop": cpu[0] * 1000 / n,
            "process": cpu[1] * 1000 / n,
            "record": _percentiles(record_ms),
            "stall": _percentiles(stalls),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="the median of this many rounds")
    parser.add_argument("--detectors", action="store_true", help="the four detectors on")
    parser.add_argument("--no-events", action="store_true", help="[events] enabled = false")
    args = parser.parse_args()
    config = f"[events]\nenabled = {'false' if args.no_events else 'true'}\n"
    config += OFFLINE_ANTISPAM + ("" if args.detectors else NO_DETECTORS)
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-record-") as work:
        cpu = [
            asyncio.run(run(args.messages, config, Path(work) / f"cpu{i}", probe=False))
            for i in range(args.rounds)
        ]
        lag = [
            asyncio.run(run(args.messages, config, Path(work) / f"lag{i}", probe=True))
            for i in range(args.rounds)
        ]
    loop = statistics.median(r["loop"] for r in cpu)
    process = statistics.median(r["process"] for r in cpu)
    print(f"cpu     loop thread {loop:.3f} ms/msg, whole process {process:.3f} ms/msg")
    for name, rows in (("record", cpu), ("stall", lag)):
        p50, p99, top = (statistics.median(r[name][i] for r in rows) for i in range(3))
        print(f"{name:7} p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {top:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
