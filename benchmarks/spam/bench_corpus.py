"""Antispam precision, recall and false-positive rate on the labelled corpus, next to
SpamAssassin 4.0.1's stored result on the same messages.

Usage: python benchmarks/spam/bench_corpus.py [--corpus DIR] [--sa-rules DIR] [--json FILE]

Every message of ``spam/LABELS.csv`` goes through a real gateway (``Gateway.scan``) with the
antispam plugin. Settings match the reference run: local checks only (DNS goes to a DNS
server on 127.0.0.1 that knows no names, as SpamAssassin's ``-L`` skips network tests), Bayes
off, SpamAssassin's stock rules from ``--sa-rules`` (default ``/usr/share/spamassassin``, if
present) loaded through our rule engine beside the built-in rules. "Flagged" means a spam
status (spam or probable spam, the score at or above 5.0, SpamAssassin's threshold too).

Prints per label (spam, ham, bulk) how many each filter flagged, then precision, recall and
false-positive rate of both for spam against ham, and the messages where they differ.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mailwarden.config import parse_config  # noqa: E402
from mailwarden.pipeline import Gateway  # noqa: E402
from mailwarden.plugins import build_plugin_manager  # noqa: E402
from mailwarden_sdk import Envelope  # noqa: E402
from tests.services.dns_zone import running_zone  # noqa: E402

FLAGGED = {"spam", "probable_spam", "blocked"}


def _reference(corpus: Path) -> dict[str, bool]:
    ref: dict[str, bool] = {}
    path = corpus / "spam" / "REFERENCE-spamassassin-4.0.1.tsv"
    for line in path.read_text().splitlines():
        if line.startswith("#") or line.startswith("path\t") or not line.strip():
            continue
        name, is_spam, _score = line.split("\t")
        ref[name] = is_spam == "Yes"
    return ref


async def _scan_all(
    corpus: Path, rows: list[dict[str, str]], sa_rules: Path | None, port: int, home: Path
) -> dict[str, tuple[bool, float, list[str], str]]:
    rule_files = f"rule_files = ['{sa_rules}']\n" if sa_rules else ""
    config = (
        "[antispam]\n"
        f"{rule_files}"
        "bayes = false\n"
        "dns_servers = ['127.0.0.1']\n"
        f"dns_port = {port}\n"
        "dns_timeout = 0.5\n"
    )
    plugins = build_plugin_manager(entry_points=True)
    cfg = parse_config(config, plugins.config_schemas())
    cfg.gateway.home = str(home)
    out: dict[str, tuple[bool, float, list[str], str]] = {}
    async with Gateway(cfg, plugins=plugins) as gateway:
        for row in rows:
            raw = (corpus / "spam" / row["path"]).read_bytes()
            envelope = Envelope(mail_from="", rcpt_to=["user@example.com"])
            decision = await gateway.scan(raw, envelope)
            verdict = decision.verdict
            codes = sorted({f.code for f in verdict.findings if f.score})
            status = verdict.spam.value
            out[row["path"]] = (status in FLAGGED, verdict.spam_score, codes, status)
    return out


def _rates(pred: dict[str, bool], labels: dict[str, str]) -> dict[str, float]:
    tp = sum(1 for p, lab in labels.items() if lab == "spam" and pred.get(p))
    fn = sum(1 for p, lab in labels.items() if lab == "spam" and not pred.get(p))
    fp = sum(1 for p, lab in labels.items() if lab == "ham" and pred.get(p))
    tn = sum(1 for p, lab in labels.items() if lab == "ham" and not pred.get(p))
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_corpus = os.environ.get("MAILWARDEN_CORPUS") or str(ROOT.parent / "shared" / "corpus")
    parser.add_argument("--corpus", default=default_corpus)
    parser.add_argument("--sa-rules", default="/usr/share/spamassassin")
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus)
    sa_rules = Path(args.sa_rules) if args.sa_rules and Path(args.sa_rules).is_dir() else None
    with open(corpus / "spam" / "LABELS.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = {r["path"]: r["label"] for r in rows}
    reference = _reference(corpus)
    with running_zone({}) as server, tempfile.TemporaryDirectory() as home:
        ours = asyncio.run(_scan_all(corpus, rows, sa_rules, server.port, Path(home)))
    pred = {p: v[0] for p, v in ours.items()}
    print(f"rules: built-in + {sa_rules or 'no stock SpamAssassin rules'}; Bayes off; no network")
    # Flagged at 5.0 (SpamAssassin's one threshold) splits into our two statuses: "probable
    # spam" (5 to 10, delivered with a tag by the default rule) and "spam" (10 or more).
    print(
        f"{'label':<6} {'messages':>8} {'mailwarden':>11} {'(probable':>10} {'spam)':>6}"
        f" {'SpamAssassin':>13}"
    )
    per_label: dict[str, dict[str, int]] = {}
    for label in ("spam", "ham", "bulk"):
        paths = [p for p, lab in labels.items() if lab == label]
        mine = sum(1 for p in paths if pred[p])
        probable = sum(1 for p in paths if ours[p][3] == "probable_spam")
        spam = sum(1 for p in paths if ours[p][3] == "spam")
        theirs = sum(1 for p in paths if reference.get(p))
        per_label[label] = {
            "messages": len(paths),
            "mailwarden": mine,
            "probable_spam": probable,
            "spam": spam,
            "spamassassin": theirs,
        }
        print(f"{label:<6} {len(paths):>8} {mine:>11} {probable:>10} {spam:>6} {theirs:>13}")
    r_ours, r_ref = _rates(pred, labels), _rates(reference, labels)
    print(f"\n{'':<14} {'mailwarden':>11} {'SpamAssassin':>13}")
    for key in ("precision", "recall", "fpr"):
        print(f"{key:<14} {r_ours[key]:>11.3f} {r_ref[key]:>13.3f}")
    print("\nwhere they differ (label: path  mailwarden score  codes):")
    for path, label in labels.items():
        if pred[path] != reference.get(path):
            _flag, score, codes, status = ours[path]
            print(f"  {label}: {path}  {status} {score:.1f}  {' '.join(codes[:8])}")
    result = {
        "per_label": per_label,
        "mailwarden": r_ours,
        "spamassassin": r_ref,
        "flagged": {p: v[0] for p, v in ours.items()},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
