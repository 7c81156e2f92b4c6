"""``mailwarden bench --compare DIR``: this build against another checkout, stage by stage.

Wall time says nothing on a shared machine: two runs of the same build differ by more than the
5% a change may cost (on the 2-core development machine, by 15-25% per stage). So each stage is
measured in work: user-space instructions retired by the process where the CPU counts them
(they hardly move with the neighbours' load), else its CPU time (:mod:`counters`). Each round
runs the per-stage pass of both builds (:mod:`stage_pass`), each in a fresh interpreter on the
same corpus, config and signatures, the order swapped every round; a stage's figure is the
median over the rounds of its per-round ratio this/baseline, and the verdict is on that median.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import msgspec

from ..stage import Stage, detector_stage
from .counters import CPU_TIME, INSTRUCTIONS
from .stage_pass import WHOLE

__all__ = [
    "Costs",
    "StageChange",
    "checkout_paths",
    "compare_rounds",
    "stage_report",
    "this_checkout",
]

_STAGE_PASS = Path(__file__).with_name("stage_pass.py")
# Run by the other build's interpreter: this build's driver, by path, argv after it.
_RUN_PASS = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


class Costs(msgspec.Struct):
    """One build's per-stage pass: the totals over the corpus per measure (instructions, CPU
    nanoseconds), the measure the counters gave (and why not instructions, if so)."""

    measure: str
    why: str
    messages: int
    costs: dict[str, dict[str, float]]
    source: str = ""


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


class _Side:
    """One build's stage_pass in its own interpreter, answering one message at a time."""

    def __init__(self, paths: list[Path] | None, corpus: Path, config: Path, work: Path) -> None:
        env = dict(os.environ)
        if paths is not None:
            env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
        # One hash seed for both builds: set and dict orders, and so the work, are the same.
        env["PYTHONHASHSEED"] = "0"
        env["TMPDIR"] = str(work)  # the homes, next to the corpus
        self.where = paths[0].parent if paths else "this build"
        self.log = tempfile.TemporaryFile(dir=work)
        args = [str(_STAGE_PASS), str(corpus), str(config), INSTRUCTIONS]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _RUN_PASS, *args],
            env=env,
            cwd=work,  # not a checkout, whose mailwarden.egg-info would be found first
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        head = self._line()
        self.measure, self.why = str(head["measure"]), str(head["why"])
        self.messages = int(head["messages"])
        if paths is not None and not Path(str(head["source"])).is_relative_to(paths[0]):
            self.close()
            # Another mailwarden ahead on the path would make this a comparison with itself.
            raise click.ClickException(f"{self.where} ran {head['source']}, not its own code")
        self.totals: dict[str, dict[str, float]] = {}

    def _line(self) -> dict[str, float | str]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self._stop()
            self.log.seek(0)
            last = (self.log.read().decode(errors="replace").strip().splitlines() or ["?"])[-1]
            self.close()
            raise click.ClickException(f"the bench run of {self.where} failed: {last}")
        answer: dict[str, float | str] = json.loads(line)
        return answer

    def ready(self) -> None:
        """Wait until the side has warmed its home and started its gateway."""
        self._line()

    def one(self, index: int, measure: str) -> None:
        """Message ``index`` through the gateway; its costs in ``measure`` added up."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{index} {measure}\n")
        self.process.stdin.flush()
        into = self.totals.setdefault(measure, {})
        for stage, value in self._line().items():
            into[stage] = into.get(stage, 0.0) + float(value)

    def costs(self) -> Costs:
        """The totals so far."""
        return Costs(self.measure, self.why, self.messages, self.totals)

    def close(self) -> None:
        """End the side (its stdin closed, it stops) and its log."""
        self._stop()
        self.log.close()

    def _stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def compare_rounds(
    other: Path,
    messages: list[bytes],
    config_text: str,
    rounds: int,
    step: Callable[[], None] = lambda: None,
) -> tuple[list[Costs], list[Costs]]:
    """The per-stage costs of ``other`` and of this build over the corpus, once per round each.

    Each round starts both builds afresh and sends them each message in turn, the first one
    swapped every message: the machine's speed changes by tens of percent from one second to
    the next on a shared host, and so falls on both builds alike."""
    theirs_paths = checkout_paths(other)
    mine = this_checkout()
    mine_paths = checkout_paths(mine) if mine is not None else None
    theirs: list[Costs] = []
    ours: list[Costs] = []
    # Homes in memory where there is a tmpfs: an fsync to a disk shared with other jobs costs
    # kernel CPU that moves with their I/O, and the builds' code is what is compared here.
    shm = Path("/dev/shm")
    memory = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-compare-", dir=memory) as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        corpus.mkdir()
        for number, raw in enumerate(messages):
            (corpus / f"{number:06d}.eml").write_bytes(raw)
        config = work / "config.toml"
        config.write_text(config_text)
        for number in range(rounds):
            sides: list[_Side] = []
            try:
                sides.append(_Side(theirs_paths, corpus, config, work))
                sides.append(_Side(mine_paths, corpus, config, work))
                for side in sides:
                    side.ready()
                # Instructions first where both count them, then CPU time for the table.
                counted = all(s.measure == INSTRUCTIONS for s in sides)
                for measure in [INSTRUCTIONS, CPU_TIME] if counted else [CPU_TIME]:
                    for index in range(len(messages)):
                        first = (index + number) % 2
                        for side in (sides[first], sides[1 - first]):
                            side.one(index, measure)
            finally:
                for side in sides:
                    side.close()
            theirs.append(sides[0].costs())
            ours.append(sides[1].costs())
            step()
    return theirs, ours


def _per_message(runs: list[Costs], measure: str, stage: str) -> float:
    return statistics.median(r.costs[measure][stage] / max(r.messages, 1) for r in runs)


class StageChange:
    """One stage: per measure, the cost per message of each build (medians over the rounds)
    and the ratios this/baseline of every round; the verdict is on the median ratio."""

    def __init__(self, stage: str, before: list[Costs], after: list[Costs]) -> None:
        self.stage = stage
        self.rounds = min(len(before), len(after))
        self.ratios: dict[str, list[float]] = {}
        self.per_message: dict[str, tuple[float, float]] = {}
        for measure in (INSTRUCTIONS, CPU_TIME):
            pairs = [
                (b.costs[measure][stage], a.costs[measure][stage])
                for b, a in zip(before, after, strict=False)
                if stage in b.costs.get(measure, {}) and stage in a.costs.get(measure, {})
            ]
            if len(pairs) == self.rounds and all(old > 0 for old, _ in pairs):
                self.ratios[measure] = [new / old for old, new in pairs]
                self.per_message[measure] = (
                    _per_message(before, measure, stage),
                    _per_message(after, measure, stage),
                )

    def ratio(self, measure: str) -> float | None:
        """The median of the per-round ratios this/baseline, None when not measured."""
        found = self.ratios.get(measure)
        return statistics.median(found) if found else None


def _cells(change: StageChange, measure: str, unit: float, digits: int) -> str:
    ratio = change.ratio(measure)
    if ratio is None:
        return f"{'-':>19}{'-':>8}{'-':>14}"
    base, this = (value / unit for value in change.per_message[measure])
    ratios = change.ratios[measure]
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
    return f"{base:>9.{digits}f}{this:>10.{digits}f}{ratio:>7.3f}x{spread:>14}"


def _table_order(stage: str) -> tuple[int, str]:
    # The pipeline's order, each detector just before the detect stage that holds it, the
    # whole message last; names no build knows go in between.
    order = [str(s) for s in Stage]
    if stage.startswith(detector_stage("")):
        return order.index(Stage.DETECT) * 2 - 1, stage
    if stage in order:
        return order.index(stage) * 2, ""
    return (len(order) * 2, stage) if stage != WHOLE else (len(order) * 2 + 1, "")


def stage_report(
    before: list[Costs], after: list[Costs], tolerance: float
) -> tuple[str, list[StageChange]]:
    """The table of per-stage costs and ratios, and the stages whose median ratio in the
    deciding measure is above ``1 + tolerance / 100`` (in the order of the table; each
    detector's line is shown, the detect stage that holds them is judged).

    The deciding measure is instructions when every run of both builds counted them, else CPU
    time; the table shows both where both were measured."""
    runs = [*before, *after]
    measure = INSTRUCTIONS if runs and all(INSTRUCTIONS in r.costs for r in runs) else CPU_TIME
    why = next((r.why for r in runs if r.why), "") if measure == CPU_TIME else ""
    stages = sorted(after[0].costs.get(measure, {}) if after else {}, key=_table_order)
    changes = [StageChange(s, before, after) for s in stages]
    changes = [c for c in changes if c.ratio(measure) is not None]
    titles = "base    this  this/base  spread"
    head = f"{'stage':<20}  CPU ms/msg: {titles}  |  instructions M/msg: {titles}"
    lines = [f"{head}  (verdict on {measure}{': ' + why if why else ''})"]
    slower = []
    limit = 1.0 + tolerance / 100.0
    for c in changes:
        mark = ""
        if c.stage.startswith(detector_stage("")):
            # The detectors run at once: the counters are the process's, so one detector's
            # line holds what the others did while it waited, and moves with the scheduling.
            # The detect stage holds them all, and is judged.
            mark = "  (overlaps the other detectors: not judged)"
        elif (c.ratio(measure) or 0.0) > limit:
            slower.append(c)
            mark = f"  slower by more than {tolerance:g}%"
        cpu = _cells(c, CPU_TIME, 1e6, 3)
        instructions = _cells(c, INSTRUCTIONS, 1e6, 2)
        lines.append(f"{c.stage:<20}{cpu}  |{instructions}{mark}")
    rounds = min((c.rounds for c in changes), default=0)
    verdict = f"slower by more than {tolerance:g}% in {measure} (median of {rounds} rounds)"
    if slower:
        lines.append(f"FAIL: {', '.join(c.stage for c in slower)} {verdict}")
    else:
        lines.append(f"OK: no stage {verdict}")
    return "\n".join(lines), slower
