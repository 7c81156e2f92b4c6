"""k-fold cross-validation on ``spam-public``: mailwarden and SpamAssassin on the same folds.

Usage: python benchmarks/spam/bench_cv.py [--corpus DIR] [--folds 5] [--seed 0]
       [--no-spamassassin] [--no-rspamd] [--rspamd-no-bayes] [--jobs 2] [--json FILE]

For each fold, both filters train on the other k-1 folds and are tested on the held one:

- mailwarden: default settings (built-in rules, no network). Its Bayes store (the real LMDB
  ``Bayes``) learns the k-1 folds; rule and Bayes-band scores are fitted on the k-1 folds by
  the same code as ``mailwarden antispam fit`` (each training message's band from a Bayes that
  did not learn it). A held message is flagged when its score reaches 5.0.
- SpamAssassin (Debian's package, installed when missing): ``sa-learn -L`` on the k-1 folds
  into a Bayes store of that fold, then every held message checked as ``spamassassin -L``
  does (local tests only, its stock rules and scores, ``required_score`` 5.0), by
  ``sa_check.pl`` in one process per fold.
- rspamd (Debian's 3.4, installed when missing) offline: one rspamd on 127.0.0.1 with its
  network modules off (as in ``mailwarden bench``) and its Bayes in a local Redis; for each
  fold Redis is emptied, the k-1 folds are learned through the controller (``/learnspam``,
  ``/learnham``, what ``rspamc learn_spam/learn_ham`` sends) and the held fold is checked
  (``/checkv2`` with a client address and HELO, so it looks nothing up). A message is flagged
  at rspamd's own spam actions (add header at 6, rewrite subject, reject at 15).

Prints precision, recall and false-positive rate per fold and over all folds for each, with
the false-positive rate on hard ham (the ``hard-ham-1`` folder) apart.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mailwarden.bench.peers import _free_port, _rspamd, _wait  # noqa: E402
from mailwarden_antispam import fit as fitting  # noqa: E402
from mailwarden_antispam.bayes import band  # noqa: E402

HERE = Path(__file__).resolve().parent


def ours(samples: list[fitting.Sample], fold: list[int]) -> tuple[list[fitting.FoldResult], float]:
    start = time.monotonic()
    hits, nice, _rules = fitting.rule_hits(samples)
    raws = [s.path.read_bytes() for s in samples]
    found = fitting.bayes_probabilities(raws, [s.label for s in samples], fold)
    for h, probability in zip(hits, found, strict=True):
        if probability is not None:
            h.add(band(probability))
    results, _flagged = fitting.cross_validate(samples, hits, fold, nice)
    return results, time.monotonic() - start


def _sa_fold(samples: list[fitting.Sample], fold: list[int], held: int, work: Path) -> list[bool]:
    home = work / f"fold{held}"
    home.mkdir()
    prefs = home / "user_prefs"
    prefs.write_text(
        f"use_bayes 1\nbayes_auto_learn 0\nbayes_path {home}/bayes\nlock_method flock\n"
        "required_score 5.0\n"
    )
    env = {**os.environ, "HOME": str(home)}
    for label in ("spam", "ham"):
        paths = [str(s.path) for i, s in enumerate(samples) if fold[i] != held and s.label == label]
        subprocess.run(
            ["sa-learn", "-L", "--no-sync", "-p", str(prefs), f"--{label}", *paths],
            check=True,
            capture_output=True,
            env=env,
            timeout=3600,
        )
    subprocess.run(
        ["sa-learn", "--sync", "-p", str(prefs)], check=True, capture_output=True, env=env
    )
    test = [i for i in range(len(samples)) if fold[i] == held]
    checked = subprocess.run(
        ["perl", str(HERE / "sa_check.pl"), str(prefs)],
        input="\n".join(str(samples[i].path) for i in test) + "\n",
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=7200,
    )
    verdict = {}
    for line in checked.stdout.splitlines():
        path, _score, is_spam = line.split("\t")
        verdict[path] = is_spam == "Yes"
    flagged = [False] * len(samples)
    for i in test:
        flagged[i] = verdict[str(samples[i].path)]
    return flagged


def spamassassin(
    samples: list[fitting.Sample], fold: list[int], jobs: int
) -> tuple[list[fitting.FoldResult], float]:
    from tests.services import ensure_packages

    ensure_packages("spamassassin")
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(jobs) as pool:
        held_out = sorted(set(fold))
        runs = [pool.submit(_sa_fold, samples, fold, h, Path(work)) for h in held_out]
        results = []
        for held, run in zip(held_out, runs, strict=True):
            flagged = run.result()
            test = [i for i in range(len(samples)) if fold[i] == held]
            results.append(fitting.tally(held, samples, flagged, test))
    return results, time.monotonic() - start


_RSPAMD_SPAM_ACTIONS = frozenset({"add header", "rewrite subject", "reject"})


def _rspamd_post(port: int, path: str, raw: bytes) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        # A client address and HELO as an MTA passes them: otherwise rspamd asks DNS.
        headers = {"IP": "192.0.2.1", "Hostname": "mail.example.org", "Helo": "mail.example.org"}
        connection.request("POST", path, body=raw, headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    answer: dict[str, Any] = json.loads(body or b"{}")
    # A learn refused as already learned (or as not needed) answers 208/4xx with an error.
    if response.status >= 500:
        raise RuntimeError(f"rspamd {path} answered {response.status}: {body[:200]!r}")
    return answer


def rspamd(
    samples: list[fitting.Sample], fold: list[int], bayes: bool
) -> tuple[list[fitting.FoldResult], float, dict[str, int]]:
    from tests.services import ensure_packages

    ensure_packages("rspamd", *(["redis-server"] if bayes else []))
    start = time.monotonic()
    controller, redis_port = _free_port(), _free_port()
    learned = {"spam": 0, "ham": 0, "refused": 0}
    bayes_conf = "enabled = false;\n"
    redis = None
    work = Path(tempfile.mkdtemp(prefix="mailwarden-cv-redis-"))
    try:
        if bayes:
            bayes_conf = (
                f'backend = "redis";\nservers = "127.0.0.1:{redis_port}";\nautolearn = false;\n'
            )
            redis = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                 "--appendonly", "no", "--dir", str(work)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            _wait(redis_port, redis, 30)
        extra = {"classifier-bayes.conf": bayes_conf}
        with _rspamd(2, controller=controller, extra=extra) as port:
            results = _rspamd_folds(
                samples, fold, port, controller, redis_port if bayes else 0, learned
            )
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    return results, time.monotonic() - start, learned


def _rspamd_folds(
    samples: list[fitting.Sample],
    fold: list[int],
    port: int,
    controller: int,
    redis_port: int,
    learned: dict[str, int],
) -> list[fitting.FoldResult]:
    raws = [s.path.read_bytes() for s in samples]
    results = []
    with ThreadPoolExecutor(4) as pool:
        for held in sorted(set(fold)):
            if redis_port:
                subprocess.run(
                    ["redis-cli", "-p", str(redis_port), "flushall"],
                    check=True,
                    capture_output=True,
                )
                train = [i for i in range(len(samples)) if fold[i] != held]
                paths = [f"/learn{samples[i].label}" for i in train]
                answers = pool.map(
                    _rspamd_post, [controller] * len(train), paths, [raws[i] for i in train]
                )
                for i, answer in zip(train, answers, strict=True):
                    ok = answer.get("success") is True
                    learned[samples[i].label if ok else "refused"] += 1
            test = [i for i in range(len(samples)) if fold[i] == held]
            answers = pool.map(
                _rspamd_post, [port] * len(test), ["/checkv2"] * len(test), [raws[i] for i in test]
            )
            flagged = [False] * len(samples)
            for i, answer in zip(test, answers, strict=True):
                flagged[i] = answer.get("action") in _RSPAMD_SPAM_ACTIONS
            results.append(fitting.tally(held, samples, flagged, test))
    return results


def _figures(r: fitting.FoldResult) -> dict[str, float]:
    return {
        "precision": r.precision,
        "recall": r.recall,
        "fpr": r.fpr,
        "hard_ham_fpr": r.hard_fpr,
        "spam": r.spam,
        "spam_caught": r.tp,
        "ham": r.ham,
        "ham_flagged": r.fp,
        "hard_ham": r.hard_ham,
        "hard_ham_flagged": r.hard_fp,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    default_corpus = os.environ.get("MAILWARDEN_CORPUS") or str(ROOT.parent / "shared" / "corpus")
    parser.add_argument("--corpus", default=default_corpus)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="SpamAssassin folds at a time")
    parser.add_argument("--no-spamassassin", action="store_true")
    parser.add_argument("--no-rspamd", action="store_true")
    parser.add_argument(
        "--rspamd-no-bayes", action="store_true", help="rspamd without Bayes (no Redis)"
    )
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    samples = fitting.read_labels(Path(args.corpus) / "spam-public" / "LABELS.csv")
    fold = fitting.folds_of(samples, args.folds, args.seed)
    nspam = sum(s.label == "spam" for s in samples)
    nhard = sum(s.hard for s in samples)
    print(
        f"spam-public: {len(samples)} messages ({nspam} spam, {len(samples) - nspam} ham, "
        f"{nhard} of them hard ham); {args.folds} folds, seed {args.seed}; flagged at 5.0"
    )
    filters: dict[str, tuple[list[fitting.FoldResult], float]] = {}
    filters["mailwarden"] = ours(samples, fold)
    if not args.no_spamassassin:
        filters["spamassassin"] = spamassassin(samples, fold, args.jobs)
    learned: dict[str, int] = {}
    if not args.no_rspamd:
        bayes = not args.rspamd_no_bayes
        results, seconds, learned = rspamd(samples, fold, bayes)
        filters["rspamd" + ("" if bayes else " (no Bayes)")] = (results, seconds)
    header = f"{'':<6} {'filter':<13} {'precision':>9} {'recall':>7} {'fpr':>7} {'hard fpr':>8}"
    print(header)
    out: dict[str, Any] = {}
    for name, (results, seconds) in filters.items():
        for r in [*results, fitting.summary(results)]:
            tag = "all" if r.fold < 0 else f"fold {r.fold + 1}"
            print(
                f"{tag:<6} {name:<13} {r.precision:>9.4f} {r.recall:>7.4f} {r.fpr:>7.4f}"
                f" {r.hard_fpr:>8.4f}   ({r.tp}/{r.spam} spam, {r.fp}/{r.ham} ham,"
                f" {r.hard_fp}/{r.hard_ham} hard)"
            )
        out[name] = {
            "folds": [_figures(r) for r in results],
            "all": _figures(fitting.summary(results)),
            "seconds": round(seconds, 1),
        }
    if learned:
        print(
            f"rspamd's Bayes learned {learned['spam']} spam and {learned['ham']} ham over the"
            f" folds ({learned['refused']} refused by its learn condition)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
