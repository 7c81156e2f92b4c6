"""Parse + walk + decode-every-leaf throughput: mailwarden_native vs Python's email.

Usage: python benchmarks/mime/bench_parse.py [--seconds S]
Reads the corpus MIME messages from $MAILWARDEN_CORPUS (default ../shared/corpus
beside the repository), runs both parsers in this process over the same set
of messages for about S seconds each, and prints messages/s, MB/s and the
ratio.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mailwarden_native import parse

ROOT = Path(__file__).resolve().parents[2]
SKIP_NAMES = {"LICENSE", "MIT-LICENSE", "COPYING"}


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


def native_once(raw: bytes) -> int:
    msg = parse(raw)
    total = 0
    for part in msg.leaves():
        _ = part.content_type, part.filename, part.charset
        total += len(part.decoded())
    return total


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


def measure(fn: Callable[[bytes], int], corpus: list[bytes], seconds: float) -> tuple[float, float]:
    size = sum(len(r) for r in corpus)
    rounds = 0
    start = time.perf_counter()
    while True:
        for raw in corpus:
            fn(raw)
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return rounds * len(corpus) / elapsed, rounds * size / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="time per parser")
    args = ap.parse_args()
    corpus = load_corpus()
    mb = sum(len(r) for r in corpus) / 1e6
    print(f"corpus: {len(corpus)} messages, {mb:.2f} MB")
    for raw in corpus:  # warm-up, and both must succeed on every message
        native_once(raw)
        email_once(raw)
    nat = measure(native_once, corpus, args.seconds)
    ref = measure(email_once, corpus, args.seconds)
    print(f"{'parser':<22}{'msgs/s':>12}{'MB/s':>10}")
    print(f"{'mailwarden_native':<22}{nat[0]:>12.0f}{nat[1]:>10.1f}")
    print(f"{'email (compat32)':<22}{ref[0]:>12.0f}{ref[1]:>10.1f}")
    print(f"ratio native/email: {nat[0] / ref[0]:.1f}x")


if __name__ == "__main__":
    main()
