"""The antivirus stage alone on `mailwarden bench`'s corpus, this checkout against another.

Usage: python benchmarks/av/bench_stage.py [--messages N] [--rounds R] [--baseline PYTHON]
       python benchmarks/av/bench_stage.py --before COMMIT [--messages N] [--rounds R]

`mailwarden bench --compare` times the antivirus stage while the other detectors run beside
it (antispam on the event loop, the antivirus in a thread when a message carries archives), so
a change to antispam moves the antivirus figure too. Here a gateway with only the antivirus
plugin processes the same generated messages (seed 1) with the same 10,000 literal signatures
as `mailwarden bench`, and the stage's own timing (``decision.timings_ms``) is summed. One
pass warms the imports and caches; the next is measured.

With ``--baseline`` (the Python of another checkout's venv, e.g. one made at the commit before
a change), the script runs itself under both Pythons in turn, R rounds each, interleaved so
that both see the same load, and prints each round and the median ratio.

With ``--before`` (a commit), the plugin as of that commit is loaded beside this one in the
same process (its package renamed; the core and SDK are this checkout's), the scan contexts of
one gateway pass through each are kept, and each plugin's ``_scan`` is then called on every
message R times in alternation, timed in CPU time of the calling thread; the minimum per
message is kept and summed. CPU time does not count
the time other processes take the core from it, and the minimum drops the rest of the noise,
so this resolves a few percent on a loaded machine where the wall-clock rates move by 20%.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def measure(count: int) -> dict[str, float]:
    from mailwarden.bench.cli import _signature_file
    from mailwarden.bench.corpus import generate
    from mailwarden.config import parse_config
    from mailwarden.pipeline import Gateway
    from mailwarden.plugins import build_plugin_manager
    from mailwarden.testing import GatewayRunner
    from mailwarden_antivirus import AntivirusPlugin
    from mailwarden_sdk import Envelope

    messages = generate(count, seed=1)
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
    with tempfile.TemporaryDirectory() as tmp:
        signatures = _signature_file(Path(tmp), 10_000, 1)
        config = f'[antivirus]\nsignatures = ["{signatures}"]\n'
        plugins = build_plugin_manager(entry_points=False, extra={"antivirus": AntivirusPlugin})
        cfg = parse_config(config, plugins.config_schemas())
        cfg.gateway.home = str(Path(tmp) / "home")
        runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
        try:
            for raw in messages:  # warm: imports, the compiled signature set, caches
                runner.process(raw, envelope)
            times = [
                runner.process(raw, envelope).decision.timings_ms["detector.antivirus"]
                for raw in messages
            ]
        finally:
            runner.stop()
    seconds = sum(times) / 1000
    ordered = sorted(times)
    return {
        "messages": len(messages),
        "msgs_per_s": len(messages) / seconds,
        "mb_per_s": sum(map(len, messages)) / 1e6 / seconds,
        "p50_ms": statistics.median(times),
        "p95_ms": ordered[int(len(ordered) * 0.95)],
    }


def plugin_before(commit: str, where: Path) -> type:
    """The antivirus plugin class as of ``commit``, imported as ``mailwarden_antivirus_before``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "plugins/mailwarden_antivirus"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    (where / "plugins" / "mailwarden_antivirus").rename(where / "mailwarden_antivirus_before")
    sys.path.insert(0, str(where))
    return importlib.import_module("mailwarden_antivirus_before").AntivirusPlugin  # type: ignore[no-any-return]


def cpu_compare(commit: str, count: int, rounds: int) -> None:
    from mailwarden.bench.cli import _signature_file
    from mailwarden.bench.corpus import generate
    from mailwarden.config import parse_config
    from mailwarden.pipeline import Gateway
    from mailwarden.plugins import build_plugin_manager
    from mailwarden.testing import GatewayRunner
    from mailwarden_antivirus import AntivirusPlugin
    from mailwarden_sdk import Envelope

    messages = generate(count, seed=1)
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
    with tempfile.TemporaryDirectory() as tmp:
        classes = {"before": plugin_before(commit, Path(tmp)), "this": AntivirusPlugin}
        signatures = _signature_file(Path(tmp), 10_000, 1)
        config = f'[antivirus]\nsignatures = ["{signatures}"]\n'
        # each plugin started by a gateway, and the scan contexts of one pass through it kept:
        # the timed calls are then the plugin's own work and nothing of the gateway's
        scans: dict[str, list[Callable[[], Any]]] = {}
        for who, cls in classes.items():
            seen: list[Callable[[], Any]] = []
            original = cls._scan

            def keep(self: Any, ctx: Any, seen: Any = seen, original: Any = original) -> Any:
                seen.append(lambda: original(self, ctx))
                return original(self, ctx)

            cls._scan = keep
            plugins = build_plugin_manager(entry_points=False, extra={"antivirus": cls})
            cfg = parse_config(config, plugins.config_schemas())
            cfg.gateway.home = str(Path(tmp) / f"home-{who}")
            runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
            try:
                for raw in messages:
                    runner.process(raw, envelope)
            finally:
                runner.stop()
            cls._scan = original
            assert len(seen) == len(messages)
            scans[who] = seen
        best = {who: [float("inf")] * len(messages) for who in scans}
        for n in range(rounds):
            for who in list(scans) if n % 2 else list(reversed(scans)):
                for i, scan in enumerate(scans[who]):
                    start = time.thread_time()
                    scan()
                    best[who][i] = min(best[who][i], time.thread_time() - start)
    total = {who: sum(times) for who, times in best.items()}
    for who in scans:
        print(
            f"{who:>6}: {total[who] * 1000:.1f} ms CPU for {len(messages)} messages "
            f"(min of {rounds} per message), p50 {statistics.median(best[who]) * 1e6:.0f} us"
        )
    print(f"this / before: {total['this'] / total['before']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="the Python of the checkout to compare with")
    parser.add_argument("--json", action="store_true", help="one measurement, as JSON")
    parser.add_argument("--before", help="the commit whose plugin to compare in CPU time")
    args = parser.parse_args()
    if args.before:
        cpu_compare(args.before, args.messages, args.rounds)
        return
    if args.json or not args.baseline:
        result = measure(args.messages)
        print(json.dumps(result) if args.json else result)
        return
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    for _ in range(args.rounds):
        for who, python in (("baseline", args.baseline), ("this", sys.executable)):
            argv = [python, __file__, "--json", "--messages", str(args.messages)]
            done = subprocess.run(argv, capture_output=True, text=True, check=True)
            runs[who].append(json.loads(done.stdout.splitlines()[-1]))
    print("| round | baseline msg/s | this msg/s | ratio | baseline p50 ms | this p50 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    ratios = []
    for n, (old, new) in enumerate(zip(runs["baseline"], runs["this"], strict=True), 1):
        ratios.append(new["msgs_per_s"] / old["msgs_per_s"])
        print(
            f"| {n} | {old['msgs_per_s']:.0f} | {new['msgs_per_s']:.0f} | {ratios[-1]:.2f}x "
            f"| {old['p50_ms']:.3f} | {new['p50_ms']:.3f} |"
        )
    print(f"median ratio {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
