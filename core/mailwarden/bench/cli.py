"""``mailwarden bench``: throughput per stage and per worker count, peers side by side."""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import msgspec

from ..stage import Stage
from .compare import compare_rounds, stage_report
from .corpus import generate, load_directory
from .peers import run_peers
from .report import compare, table, write_all
from .run import (
    OFFLINE_ANTISPAM,
    Progress,
    ReputationService,
    python_email_parse,
    reputation_service,
    run_pipeline,
    run_scan_workers,
    run_smtp,
    warm_home,
)

__all__ = ["bench"]


def _signature_file(directory: Path, count: int, seed: int) -> Path:
    """``count`` literal body signatures of 8-64 bytes (ClamAV .ndb), seeded."""
    # Not the corpus's own seed: the same stream would make every attachment a "virus".
    rng = random.Random(f"signatures-{seed}")
    path = directory / f"bench-{count}.ndb"
    with path.open("w") as out:
        for n in range(count):
            pattern = rng.randbytes(rng.randint(8, 64))
            out.write(f"Bench.Sig-{n}:0:*:{pattern.hex()}\n")
    return path


def _config(signatures: Path | None, reputation: str, spam_rules: tuple[Path, ...] = ()) -> str:
    lines = ["[events]", "enabled = true"]
    if signatures is not None:
        lines += ["[antivirus]", f'signatures = ["{signatures}"]']
    antispam = OFFLINE_ANTISPAM
    if spam_rules:
        antispam += f"rule_files = {json.dumps([str(p) for p in spam_rules])}\n"
    return "\n".join(lines) + "\n" + antispam + reputation


@contextmanager
def _bench_config(
    signatures: int, seed: int, spam_rules: tuple[Path, ...]
) -> Iterator[tuple[str, ReputationService]]:
    """The config every run uses, with its signature file and reputation service alive."""
    with (
        tempfile.TemporaryDirectory(prefix="mailwarden-bench-sigs-") as tmp,
        reputation_service() as reputation,
    ):
        sig_path = _signature_file(Path(tmp), signatures, seed) if signatures else None
        yield _config(sig_path, reputation.section, spam_rules), reputation


@click.command("bench")
@click.option("--quick", is_flag=True, help="A small run (under a minute): 150 messages, 1 worker.")
@click.option("--messages", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the corpus.")
@click.option(
    "--corpus",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Your own directory of .eml files instead of the generated corpus.",
)
@click.option(
    "--signatures",
    type=click.IntRange(0),
    default=10_000,
    show_default=True,
    help="Size of the antivirus signature set (literal .ndb signatures).",
)
@click.option(
    "--workers",
    "workers_list",
    type=click.IntRange(1),
    multiple=True,
    help="SMTP ingress worker counts to run (repeatable; default: 1 and the core count).",
)
@click.option(
    "--clients", type=click.IntRange(0), default=0, help="SMTP sessions (default 2 per worker + 2)."
)
@click.option(
    "--spam-rules",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="Rule files or directories antispam loads beside its own (e.g. /usr/share/spamassassin).",
)
@click.option("--no-smtp", is_flag=True, help="Skip the SMTP ingress runs.")
@click.option("--no-peers", is_flag=True, help="Skip rspamd and SpamAssassin even if installed.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Where bench.json, bench.md and bench.svg go.",
)
@click.option(
    "--compare",
    "compare_with",
    type=click.Path(exists=True, path_type=Path),
    help="An earlier bench.json: the change of every rate; or a built checkout of another "
    "version: both builds stage by stage in instructions (else CPU time) over --rounds, "
    "failing when a stage costs more.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="With --compare DIR: passes of both builds side by side; each stage's verdict is on "
    "the median of its per-round ratio.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="With --compare DIR: the extra work in percent a stage may show before it fails.",
)
def bench(
    quick: bool,
    messages: int,
    seed: int,
    corpus: Path | None,
    signatures: int,
    workers_list: tuple[int, ...],
    clients: int,
    spam_rules: tuple[Path, ...],
    no_smtp: bool,
    no_peers: bool,
    out: Path,
    compare_with: Path | None,
    rounds: int,
    tolerance: float,
) -> None:
    """Measure the gateway on this machine: each stage, each worker count, beside its peers.

    Every rate is shown with a baseline from the same run (Python's email for parsing, rspamd
    and SpamAssassin end to end when installed): the ratios are what carries between machines.
    """
    if quick:
        messages, signatures = min(messages, 150), min(signatures, 1000)
        workers_list = workers_list or (1,)
    workers = sorted(set(workers_list or (1, max(1, os.cpu_count() or 1))))
    if corpus is not None:
        data = load_directory(corpus, messages)
        source = str(corpus)
    else:
        data = generate(messages, seed, attachment_scale=0.25 if quick else 1.0)
        source = f"generated, seed {seed}"
    size = sum(map(len, data))
    if compare_with is not None and compare_with.is_dir():
        _compare_builds(compare_with, data, signatures, seed, spam_rules, rounds, tolerance)
        return
    with _bench_config(signatures, seed, spam_rules) as (config, reputation):
        baseline = python_email_parse(data, Progress("python email parse", len(data)))
        # Every run starts from a home that has seen the corpus once: reputation answers from
        # its cache, as in steady state, and the service is not what gets measured.
        progress = Progress("warm reputation cache", 1)
        seed_home = warm_home(data, config)
        warm_lookups = reputation.lookups()
        progress.step()
        try:
            pipeline = run_pipeline(
                data, config, Progress("pipeline in-process", 3 * len(data)), seed=seed_home
            )
            scan_workers = []
            for count in workers:
                progress = Progress(f"scan, {count} worker(s)", 1)
                scan_workers.append(run_scan_workers(data, config, count, seed=seed_home))
                progress.step()
            smtp = []
            if not no_smtp:
                for count in workers:
                    sessions = clients or 2 * count + 2
                    progress = Progress(f"smtp, {count} worker(s)", len(data))
                    smtp.append(run_smtp(data, config, count, sessions, progress, seed=seed_home))
        finally:
            shutil.rmtree(seed_home, ignore_errors=True)
        # Lookups that reached the service while the clock ran (0 when the cache held).
        reputation_lookups = {
            "warm-up": warm_lookups,
            "measured": reputation.lookups() - warm_lookups,
        }
    parse = next(s for s in pipeline["stages"] if s.stage == Stage.PARSE)
    peers: list[dict[str, Any]] = [
        {
            "name": "python email (parse only)",
            "msgs_per_s": baseline.msgs_per_s,
            "ratio": f"{parse.msgs_per_s / baseline.msgs_per_s:.2f}x (parse stage)"
            if baseline.msgs_per_s
            else "-",
        }
    ]
    if not no_peers:
        scan_rates = {run["workers"]: float(run["msgs_per_s"]) for run in scan_workers}
        smtp_rates = {run["workers"]: float(run["msgs_per_s"]) for run in smtp}
        most = max(workers)
        for peer in run_peers(data, most):
            theirs = float(peer["msgs_per_s"])
            if theirs:
                # Two honest comparisons with as many workers: our scan (what checkv2 and
                # CHECK do), and our whole SMTP ingress (fsync, delivery, records included).
                peer["ratio"] = f"{scan_rates[most] / theirs:.2f}x scan"
                if most in smtp_rates:
                    peer["ratio"] += f", {smtp_rates[most] / theirs:.2f}x smtp ingress"
            else:
                peer["ratio"] = "-"
            peers.append(peer)
    result: dict[str, Any] = {
        "command": "mailwarden " + shlex.join(sys.argv[1:]),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "corpus": {"messages": len(data), "megabytes": round(size / 1e6, 2), "source": source},
        "signatures": signatures,
        "reputation_lookups": reputation_lookups,
        "pipeline": msgspec.to_builtins(pipeline),
        "peers": peers,
        "scan_workers": scan_workers,
        "smtp": smtp,
    }
    click.echo(table(result))
    paths = write_all(result, out)
    click.echo("")
    for kind, path in paths.items():
        click.echo(f"{kind:<9}{path}")
    if compare_with is not None:
        click.echo("")
        click.echo(compare(json.loads(compare_with.read_text()), result))
        click.echo("(one run each; --compare DIR runs both builds over alternating rounds)")


def _compare_builds(
    other: Path,
    data: list[bytes],
    signatures: int,
    seed: int,
    spam_rules: tuple[Path, ...],
    rounds: int,
    tolerance: float,
) -> None:
    """Both builds stage by stage (``--compare DIR``); exit status 1 when a stage is slower."""
    with _bench_config(signatures, seed, spam_rules) as (config, _):
        progress = Progress(f"{rounds} rounds, {other} and this build", rounds)
        before, after = compare_rounds(other, data, config, rounds, progress.step)
    text, slower = stage_report(before, after, tolerance)
    click.echo(f"baseline: {other}")
    click.echo(text)
    if slower:
        sys.exit(1)
