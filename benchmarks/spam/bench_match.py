"""``RuleSet.match`` taken apart: the CPU per message of each of its steps, in one process.

Usage: .venv/bin/python benchmarks/spam/bench_match.py [--sa-rules DIR] [--no-sa-rules]
[--messages N] [--passes N] (any build's interpreter: it imports only installed packages and
times the steps through the private names both builds have).

The messages are those ``mailwarden bench`` generates (seed 1); their rule targets are built
once (``_targets_of``), then every pass runs each step over all of them and the step's
process CPU is divided by the count; the best pass of each step is printed (the least
disturbed by the shared machine's load). Steps: ``body``/``rawbody``/``full``/``uri`` (the
hyperscan database of that target and ``re`` confirming its reports), ``headers`` (the framed
header scan), ``re-left`` (the rules hyperscan refused, ``exists:`` and the slow header
rules), ``checks`` (the eval rules), ``metas`` (resolving the metas from the hits), and
``match`` (the whole call, as the hook makes it).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

from mailwarden.bench.corpus import generate
from mailwarden_antispam import AntispamConfig, AntispamPlugin, fastmatch
from mailwarden_antispam import rules as rules_module
from mailwarden_antispam.content import message_urls
from mailwarden_sdk import parse


def _steps(ruleset: Any) -> dict[str, Callable[[Any], Any]]:
    matching = ruleset._matching
    confirmed = rules_module._confirmed
    steps: dict[str, Callable[[Any], Any]] = {}
    for kind in ("body", "rawbody", "full"):
        if kind in matching.fast:
            patterns, rules = matching.fast[kind]

            def scan(t: Any, p: Any = patterns, r: Any = rules, k: str = kind) -> Any:
                return confirmed(p, r, getattr(t, k))

            steps[kind] = scan
    if "uri" in matching.fast:
        patterns, rules = matching.fast["uri"]
        steps["uri"] = lambda t: [confirmed(patterns, rules, u) for u in t.uris]
    if matching.headers is not None:
        steps["headers"] = lambda t: matching.headers.match(t, set())

    # The re path's search as the build runs it (line-anchored rules at line starts only).
    found_in = getattr(fastmatch, "found_in", lambda p, text: p.search(text) is not None)

    def left(t: Any) -> None:
        hits: set[str] = set()
        for kind in ("body", "rawbody", "full"):
            text = getattr(t, kind)
            for rule in ruleset._candidates(matching, kind, text):
                if rule.pattern is not None and found_in(rule.pattern, text):
                    hits.add(rule.name)
        if t.uris:
            for rule in ruleset._candidates(matching, "uri", "\n".join(t.uris)):
                if rule.pattern is not None and any(rule.pattern.search(u) for u in t.uris):
                    hits.add(rule.name)
        exists = matching.exists
        if isinstance(exists, dict):
            for key in exists.keys() & t.headers.keys():
                if t.headers[key]:
                    hits.update(exists[key])
        else:  # builds before the exists: rules were grouped by header name
            hits.update(name for key, name in exists if t.headers.get(key))
        for rule in matching.slow_headers:
            if rules_module._header_hit(rule, t):
                hits.add(rule.name)

    steps["re-left"] = left

    def checks(t: Any) -> None:
        for _name, check in ruleset._checks:
            try:
                check(t.facts)
            except (TypeError, ValueError):
                pass

    steps["checks"] = checks
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sa-rules", default="/usr/share/spamassassin")
    parser.add_argument("--no-sa-rules", action="store_true", help="the shipped rules only")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # stock rules' "[[" classes
    files = [] if args.no_sa_rules else [args.sa_rules]
    config = AntispamConfig(
        authentication=False, dns_servers=["127.0.0.1"], bayes=False, rule_files=files
    )
    plugin = AntispamPlugin()
    plugin.configure(config)
    getattr(plugin.rules, "wait_ready", lambda: True)()
    ruleset = plugin.rules
    targets = []
    for raw in generate(args.messages, 1):
        message = parse(raw)
        targets.append(plugin._targets_of(message, "alice@example.org", message_urls(message)))
    hits_of = []
    for t in targets:
        hits = ruleset.regex_hits(t)
        for name, check in ruleset._checks:
            try:
                if check(t.facts):
                    hits.add(name)
            except (TypeError, ValueError):
                pass
        hits_of.append(hits)
    steps = _steps(ruleset)
    steps["metas"] = lambda h: ruleset._resolve_metas(set(h))
    steps["match"] = lambda t: ruleset.match(t, ())
    best: dict[str, float] = {}
    for _ in range(args.passes):
        for name, step in steps.items():
            inputs = hits_of if name == "metas" else targets
            for t in targets:
                t.values.clear()
                t.parsed.clear()
            began = time.process_time_ns()
            for item in inputs:
                step(item)
            spent = (time.process_time_ns() - began) / len(inputs) / 1e3
            best[name] = min(best.get(name, spent), spent)
    parts = sum(v for k, v in best.items() if k != "match")
    row = "  ".join(f"{k} {v:.1f}" for k, v in best.items())
    print(f"{len(targets)} messages, us/msg (best of {args.passes}): {row}  (steps {parts:.1f})")


if __name__ == "__main__":
    main()
