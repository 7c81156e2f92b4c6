"""Parse + walk + decode-every-leaf throughput: mailwarden_native vs Python's email.

Usage: python benchmarks/mime/bench_parse.py [--seconds S] [--rounds R] [--baseline DIR]

Reads the corpus MIME messages from $MAILWARDEN_CORPUS (default ../shared/corpus
beside the repository) and runs, in this process and on the same messages:

- mailwarden_native: parse, then for every leaf its content type, filename and
  charset and the transfer-decoded body;
- email compat32: ``message_from_bytes`` then the same per leaf
  (``get_content_type``, ``get_filename``, ``get_content_charset``,
  ``get_payload(decode=True)``): the baseline the target is set against;
- email default policy: the modern API, ``get_content()`` per leaf (a leaf
  where it raises counts as an error and the run goes on);
- memchr floor: one ``bytes.find`` of a byte value the message does not hold,
  i.e. one memchr over every byte (``bytes.count`` where a message holds all
  256 values): what merely reading the bytes costs.

With ``--baseline DIR`` (a directory holding another build's
``mailwarden_native`` package, e.g. ``git archive OLD native | tar -x -C /tmp/old``
then ``python /tmp/old/native/build_native.py``) that build runs too, as
"native (baseline)", so before and after come from the same run.

The parsers run interleaved, R rounds of about S CPU seconds each, on the
whole corpus and on the messages under 100 KB; within a round each parser's
time is spread over ten slices taken in turn, so a load change on the
(shared) machine hits all of them alike.  Rates are per second of this
thread's CPU time (wall time would also count the time other processes held
the core).  Figures are medians over the rounds with [min-max], and every
ratio is taken within one round.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mailwarden_native import parse

ROOT = Path(__file__).resolve().parents[2]
SKIP_NAMES = {"LICENSE", "MIT-LICENSE", "COPYING"}
SMALL = 100_000


def load_corpus() -> list[bytes]:
    base = Path(os.environ.get("MAILWARDEN_CORPUS") or ROOT.parent / "shared" / "corpus")
    files = [
        p
        for sub in ("mime", "mime-expected")
        for p in sorted((base / sub).rglob("*"))
        if p.is_file() and p.name not in SKIP_NAMES and p.suffix not in {".json", ".md"}
    ]
    if not files:
        sys.exit(f"no corpus messages under {base} (set MAILWARDEN_CORPUS)")
    return [p.read_bytes() for p in files]


def make_native(parse_fn: Callable[[bytes], object]) -> Callable[[bytes], int]:
    def native_once(raw: bytes) -> int:
        msg = parse_fn(raw)
        total = 0
        for part in msg.leaves():  # type: ignore[attr-defined]
            _ = part.content_type, part.filename, part.charset
            total += len(part.decoded())
        return total

    return native_once


native_once = make_native(parse)


def load_baseline(directory: str) -> Callable[[bytes], object]:
    """``parse`` of the mailwarden_native package under directory, imported under
    another name so that it runs beside this checkout's build."""
    pkg = Path(directory).resolve()
    if (pkg / "native" / "mailwarden_native").is_dir():
        pkg = pkg / "native"
    init = pkg / "mailwarden_native" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "mailwarden_native_baseline", init, submodule_search_locations=[str(init.parent)]
    )
    if spec is None or spec.loader is None:
        sys.exit(f"no mailwarden_native package under {directory}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.parse  # type: ignore[no-any-return]


def email_once(raw: bytes) -> int:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    total = 0
    for part in msg.walk():
        if part.is_multipart():
            continue
        _ = part.get_content_type(), part.get_filename(), part.get_content_charset()
        payload = part.get_payload(decode=True)
        total += len(payload) if isinstance(payload, bytes) else 0
    return total


ERRORS: dict[str, int] = {}


def email_default_once(raw: bytes) -> int:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    total = 0
    for part in msg.walk():
        if part.is_multipart():
            continue
        _ = part.get_content_type(), part.get_filename(), part.get_content_charset()
        try:
            content = part.get_content()  # type: ignore[attr-defined]
        except (KeyError, LookupError, ValueError, AssertionError):
            # policy.default raises on some broken parts (see notes/performance.md).
            ERRORS["email (default)"] = ERRORS.get("email (default)", 0) + 1
            continue
        total += len(content) if isinstance(content, str | bytes) else 0
    return total


def absent_byte(raw: bytes) -> bytes | None:
    present = set(raw)
    for b in (0xFF, 0x00, 0xFE, *range(256)):
        if b not in present:
            return bytes([b])
    return None


def make_floor(corpus: list[bytes]) -> Callable[[bytes], int]:
    needles = {id(raw): absent_byte(raw) for raw in corpus}

    def floor_once(raw: bytes) -> int:
        needle = needles[id(raw)]
        return raw.find(needle) if needle is not None else raw.count(b"\n")

    return floor_once


SLICES = 10


def passes(fn: Callable[[bytes], int], corpus: list[bytes], seconds: float) -> tuple[int, float]:
    """Whole passes over the corpus for about ``seconds`` of this thread's CPU time:
    (passes, CPU seconds).  CPU time, not wall time: on the shared machine a slice's
    wall time also counts the time other processes held the core."""
    done = 0
    start = time.thread_time()
    while True:
        for raw in corpus:
            fn(raw)
        done += 1
        elapsed = time.thread_time() - start
        if elapsed >= seconds:
            return done, elapsed


def measure_round(
    parsers: list[tuple[str, Callable[[bytes], int]]], corpus: list[bytes], seconds: float
) -> dict[str, tuple[float, float]]:
    """msgs/s and MB/s per parser, each run in SLICES turns alternating with the others."""
    size = sum(len(r) for r in corpus)
    totals = {name: [0, 0.0] for name, _ in parsers}
    for _ in range(SLICES):
        for name, fn in parsers:
            done, elapsed = passes(fn, corpus, seconds / SLICES)
            totals[name][0] += done
            totals[name][1] += elapsed
    return {
        name: (done * len(corpus) / elapsed, done * size / elapsed / 1e6)
        for name, (done, elapsed) in totals.items()
    }


def fmt(values: list[float], digits: int) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def run_set(
    name: str,
    corpus: list[bytes],
    seconds: float,
    rounds: int,
    baseline: Callable[[bytes], int] | None = None,
) -> None:
    parsers: list[tuple[str, Callable[[bytes], int]]] = [
        ("mailwarden_native", native_once),
        ("email (compat32)", email_once),
        ("email (default)", email_default_once),
        ("memchr floor", make_floor(corpus)),
    ]
    if baseline is not None:
        parsers.append(("native (baseline)", baseline))
    rates: dict[str, list[tuple[float, float]]] = {n: [] for n, _ in parsers}
    ERRORS.clear()
    for raw in corpus:  # warm-up; every parser must get through every message
        for _, fn in parsers:
            fn(raw)
    errors = dict(ERRORS)
    for _ in range(rounds):
        for pname, rate in measure_round(parsers, corpus, seconds).items():
            rates[pname].append(rate)
    mb = sum(len(r) for r in corpus) / 1e6
    print(f"\n## {name}: {len(corpus)} messages, {mb:.2f} MB, {rounds} rounds of {seconds:g} s")
    print("| parser | msgs/s | MB/s | x compat32 (msgs/s) | errors |")
    print("|---|---:|---:|---:|---:|")
    base = [r[0] for r in rates["email (compat32)"]]
    for pname, _ in parsers:
        msgs = [r[0] for r in rates[pname]]
        mbs = [r[1] for r in rates[pname]]
        ratio = [m / b for m, b in zip(msgs, base, strict=True)]
        print(
            f"| {pname} | {fmt(msgs, 0)} | {fmt(mbs, 1)} | {fmt(ratio, 2)} "
            f"| {errors.get(pname, 0)} |"
        )
    nat = rates["mailwarden_native"]
    per_round = {
        "native / email compat32 (msgs/s)": [
            n[0] / c[0] for n, c in zip(nat, rates["email (compat32)"], strict=True)
        ],
        "native / email default (msgs/s)": [
            n[0] / d[0] for n, d in zip(nat, rates["email (default)"], strict=True)
        ],
        "native / memchr floor (MB/s)": [
            n[1] / f[1] for n, f in zip(nat, rates["memchr floor"], strict=True)
        ],
    }
    if baseline is not None:
        per_round["baseline / email compat32 (msgs/s)"] = [
            n[0] / c[0]
            for n, c in zip(rates["native (baseline)"], rates["email (compat32)"], strict=True)
        ]
        per_round["native / baseline (msgs/s)"] = [
            n[0] / b[0] for n, b in zip(nat, rates["native (baseline)"], strict=True)
        ]
    for label, values in per_round.items():
        print(f"- {label}: {fmt(values, 3 if 'memchr' in label else 1)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per parser per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="another build's mailwarden_native package (or a tree with native/) to run beside",
    )
    args = ap.parse_args()
    corpus = load_corpus()
    baseline = make_native(load_baseline(args.baseline)) if args.baseline else None
    run_set("whole corpus", corpus, args.seconds, args.rounds, baseline)
    run_set(
        f"messages under {SMALL // 1000} KB",
        [r for r in corpus if len(r) < SMALL],
        args.seconds,
        args.rounds,
        baseline,
    )


if __name__ == "__main__":
    main()
