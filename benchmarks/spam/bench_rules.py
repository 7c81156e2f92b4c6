"""The antispam hook alone, per message: the shipped rules, then with SpamAssassin's stock rules.

Usage: .venv/bin/python benchmarks/spam/bench_rules.py [--sa-rules DIR] [--messages N]
[--engine re] (any build's interpreter: it imports only the installed packages).

The messages are those ``mailwarden bench`` generates (seed 1). The plugin is set up as the
bench's offline antispam (no DNS, no authentication) with Bayes off, so what is timed is the
rule engine, the heuristics and the SpamAssassin evals: ``AntispamPlugin.mailwarden_scan``
on a parsed message, one at a time, after 20 warm-up messages. The hyperscan databases are
waited for (a cold cache compiles them first: minutes for the stock set on 2 cores).
``--engine re`` runs every regex on Python's ``re`` instead, for the comparison.

Wall time on a shared machine counts the time other processes hold the cores; the CPU time
of the process per message (``cpu p50``) does not, so it is the figure to compare builds by.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import warnings
from pathlib import Path

from mailwarden.bench.corpus import generate
from mailwarden_antispam import AntispamConfig, AntispamPlugin
from mailwarden_antispam.rules import load_rules
from mailwarden_sdk import Envelope, ScanContext, parse

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])


def measure(rule_files: list[str], messages: list[bytes], engine: str) -> tuple[float, ...]:
    """(p50, p95, mean, CPU p50) in ms of the hook over ``messages``, and the number of rules."""
    config = AntispamConfig(
        authentication=False, dns_servers=["127.0.0.1"], bayes=False, rule_files=rule_files
    )
    plugin = AntispamPlugin()
    plugin.configure(config)
    if engine == "re":
        plugin.rules = load_rules(
            [*(Path(p) for p in rule_files), Path(plugin._own_rules or "")], engine="re"
        )
    # (Older builds load synchronously and have no wait_ready: for comparing builds.)
    getattr(plugin.rules, "wait_ready", lambda: True)()

    async def one(raw: bytes) -> tuple[float, float]:
        ctx = ScanContext(ENVELOPE, parse(raw))
        start, cpu = time.perf_counter(), time.process_time()
        await plugin.mailwarden_scan(ctx)
        return (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000

    async def run() -> list[tuple[float, float]]:
        for raw in messages[:20]:
            await one(raw)
        return [await one(raw) for raw in messages]

    measured = asyncio.run(run())
    times = sorted(wall for wall, _cpu in measured)
    cpu_times = sorted(cpu for _wall, cpu in measured)
    return (
        times[len(times) // 2],
        times[int(len(times) * 0.95)],
        statistics.mean(times),
        cpu_times[len(cpu_times) // 2],
        float(len(plugin.rules.rules)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sa-rules", default="/usr/share/spamassassin")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--engine", choices=["hyperscan", "re"], default="hyperscan")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # stock rules' "[[" classes
    messages = generate(args.messages, 1)
    sets = [("shipped", [])]
    if Path(args.sa_rules).is_dir():
        sets.append(("shipped + stock", [args.sa_rules]))
    print(f"antispam hook, {len(messages)} generated messages, engine {args.engine}")
    for label, files in sets:
        p50, p95, mean, cpu_p50, rules = measure(files, messages, args.engine)
        print(
            f"{label:16s} {int(rules):5d} rules  p50 {p50:.3f} ms  p95 {p95:.3f} ms  "
            f"mean {mean:.3f} ms  cpu p50 {cpu_p50:.3f} ms"
        )


if __name__ == "__main__":
    main()
