"""Rule scores learned from a labelled corpus: ``mailwarden antispam fit``.

Every message is run through the plugin's local checks (heuristics and rule files; no DNS)
once; the hits form a 0/1 matrix, one column per rule. A regularised logistic regression
(scikit-learn) weighs the columns, with ham errors weighted ``ham_weight`` times spam errors
(a false positive costs more than a miss), and the weights are scaled so that the model's
even-odds boundary falls on the ``probable_spam_score`` threshold: a rule's score is its
weight times ``threshold / -intercept``. Rules that say "spam" never get a negative score, and
``tflags nice`` rules never a positive one (a column whose weight has the wrong sign is
dropped and the model refitted), so no rule can be used to whitewash a message by a sign
the corpus happened to give it.

Bayes takes part as its bands (BAYES_00 ... BAYES_99): each message's band comes from a
classifier trained on the other folds only (out of fold), as it would be in use.

k-fold cross-validation (stratified, seeded) reports precision, recall and false-positive
rate per fold, and the false-positive rate on hard ham (``group`` containing "hard").
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailwarden_sdk import parse

from .bayes import Bayes
from .rules import RuleSet

__all__ = [
    "FoldResult",
    "Sample",
    "bayes_probabilities",
    "cross_validate",
    "fit_scores",
    "read_labels",
    "scores_file",
]


@dataclass(frozen=True)
class Sample:
    """One labelled message: ``label`` is spam or ham; ``group`` the corpus folder."""

    path: Path
    label: str
    group: str = ""

    @property
    def hard(self) -> bool:
        return self.label == "ham" and "hard" in self.group


def read_labels(source: Path) -> list[Sample]:
    """Samples of a ``LABELS.csv`` (``path,label[,group]``; paths relative to it) or of a
    directory whose sub-folders are named after their label (``spam*``, ``*ham*``).

    Rows of other labels (``bulk``) are left out: they are neither class.
    """
    out: list[Sample] = []
    if source.is_dir():
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            label = "spam" if folder.name.startswith("spam") else "ham"
            if label == "ham" and "ham" not in folder.name:
                continue
            out.extend(
                Sample(p, label, folder.name)
                for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.name.startswith(".")
            )
        return out
    with open(source, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["label"] in ("spam", "ham"):
                group = row.get("group") or row.get("note") or ""
                out.append(Sample(source.parent / row["path"], row["label"], group))
    return out


def folds_of(samples: Sequence[Sample], k: int, seed: int = 0) -> list[int]:
    """The fold of each sample: stratified by label (and hard ham), shuffled with ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    strata = [f"{s.label}{'-hard' if s.hard else ''}" for s in samples]
    fold = [0] * len(samples)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_train, test) in enumerate(splitter.split(strata, strata)):
        for j in test:
            fold[j] = i
    return fold


def bayes_probabilities(
    raws: Sequence[bytes],
    labels: Sequence[str],
    fold: Sequence[int],
    min_learned: int = 10,
    progress: Callable[[str], None] | None = None,
) -> list[float | None]:
    """Each message's spam probability from a real :class:`Bayes` store trained on the
    other folds (out of fold); its finding code is :func:`~.bayes.band` of it."""
    probabilities: list[float | None] = [None] * len(raws)
    parsed = [parse(r) for r in raws]
    for held in sorted(set(fold)):
        workdir = Path(tempfile.mkdtemp(prefix="mw-fit-bayes-"))
        try:
            bayes = Bayes(workdir)
            try:
                for i, raw in enumerate(raws):
                    if fold[i] != held:
                        bayes.learn(raw, labels[i], "fit")
                for i in range(len(raws)):
                    if fold[i] == held:
                        probabilities[i] = bayes.probability(parsed[i], min_learned)
            finally:
                bayes.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if progress is not None:
            progress(f"bayes: fold {held + 1} trained")
    return probabilities


@dataclass
class Model:
    """Fitted scores (code -> points) and the columns that were fitted."""

    scores: dict[str, float]
    columns: list[str] = field(default_factory=list)


def fit_scores(
    hits: Sequence[set[str]],
    labels: Sequence[str],
    nice: Iterable[str] = (),
    threshold: float = 5.0,
    c: float = 2.0,
    ham_weight: float = 6.0,
    min_hits: int = 3,
) -> Model:
    """Scores for every code hit by at least ``min_hits`` training messages."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    counts: dict[str, int] = {}
    for h in hits:
        for code in h:
            counts[code] = counts.get(code, 0) + 1
    nice_set = set(nice)
    columns = sorted(c for c, n in counts.items() if n >= min_hits)
    y = np.array([1 if lab == "spam" else 0 for lab in labels])
    weights = {0: ham_weight, 1: 1.0}
    # Each round drops the columns whose sign contradicts the rule's kind; bounded by columns.
    for _ in range(len(columns) + 1):
        index = {code: i for i, code in enumerate(columns)}
        x = np.zeros((len(hits), len(columns)), dtype=np.float64)
        for row, h in enumerate(hits):
            for code in h:
                if code in index:
                    x[row, index[code]] = 1.0
        model = LogisticRegression(C=c, class_weight=weights, max_iter=2000)
        model.fit(x, y)
        coef = model.coef_[0]
        wrong = {
            code
            for code, w in zip(columns, coef, strict=True)
            if (w < 0 and code not in nice_set) or (w > 0 and code in nice_set)
        }
        if not wrong:
            break
        columns = [code for code in columns if code not in wrong]
    intercept = float(model.intercept_[0])
    # The even-odds boundary w.x = -intercept becomes "total score = threshold".
    scale = threshold / -intercept if intercept < 0 else threshold
    scores = {code: round(float(w) * scale, 3) for code, w in zip(columns, coef, strict=True)}
    return Model({k: v for k, v in scores.items() if v != 0.0}, columns)


@dataclass
class FoldResult:
    """One fold's figures; ``flagged`` by index of the held-out messages."""

    fold: int
    spam: int
    ham: int
    hard_ham: int
    tp: int
    fp: int
    hard_fp: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.spam if self.spam else 0.0

    @property
    def fpr(self) -> float:
        return self.fp / self.ham if self.ham else 0.0

    @property
    def hard_fpr(self) -> float:
        return self.hard_fp / self.hard_ham if self.hard_ham else 0.0

    def line(self) -> str:
        return (
            f"fold {self.fold + 1}: precision {self.precision:.4f} recall {self.recall:.4f} "
            f"fpr {self.fpr:.4f} ({self.fp}/{self.ham}) "
            f"hard-ham fpr {self.hard_fpr:.4f} ({self.hard_fp}/{self.hard_ham})"
        )


def tally(
    fold: int, samples: Sequence[Sample], flagged: Sequence[bool], index: Iterable[int]
) -> FoldResult:
    """Counts for the messages ``index`` (held out) given what was flagged."""
    r = FoldResult(fold, 0, 0, 0, 0, 0, 0)
    for i in index:
        s = samples[i]
        if s.label == "spam":
            r.spam += 1
            r.tp += flagged[i]
        else:
            r.ham += 1
            r.fp += flagged[i]
            if s.hard:
                r.hard_ham += 1
                r.hard_fp += flagged[i]
    return r


def total(scores: dict[str, float], codes: Iterable[str]) -> float:
    return math.fsum(scores.get(c, 0.0) for c in codes)


def cross_validate(
    samples: Sequence[Sample],
    hits: Sequence[set[str]],
    fold: Sequence[int],
    nice: Iterable[str] = (),
    threshold: float = 5.0,
    **options: Any,
) -> tuple[list[FoldResult], list[bool]]:
    """Fit on k-1 folds, flag the held one at ``threshold``; per-fold figures and, for every
    message, whether its held-out model flagged it."""
    flagged = [False] * len(samples)
    results = []
    nice = list(nice)
    for held in sorted(set(fold)):
        train = [i for i in range(len(samples)) if fold[i] != held]
        test = [i for i in range(len(samples)) if fold[i] == held]
        model = fit_scores(
            [hits[i] for i in train],
            [samples[i].label for i in train],
            nice,
            threshold,
            **options,
        )
        for i in test:
            flagged[i] = total(model.scores, hits[i]) >= threshold
        results.append(tally(held, samples, flagged, test))
    return results, flagged


def summary(results: Sequence[FoldResult]) -> FoldResult:
    """All folds' counts together (fold -1)."""
    out = FoldResult(-1, 0, 0, 0, 0, 0, 0)
    for r in results:
        out.spam += r.spam
        out.ham += r.ham
        out.hard_ham += r.hard_ham
        out.tp += r.tp
        out.fp += r.fp
        out.hard_fp += r.hard_fp
    return out


def scores_file(model: Model, rules: RuleSet, command: str, figures: Sequence[str]) -> str:
    """The rule file of fitted scores (loaded after the topic files, so its scores win)."""
    lines = [
        "# Scores fitted by `mailwarden antispam fit` (logistic regression, see fit.py).",
        "# Generated: do not edit by hand; re-run:",
        f"#   {command}",
        "# Cross-validation of these settings:",
        *(f"#   {f}" for f in figures),
        "",
    ]
    for code in sorted(model.scores):
        lines.append(f"score {code:<24} {model.scores[code]:.3f}")
    # Rules that were fitted to 0 (or seen too rarely) score nothing rather than a guess.
    zero = sorted(
        name
        for name, rule in rules.rules.items()
        if name.startswith("MW_")
        and not rule.sub_rule
        # A bare score line (such as this file's previous version) defines no rule.
        and (rule.kind != "meta" or rule.meta)
        and name not in model.scores
        and "nofit" not in rule.tflags
    )
    if zero:
        lines += ["", "# Seen too rarely, or of no weight, in the labelled corpus:"]
        lines += [f"score {code:<24} 0" for code in zero]
    return "\n".join(lines) + "\n"


def rule_hits(
    samples: Sequence[Sample], rule_files: Sequence[str] = ()
) -> tuple[list[set[str]], list[str], RuleSet]:
    """Each sample's local hits with the built-in rules (and ``rule_files``), the ``nice``
    codes, and the loaded rules."""
    from . import AntispamConfig, AntispamPlugin

    plugin = AntispamPlugin()
    plugin.every_rule = True  # a rule scored 0 today may earn a score
    plugin.configure(AntispamConfig(rule_files=list(rule_files), bayes=False, authentication=False))
    # "nofit" rules keep the score their file gives (BULK_MAIL decides a status, not spam).
    fixed = {name for name, rule in plugin.rules.rules.items() if "nofit" in rule.tflags}
    hits = [plugin.local_hits(parse(s.path.read_bytes())) - fixed for s in samples]
    nice = [name for name, rule in plugin.rules.rules.items() if "nice" in rule.tflags]
    return hits, nice, plugin.rules
