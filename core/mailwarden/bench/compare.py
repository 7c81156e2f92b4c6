"""``mailwarden bench --compare DIR``: this build against another checkout, stage by stage.

One run against one run says nothing on a shared machine: two runs of the same build differ by
more than the 5% a change may cost. So each round runs the per-stage pass of both builds, each
in a fresh interpreter on the same corpus, config and signatures, the order swapped every round
so that drift of the machine falls on both; a stage's figure is its median over the rounds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import click

__all__ = ["StageChange", "checkout_paths", "compare_rounds", "medians_report", "this_checkout"]

# Run by each side with its own sources first on sys.path: the per-stage pass of
# mailwarden.bench.run (which both builds have) from a home warmed with the corpus once.
_DRIVER = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path

    import msgspec

    import mailwarden
    from mailwarden.bench.run import run_pipeline, warm_home

    corpus = [p.read_bytes() for p in sorted(Path(sys.argv[1]).glob("*.eml"))]
    config = Path(sys.argv[2]).read_text()
    seed = warm_home(corpus, config)
    try:
        result = msgspec.to_builtins(run_pipeline(corpus, config, seed=seed))
    finally:
        shutil.rmtree(seed, ignore_errors=True)
    rates = {s["stage"]: s["msgs_per_s"] for s in result["stages"]}
    rates["scan only"] = result["scan"]["msgs_per_s"]
    rates["whole pipeline"] = result["pipeline"]["msgs_per_s"]
    print(json.dumps({"source": mailwarden.__file__, "rates": rates}))
    """
)


def checkout_paths(tree: Path) -> list[Path]:
    """The source folders of the checkout ``tree``, which must hold a built native core."""
    paths = [tree / part for part in ("core", "sdk", "plugins", "native")]
    if not (tree / "core" / "mailwarden" / "bench" / "run.py").is_file():
        raise click.ClickException(f"{tree} is not a mailwarden checkout with mailwarden bench")
    if not any((tree / "native" / "mailwarden_native").glob("_core*.so")):
        raise click.ClickException(f"{tree} has no built native core: run `make install` there")
    return paths


def this_checkout() -> Path | None:
    """The checkout this mailwarden runs from (an editable install), else None."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "core" / "mailwarden" / "bench").is_dir() else None


def _one_run(paths: list[Path] | None, corpus: Path, config: Path, work: Path) -> dict[str, float]:
    env = dict(os.environ)
    if paths is not None:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(corpus), str(config)],
        env=env,
        cwd=work,  # not a checkout, whose mailwarden.egg-info would be found first
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        where = paths[0].parent if paths else "this build"
        raise click.ClickException(f"the bench run of {where} failed: {last}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if paths is not None and not Path(answer["source"]).is_relative_to(paths[0]):
        # Another mailwarden ahead on the path would make this a comparison with itself.
        raise click.ClickException(f"{paths[0].parent} ran {answer['source']}, not its own code")
    rates: dict[str, float] = answer["rates"]
    return rates


def compare_rounds(
    other: Path,
    messages: list[bytes],
    config_text: str,
    rounds: int,
    step: Callable[[], None] = lambda: None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per-stage messages/s of ``other`` and of this build, one figure per round each."""
    theirs_paths = checkout_paths(other)
    mine = this_checkout()
    mine_paths = checkout_paths(mine) if mine is not None else None
    theirs: dict[str, list[float]] = {}
    ours: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-compare-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        corpus.mkdir()
        for number, raw in enumerate(messages):
            (corpus / f"{number:06d}.eml").write_bytes(raw)
        config = work / "config.toml"
        config.write_text(config_text)
        for number in range(rounds):
            sides = [(theirs_paths, theirs), (mine_paths, ours)]
            for paths, into in sides if number % 2 == 0 else sides[::-1]:
                for stage, rate in _one_run(paths, corpus, config, work).items():
                    into.setdefault(stage, []).append(rate)
                step()
    return theirs, ours


class StageChange:
    """One stage: the median rate of each build over the rounds, and the change."""

    def __init__(self, stage: str, before: list[float], after: list[float]) -> None:
        self.stage = stage
        self.before = statistics.median(before)
        self.after = statistics.median(after)
        self.rounds = min(len(before), len(after))
        self.change = (self.after / self.before - 1.0) * 100.0 if self.before else 0.0


def medians_report(
    before: dict[str, list[float]], after: dict[str, list[float]], tolerance: float
) -> tuple[str, list[StageChange]]:
    """The table of median rates per stage, and the stages slower by more than ``tolerance``
    percent (in the order of the table)."""
    changes = [StageChange(s, before[s], after[s]) for s in after if before.get(s)]
    lines = [f"{'stage (median msg/s)':<28}{'baseline':>10}{'this':>10}{'change':>10}"]
    slower = []
    for c in changes:
        mark = ""
        if c.change < -tolerance:
            slower.append(c)
            mark = f"  slower by more than {tolerance:g}%"
        lines.append(f"{c.stage:<28}{c.before:>10.1f}{c.after:>10.1f}{c.change:>+9.1f}%{mark}")
    rounds = min((c.rounds for c in changes), default=0)
    limit = f"slower by more than {tolerance:g}% (median of {rounds} rounds)"
    if slower:
        lines.append(f"FAIL: {', '.join(c.stage for c in slower)} {limit}")
    else:
        lines.append(f"OK: no stage {limit}")
    return "\n".join(lines), slower
