"""The antispam stage as ``mailwarden bench`` runs it, and where its CPU goes, part by part.

Usage: .venv/bin/python benchmarks/spam/bench_stage.py [--messages N] [--rounds R]
[--spam-rules DIR] [--corpus DIR] [--train N] [--profile] [--findings FILE] (any build's
interpreter: it imports only installed packages, so the same file times another checkout with
its ``.venv/bin/python``).

The messages are those ``mailwarden bench`` generates (seed 1), the configuration its offline
antispam (rules, heuristics, fuzzy hashes and Bayes; no DNS, no authentication). A gateway
scans the corpus once first, so Bayes has autolearned from it as in the bench's warm-up; then

  stage   ``Gateway.scan`` of every message: the ``detector.antispam`` timing the bench
          prints (wall, p50/p95) and the process CPU per message of the whole scan;
  parts   ``Gateway.scan`` again with the plugin instrumented: the loop thread's CPU per
          message in the antispam scan hook, and in each part (the plugin's helpers, wrapped
          by name where this build has them; ``other`` is what no part holds: findings,
          plumbing), and autolearn's in the verdict hook (the decide stage);
  urls    the CPU per message of ``ParsedMessage.urls()`` read again after every part's
          ``urls()`` was (the reputation plugin after antispam).

Each part is timed where it runs (``time.thread_time``), so the figures hold on a shared
machine; compare builds by ratios in one run, rounds interleaved. ``--profile`` prints the
functions with the most own time (cProfile) in the scan hook over the parts pass too.

``--findings FILE`` instead writes what the plugin finds in every message of the shared
corpus's ``spam-public`` and the generated ones, one JSON line each (findings with scores and
details, the fuzzy sketch, a digest of the Bayes tokens), twice: with fresh stores, then with
Bayes taught every fourth labelled message (its spam reported to the fuzzy store, so
``BAYES_*`` and ``FUZZY_SPAM`` fire). Two builds that detect alike write identical files.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import csv
import functools
import hashlib
import json
import os
import pstats
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mailwarden_antispam
from mailwarden.bench.corpus import generate, load_directory
from mailwarden.bench.run import OFFLINE_ANTISPAM
from mailwarden.config import load_config
from mailwarden.pipeline import Gateway
from mailwarden.plugins import build_plugin_manager
from mailwarden_antispam import bayes, fuzzy, heuristics
from mailwarden_sdk import Envelope, ScanContext, parse
from mailwarden_sdk.offload import scanning

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
STAGE = "detector.antispam"


class Parts:
    """Per-part CPU of the loop thread, per message; nested parts count in the outer only."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.depth = 0
        self.per_message: list[dict[str, float]] = []

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            began = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.current[name] = self.current.get(name, 0.0) + time.thread_time() - began

        return timed


def _instrument(plugin: Any, parts: Parts) -> None:
    """Wrap the plugin's helpers (those this build has) so their CPU is counted."""
    module = mailwarden_antispam
    for name in ("message_urls", "body_text", "links", "sketch", "tokens"):
        if hasattr(module, name):
            setattr(module, name, parts.wrap(name, getattr(module, name)))
    for name in ("link_checks", "header_checks", "hidden_text", "bulk_markers"):
        setattr(heuristics, name, parts.wrap(f"heuristics.{name}", getattr(heuristics, name)))
    for obj, names in (
        (plugin, ("_targets", "_targets_of")),
        (plugin.bayes, ("probability", "counts", "_lookup")),
        (plugin.fuzzy, ("_local",)),
    ):
        for name in names:
            if obj is not None and hasattr(obj, name):
                label = f"{type(obj).__name__}.{name}".replace("AntispamPlugin.", "")
                setattr(obj, name, parts.wrap(label, getattr(obj, name)))
    rules = plugin.rules
    rules.match = parts.wrap("rules.match", rules.match)
    # Autolearn runs in the verdict hook (the decide stage), outside the scan's total.
    plugin._autolearn = parts.wrap("verdict._autolearn", plugin._autolearn)


def _time_scan_hook(plugins: Any, totals: list[float], profiler: cProfile.Profile | None) -> None:
    """Count the loop thread's CPU in the antispam scan hook (its first step runs inline),
    and profile it when ``profiler`` is given."""
    for impl in plugins.pm.hook.mailwarden_scan.get_hookimpls():
        if impl.plugin_name != "antispam":
            continue
        scan = impl.function

        async def timed(ctx: ScanContext, _scan: Any = scan) -> Any:
            began = time.thread_time()
            if profiler is not None:
                profiler.enable()
            try:
                return await _scan(ctx)
            finally:
                if profiler is not None:
                    profiler.disable()
                totals.append(time.thread_time() - began)

        impl.function = timed


def _home(rule_files: list[str]) -> Path:
    home = Path(tempfile.mkdtemp(prefix="mailwarden-bench-stage-"))
    text = "[events]\nenabled = false\n" + OFFLINE_ANTISPAM
    if rule_files:
        text += "rule_files = [" + ", ".join(f'"{p}"' for p in rule_files) + "]\n"
    (home / "mailwarden.toml").write_text(text)
    return home


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def _run(args: argparse.Namespace, messages: list[bytes]) -> None:
    home = _home(args.spam_rules)
    try:
        plugins = build_plugin_manager()
        config = load_config(home / "mailwarden.toml", plugins.config_schemas())
        async with Gateway(config, plugins=plugins) as gateway:
            plugin = plugins.plugins["antispam"].obj
            getattr(plugin.rules, "wait_ready", lambda: True)()
            if args.train and plugin.bayes is not None:
                for raw, label, _path in _labelled(args.train):
                    await asyncio.to_thread(plugin.bayes.learn, raw, label, "bench")
            for raw in messages:  # the bench's warm-up: Bayes autolearns the corpus
                await gateway.scan(raw, ENVELOPE)
            if plugin.bayes is not None:
                plugin.bayes.flush()
                print(f"bayes learned (spam, ham): {plugin.bayes.counts()}")
            for round_ in range(args.rounds):
                await _stage(gateway, messages, round_)
            parts = Parts()
            _instrument(plugin, parts)
            totals: list[float] = []
            profiler = cProfile.Profile() if args.profile else None
            _time_scan_hook(plugins, totals, profiler)
            for round_ in range(args.rounds):
                parts.per_message.clear()
                totals.clear()
                for raw in messages:
                    parts.current = {}
                    await gateway.scan(raw, ENVELOPE)
                    parts.per_message.append(parts.current)
                _report_parts(round_, totals, parts.per_message)
            if profiler is not None:
                pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
            _report_second_reader(messages)
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def _stage(gateway: Gateway, messages: list[bytes], round_: int) -> None:
    walls: list[float] = []
    cpu = time.process_time()
    for raw in messages:
        decision = await gateway.scan(raw, ENVELOPE)
        walls.append(decision.timings_ms[STAGE] / 1000)
    cpu = (time.process_time() - cpu) / len(messages)
    print(
        f"round {round_} stage  {STAGE} p50 {_ms(walls, 0.5):.3f} ms  p95 {_ms(walls, 0.95):.3f}"
        f" ms  mean {statistics.mean(walls) * 1000:.3f} ms; whole scan cpu/msg {cpu * 1000:.3f} ms"
    )


def _report_second_reader(messages: list[bytes]) -> None:
    # The reputation plugin reads the message's URLs after antispam read its parts' (not in
    # this stage's figures): what the same URLs cost that second reader.
    parsed = [parse(raw) for raw in messages]
    for message in parsed:
        for part in message.leaves():
            part.urls()
    began = time.thread_time()
    for message in parsed:
        message.urls()
    cpu = (time.thread_time() - began) / len(parsed) * 1000
    print(f"urls, second reader (reputation after antispam) cpu ms/msg {cpu:.4f}")


def _report_parts(round_: int, totals: list[float], per_message: list[dict[str, float]]) -> None:
    names = sorted({n for m in per_message for n in m})
    mean_total = statistics.mean(totals)
    row = [f"scan hook mean {mean_total * 1000:.3f} p50 {_ms(totals, 0.5):.3f}"]
    accounted = 0.0
    for name in names:
        mean = statistics.mean(m.get(name, 0.0) for m in per_message)
        accounted += 0.0 if name.startswith("verdict.") else mean
        row.append(f"{name} {mean * 1000:.3f}")
    # Negative when parts ran in worker threads (run_cpu_bound offloads big messages' work).
    row.append(f"other (in scan) {(mean_total - accounted) * 1000:.3f}")
    print(f"round {round_} parts cpu ms/msg (means): " + "; ".join(row))


def _labelled(count: int | None = None) -> list[tuple[bytes, str, str]]:
    """spam-public's messages with their labels: all, or ``count`` spread over the corpus."""
    corpus = Path(os.environ.get("MAILWARDEN_CORPUS", "../shared/corpus")) / "spam-public"
    with (corpus / "LABELS.csv").open() as labels:
        rows = list(csv.DictReader(labels))
    if count is not None:
        rows = rows[:: max(1, len(rows) // count)][:count]
    return [((corpus / r["path"]).read_bytes(), r["label"], r["path"]) for r in rows]


def _findings(out: Path, generated: list[bytes], rule_files: list[str]) -> None:
    messages = _labelled()
    messages += [(raw, "", f"generated-{i}") for i, raw in enumerate(generated)]
    with out.open("w") as sink:
        for trained in (False, True):
            asyncio.run(_dump(sink, messages, trained, rule_files))


async def _dump(
    sink: Any, messages: list[tuple[bytes, str, str]], trained: bool, rule_files: list[str]
) -> None:
    # --spam-rules loads beside the shipped rules, as in the timed passes.
    extra = {"rule_files": rule_files} if rule_files else {}
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-stage-") as tmp:
        plugin = mailwarden_antispam.AntispamPlugin()
        plugin.configure(
            mailwarden_antispam.AntispamConfig(
                authentication=False, dns_servers=["127.0.0.1"], **extra
            ),
            Path(tmp),
        )
        getattr(plugin.rules, "wait_ready", lambda: True)()
        assert plugin.bayes is not None and plugin.fuzzy is not None
        plugin.bayes.reported = plugin.fuzzy.report
        try:
            for i, (raw, label, _path) in enumerate(messages):
                if trained and label and i % 4 == 0:
                    plugin.bayes.learn(raw, label, "bench")
            for raw, _label, path in messages:
                ctx = ScanContext(ENVELOPE, parse(raw))
                with scanning(ctx.message):
                    found = await plugin.mailwarden_scan(ctx)
                fresh = parse(raw)
                toks = "\n".join(sorted(bayes.tokens(fresh))).encode()
                record = {
                    "path": path,
                    "trained": trained,
                    "findings": sorted((f.code, f.score, sorted(f.details.items())) for f in found),
                    "sketch": fuzzy.sketch(fresh),
                    "tokens": hashlib.sha256(toks).hexdigest(),
                }
                sink.write(json.dumps(record) + "\n")
        finally:
            plugin.bayes.close()
            plugin.fuzzy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spam-rules", action="append", default=[])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--findings", type=Path, help="write the findings (see above) here")
    parser.add_argument(
        "--train",
        type=int,
        default=0,
        help="teach Bayes this many spam-public messages first (every n-th, labelled), so the "
        "scan computes a probability as a deployed gateway's does",
    )
    parser.add_argument(
        "--corpus", type=Path, help="a directory of .eml files instead (cycled to --messages)"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # stock rules' "[[" classes
    messages = generate(args.messages, 1)
    if args.corpus is not None:
        found = load_directory(args.corpus)
        messages = [found[i % len(found)] for i in range(args.messages)]
    if args.findings is not None:
        _findings(args.findings, messages, args.spam_rules)
        return
    asyncio.run(_run(args, messages))


if __name__ == "__main__":
    main()
