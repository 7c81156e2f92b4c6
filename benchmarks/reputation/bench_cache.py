"""Reputation cache at full size: inserts/s, hit latency p50/p99, against an in-process dict.

Usage: python benchmarks/reputation/bench_cache.py [--cap 360000] [--inserts 400000]
       [--lookups 50000] [--dir DIR]

1. Fills an empty cache with ``--inserts`` entries, one insert per write transaction, from
   1 process and then (fresh cache) from 2 processes at once, and checks the issue's claim: exactly
   ``--cap`` entries are left and each writer's oldest entries are the ones evicted.
2. Times cache hits at ``--cap`` entries (``get_many`` of one key: a read transaction plus the
   LRU touch in a write transaction, as the plugin does), from 1 and from 2 processes at once.
3. Times the same hits on an in-process ``OrderedDict`` LRU (lookup + ``move_to_end``): the
   baseline a cache private to one worker would cost, without sharing or surviving restarts.

Prints one table; figures are per operation, in microseconds, and depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from mailwarden_reputation.cache import Answer, ReputationCache

ANSWER = Answer(verdict="malicious", name="Lab.Test-File", source="http")


def key(prefix: str, i: int) -> str:
    """A realistic cache key: a SHA-256 lookup."""
    return f"sha256:{hashlib.sha256(f'{prefix}{i}'.encode()).hexdigest()}"


def insert(path: str, cap: int, prefix: str, count: int, start: Event, out: Any) -> None:
    """Insert ``count`` keys, one transaction each; report the seconds taken through ``out``."""
    cache = ReputationCache(Path(path), cap=cap)
    keys = [key(prefix, i) for i in range(count)]
    start.wait(60)
    began = time.perf_counter()
    for k in keys:
        cache.put(k, ANSWER, 86400)
    elapsed = time.perf_counter() - began
    cache.close()
    out.put(elapsed)


def lookups(path: str, cap: int, keys: list[str], start: Event, out: Any) -> None:
    """Time one ``get_many`` per key; report the latencies in microseconds through ``out``."""
    cache = ReputationCache(Path(path), cap=cap)
    start.wait(60)
    times = []
    clock = time.perf_counter_ns
    for k in keys:
        t = clock()
        hit = cache.get_many([k])
        times.append((clock() - t) / 1000)
        if not hit:
            raise AssertionError(f"miss for {k}")
    cache.close()
    out.put(times)


def run(target: Any, jobs: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target`` in one process per job, released together; gather what they report."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*job, start, out)) for job in jobs]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    results = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            sys.exit(f"worker failed with exit code {p.exitcode}")
    return results


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fill(base: Path, name: str, cap: int, inserts: int, writers: int) -> tuple[Path, float]:
    """A cache filled by ``writers`` processes; checks the cap and LRU; returns inserts/s."""
    path = base / name
    ReputationCache(path, cap=cap).close()
    share = inserts // writers
    prefixes = [f"w{i}-" for i in range(writers)]
    took = run(insert, [(str(path), cap, p, share) for p in prefixes])
    # Released together, so the slowest writer's time is the wall time of the whole fill.
    total_rate = share * writers / max(took)
    cache = ReputationCache(path, cap=cap)
    try:
        left = len(cache)
        if left != min(cap, share * writers):
            sys.exit(f"cap broken: {left:,} entries left, expected {cap:,}")
        order = set(cache.keys_in_lru_order())
        for p in prefixes:
            kept = [i for i in range(share) if key(p, i) in order]
            if kept != list(range(share - len(kept), share)):
                sys.exit(f"writer {p}: evicted entries were not its least recently used")
    finally:
        cache.close()
    return path, total_rate


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=360_000)
    parser.add_argument("--inserts", type=int, default=400_000)
    parser.add_argument("--lookups", type=int, default=50_000)
    parser.add_argument("--dir", help="where the caches go (default: a temporary directory)")
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="mailwarden-bench-rep-"))
    print(f"cap {args.cap:,}, {args.inserts:,} inserts, {args.lookups:,} lookups, in {base}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")

    rows = []
    _, rate1 = fill(base, "one", args.cap, args.inserts, 1)
    rows.append(("insert, 1 process", f"{rate1:,.0f}/s", "", ""))
    path, rate2 = fill(base, "two", args.cap, args.inserts, 2)
    rows.append(("insert, 2 processes", f"{rate2:,.0f}/s total", "", ""))
    print(f"both fills left exactly {args.cap:,} entries, least recently used evicted")

    cache = ReputationCache(path, cap=args.cap)
    present = cache.keys_in_lru_order()
    cache.close()
    step = max(1, len(present) // args.lookups)
    sample = present[::step][: args.lookups]
    (single,) = run(lookups, [(str(path), args.cap, sample)])
    rows.append(("hit (LMDB), 1 process", "", *_p(single)))
    halves = [sample[0::2], sample[1::2]]
    both = run(lookups, [(str(path), args.cap, h) for h in halves])
    merged = [t for times in both for t in times]
    rows.append(("hit (LMDB), 2 processes", "", *_p(merged)))

    lru: collections.OrderedDict[str, Answer] = collections.OrderedDict(
        (k, ANSWER) for k in present
    )
    times = []
    clock = time.perf_counter_ns
    for k in sample:
        t = clock()
        hit = lru.get(k)
        lru.move_to_end(k)
        times.append((clock() - t) / 1000)
        assert hit is not None
    rows.append(("hit (dict baseline), 1 process", "", *_p(times)))

    print(f"\n{'operation':<32} {'rate':>18} {'p50 µs':>9} {'p99 µs':>9}")
    for name, rate, p50, p99 in rows:
        print(f"{name:<32} {rate:>18} {p50:>9} {p99:>9}")


def _p(times: list[float]) -> tuple[str, str]:
    return f"{statistics.median(times):.1f}", f"{pct(times, 0.99):.1f}"


if __name__ == "__main__":
    main()
