"""Search 1,000,000 message events by sender and time range: the LMDB index vs a linear scan.

Generates the events (1,000 senders, 3 days, 2 recipients each, realistic subjects and
verdicts), loads them into a :class:`mailwarden.events.MessageEventLog`, and times searches
for one sender within a one-day range (every match, and the CLI's default of the newest 50).
The baseline is the previous design: JSON lines per day, every record of the days in range
decoded and matched (``--baseline-events`` of them, scaled to the full count when smaller).

    .venv/bin/python benchmarks/stores/bench_events.py            # --events 1000000
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from mailwarden.events import EventQuery, MessageEventLog
from mailwarden_sdk import ActionKind, AntivirusStatus, MessageEvent, SpamStatus, Verdict

DAY = 86400.0
WORDS = "invoice meeting report order delivery payment account update offer urgent".split()


def make_events(count: int, senders: int, start: float, seed: int = 7) -> list[MessageEvent]:
    rng = random.Random(seed)
    span = 3 * DAY
    events = []
    for n in range(count):
        infected = rng.random() < 0.01
        events.append(
            MessageEvent(
                id=f"{n:032x}",
                time=start + span * n / count,
                ingress="smtp",
                mail_from=f"sender{rng.randrange(senders)}@example{rng.randrange(50)}.org",
                rcpt_to=[f"user{rng.randrange(5000)}@corp.example", "team@corp.example"],
                client_address=f"192.0.{rng.randrange(256)}.{rng.randrange(256)}",
                helo="mail.example.org",
                queue_id=None,
                message_id=f"<{n}.{rng.randrange(1 << 30)}@example.org>",
                subject=" ".join(rng.choice(WORDS) for _ in range(4)),
                size=rng.randrange(2_000, 200_000),
                attachments=["report.pdf"] if rng.random() < 0.2 else [],
                rule="default",
                verdict=Verdict(
                    antivirus=AntivirusStatus.INFECTED if infected else AntivirusStatus.CLEAN,
                    spam=SpamStatus.SPAM if rng.random() < 0.1 else SpamStatus.CLEAN,
                ),
                action=ActionKind.REJECT if infected else ActionKind.DELIVER,
                reply="250 2.0.0 Ok",
                timings_ms={"parse": 0.2, "detect": 1.5, "detector.antivirus": 1.1},
            )
        )
    return events


def load(log: MessageEventLog, events: list[MessageEvent], batch: int = 5000) -> float:
    began = time.perf_counter()
    for at in range(0, len(events), batch):
        log.store.append_many(events[at : at + batch])
    log.store.env.sync()
    return time.perf_counter() - began


def baseline_scan(folder: Path, events: list[MessageEvent], query: EventQuery) -> float:
    """The previous design: one JSON-lines file per day, decode and match every line."""
    folder.mkdir()
    encode = msgspec.json.Encoder().encode
    files: dict[str, list[bytes]] = {}
    for event in events:
        files.setdefault(time.strftime("%Y%m%d", time.gmtime(event.time)), []).append(
            encode(event) + b"\n"
        )
    for day, lines in files.items():
        (folder / f"{day}.jsonl").write_bytes(b"".join(lines))
    decode = msgspec.json.Decoder(MessageEvent).decode
    first = time.strftime("%Y%m%d", time.gmtime(query.since or 0))
    last = time.strftime("%Y%m%d", time.gmtime(query.until or 0))
    began = time.perf_counter()
    found = []
    for path in sorted(folder.glob("*.jsonl")):
        if first <= path.stem <= last:
            with path.open("rb") as handle:
                found += [e for e in map(decode, handle) if query.matches(e)]
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--senders", type=int, default=1000)
    parser.add_argument("--searches", type=int, default=20)
    parser.add_argument("--baseline-events", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default: tmp)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-events-", dir=args.dir))
    try:
        start = time.time() - 3 * DAY
        print(f"generating {args.events:,} events ...", flush=True)
        events = make_events(args.events, args.senders, start)
        log = MessageEventLog(work / "events", retention_days=None, max_bytes=None, sync=False)
        seconds = load(log, events)
        usage = log.usage()
        print(
            f"loaded in {seconds:.1f} s ({args.events / seconds:,.0f} events/s), "
            f"{usage.count:,} records, {log.store.env.disk_bytes() / 2**20:,.0f} MiB on disk",
            flush=True,
        )
        since, until = start + DAY, start + 2 * DAY
        rng = random.Random(1)
        full, newest, matches = [], [], []
        for _ in range(args.searches):
            sender = f"sender{rng.randrange(args.senders)}@example{rng.randrange(50)}.org"
            domain_sender = sender.split("@")[0]
            query = EventQuery(sender=domain_sender, since=since, until=until, limit=None)
            began = time.perf_counter()
            found = log.search(query)
            full.append(time.perf_counter() - began)
            matches.append(len(found))
            began = time.perf_counter()
            log.search(EventQuery(sender=domain_sender, since=since, until=until, limit=50))
            newest.append(time.perf_counter() - began)
        print(
            f"search sender + 1-day range, every match: median {statistics.median(full) * 1000:.1f}"
            f" ms, max {max(full) * 1000:.1f} ms ({statistics.mean(matches):.0f} matches on "
            f"average of {args.searches} senders)"
        )
        print(
            f"search sender + 1-day range, newest 50:   median "
            f"{statistics.median(newest) * 1000:.2f} ms, max {max(newest) * 1000:.2f} ms"
        )
        sample = events[:: max(1, args.events // args.baseline_events)]
        query = EventQuery(sender="sender1", since=since, until=until, limit=None)
        scanned = baseline_scan(work / "jsonl", sample, query)
        scaled = scanned * len(events) / len(sample)
        print(
            f"baseline linear scan (JSON lines per day) over {len(sample):,} events: "
            f"{scanned:.2f} s, {scaled:.1f} s scaled to {len(events):,}"
        )
        ratio = scaled / statistics.median(full)
        print(f"index / scan: {ratio:,.0f}x faster (median, every match)")
        return 0 if max(full) < 1.0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
