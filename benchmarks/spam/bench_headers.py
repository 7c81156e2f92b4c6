"""The header rules alone, per message: CPU time of matching every header rule.

Usage: .venv/bin/python benchmarks/spam/bench_headers.py [--sa-rules DIR] [--messages N]
[--rounds N] (any build's interpreter: it imports only the installed packages, and reads
the header rules through one framed hyperscan scan on builds that have it, through one scan
per header name on older ones).

The messages are those ``mailwarden bench`` generates (seed 1), the rules the shipped ones
plus SpamAssassin's stock rules, the plugin set up as in ``bench_rules.py``. What is timed
per message, as CPU time of the process: reading the header values the rules name, the
hyperscan scan(s), ``re`` confirming what hyperscan reported, and the header rules left to
``re``. Printed: the per-message p50 of each round, and their median.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

from mailwarden.bench.corpus import generate
from mailwarden_antispam import AntispamConfig, AntispamPlugin
from mailwarden_antispam import rules as rules_module
from mailwarden_antispam.content import message_urls
from mailwarden_sdk import parse


def header_matcher(matching: Any) -> Callable[[Any, set[str]], None]:
    """The header side of ``RuleSet._match_fast`` of the running build."""
    hit = rules_module._header_hit

    def slow(targets: Any, hits: set[str]) -> None:
        for rule in matching.slow_headers:
            if hit(rule, targets):
                hits.add(rule.name)

    if getattr(matching, "headers", None) is not None:

        def framed(targets: Any, hits: set[str]) -> None:
            matching.headers.match(targets, hits)
            slow(targets, hits)

        return framed
    values_of = rules_module._header_values

    def per_name(targets: Any, hits: set[str]) -> None:  # builds before the framed scan
        for group in matching.fast_headers.values():
            values = values_of(group.rules[0], targets)
            if values is None:
                hits.update(r.name for r in group.if_absent if hit(r, targets))
                continue
            found = group.patterns.confirmed("\n".join(values))
            hits.update(group.rules[i].name for i in found if not group.rules[i].negate)
            hits.update(r.name for i, r in group.negated if i not in found)
        slow(targets, hits)

    return per_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sa-rules", default="/usr/share/spamassassin")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # stock rules' "[[" classes
    config = AntispamConfig(
        authentication=False, dns_servers=["127.0.0.1"], bayes=False, rule_files=[args.sa_rules]
    )
    plugin = AntispamPlugin()
    plugin.configure(config)
    getattr(plugin.rules, "wait_ready", lambda: True)()
    match = header_matcher(plugin.rules._matching)
    targets = []
    for raw in generate(args.messages, 1):
        message = parse(raw)
        targets.append(plugin._targets_of(message, "alice@example.org", message_urls(message)))
    medians = []
    for _ in range(args.rounds):
        times = []
        for target in targets:
            target.values.clear()  # read anew, as for a new message
            target.parsed.clear()
            start = time.process_time_ns()
            match(target, set())
            times.append((time.process_time_ns() - start) / 1e6)
        times.sort()
        medians.append(times[len(times) // 2])
    rounds = " ".join(f"{m:.3f}" for m in medians)
    print(f"header rules, {len(targets)} messages: cpu p50 per round {rounds} ms")
    print(f"median {statistics.median(medians):.3f} ms")


if __name__ == "__main__":
    main()
