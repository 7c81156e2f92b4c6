"""The C MIME parser alone (``mw_parse_table``) next to memchr, on the corpus messages.

Usage: python benchmarks/mime/bench_c_parse.py [--seconds S] [--rounds R] [--baseline DIR]

Both run once per message through cffi, so they pay the same call cost: the parser
(``mw_parse_table`` with the default limits into one reused table, i.e. what
``mailwarden_native.parse`` calls) and libc's ``memchr`` for a byte value the message does
not hold (one pass over every byte, the floor of any parser).  With ``--baseline DIR`` (see
``bench_parse.py``) another build's ``mw_parse_table`` runs too.  Rounds interleave the
contestants in ten slices each; rates are CPU time of this thread (the machine is shared, and
CPU time leaves out the time other processes hold the core), medians over the rounds with
[min-max]; every ratio is taken within one round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cffi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_parse import SMALL, absent_byte, load_baseline, load_corpus

import mailwarden_native._core as core

SLICES = 10
TABLE_WORDS = 1 << 20  # room for any corpus message's tables


def parser_pass(mod: Any, corpus: list[bytes]) -> Callable[[], None]:
    ffi, lib = mod.ffi, mod.lib
    out = ffi.new("int64_t[]", TABLE_WORDS)
    null, parse_table = ffi.NULL, lib.mw_parse_table

    def run() -> None:
        for raw in corpus:
            if parse_table(raw, len(raw), null, out, TABLE_WORDS) < 0:
                raise RuntimeError("mw_parse_table failed")

    return run


def memchr_pass(corpus: list[bytes]) -> Callable[[], None]:
    ffi = cffi.FFI()
    ffi.cdef("void *memchr(const void *s, int c, size_t n);")
    memchr = ffi.dlopen(None).memchr
    # A message holding all 256 byte values is searched for its last byte's value instead
    # (still one pass up to nearly the end); none in the corpus does today.
    jobs = [(raw, (absent_byte(raw) or raw[-1:])[0], len(raw)) for raw in corpus]

    def run() -> None:
        for raw, byte, n in jobs:
            memchr(raw, byte, n)

    return run


def measure(runs: dict[str, Callable[[], None]], seconds: float) -> dict[str, float]:
    """Passes per CPU second for each contestant, run in SLICES turns."""
    done = dict.fromkeys(runs, 0)
    spent = dict.fromkeys(runs, 0.0)
    for _ in range(SLICES):
        for name, run in runs.items():
            start = time.thread_time()
            while True:
                run()
                done[name] += 1
                elapsed = time.thread_time() - start
                if elapsed >= seconds / SLICES:
                    break
            spent[name] += elapsed
    return {name: done[name] / spent[name] for name in runs}


def fmt(values: list[float], digits: int) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def run_set(name: str, corpus: list[bytes], args: argparse.Namespace, base: Any) -> None:
    runs = {"mw_parse_table": parser_pass(core, corpus), "memchr": memchr_pass(corpus)}
    if base is not None:
        runs["mw_parse_table (baseline)"] = parser_pass(base, corpus)
    for run in runs.values():  # warm-up
        run()
    size = sum(len(r) for r in corpus)
    rates: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(args.rounds):
        for n, passes in measure(runs, args.seconds).items():
            rates[n].append(passes)
    print(
        f"\n## {name}: {len(corpus)} messages, {size / 1e6:.2f} MB, "
        f"{args.rounds} rounds of {args.seconds:g} s (CPU time)"
    )
    print("| contestant | MB/s | us per message | x memchr (MB/s) |")
    print("|---|---:|---:|---:|")
    for n, per in rates.items():
        mbs = [p * size / 1e6 for p in per]
        us = [1e6 / (p * len(corpus)) for p in per]
        ratio = [p / m for p, m in zip(per, rates["memchr"], strict=True)]
        print(f"| {n} | {fmt(mbs, 0)} | {fmt(us, 3)} | {fmt(ratio, 3)} |")
    if base is not None:
        speed = [
            a / b
            for a, b in zip(
                rates["mw_parse_table"], rates["mw_parse_table (baseline)"], strict=True
            )
        ]
        print(f"- mw_parse_table / baseline: {fmt(speed, 2)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU time per contestant/round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--baseline", metavar="DIR", help="another build to run beside (bench_parse)")
    args = ap.parse_args()
    corpus = load_corpus()
    base = None
    if args.baseline:
        load_baseline(args.baseline)
        base = sys.modules["mailwarden_native_baseline._core"]
    run_set("whole corpus", corpus, args, base)
    small = [r for r in corpus if len(r) < SMALL]
    run_set(f"messages under {SMALL // 1000} KB", small, args, base)


if __name__ == "__main__":
    main()
