"""What the antivirus catches on the shared corpus, beside clamscan in the same run.

Usage: python benchmarks/av/bench_quality.py [--corpus DIR] [--json FILE]

Every file of ``corpus/av/EXPECTED.json`` (ClamAV's own test files: the test binary in every
container, document and encoding ClamAV's test suite covers, plus the corpus's own samples) is
scanned twice with the same signature databases (the ones ``EXPECTED.json`` names, no others):
by ``clamscan -z`` as installed on this machine, and by a gateway with only the antivirus
plugin, each file sent as an attachment of a message (a ``.eml`` or mbox as it is). The table
says how many each detects, which files only one of them detects (by name), and the
mailwarden status of every file: ``infected``, ``encrypted``, ``not_scanned`` with its reason,
or ``clean`` (only for what was read whole).

Needs clamscan (``apt-get install clamav``) and the readers ``make av-packages`` installs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner, build_message
from mailwarden_antivirus import AntivirusPlugin
from mailwarden_sdk import Envelope

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])


def as_message(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".eml" or path.name.endswith(".mbox.base64"):
        return data
    return build_message(attachments=[(path.name, data)])


def clamscan(av: Path, files: list[str], databases: list[str]) -> dict[str, set[str]]:
    command = ["clamscan", "--no-summary", "-z", *(f"--database={d}" for d in databases)]
    run = subprocess.run(
        [*command, *(str(av / f) for f in files)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if run.returncode not in (0, 1):
        sys.exit(f"clamscan failed ({run.returncode}): {run.stderr[-500:]}")
    found: dict[str, set[str]] = collections.defaultdict(set)
    for line in run.stdout.splitlines():
        if line.endswith(" FOUND"):
            path, name = line.removesuffix(" FOUND").rsplit(": ", 1)
            found[str(Path(path).relative_to(av))].add(name.removesuffix(".UNOFFICIAL"))
    return found


def mailwarden(av: Path, files: list[str], databases: list[str]) -> dict[str, tuple[str, str]]:
    """Each file's antivirus status and (for ``not_scanned``) the reason."""
    config = "[antivirus]\nbuiltin_signatures = false\n"
    config += f"signatures = {json.dumps(databases)}\n"
    plugins = build_plugin_manager(entry_points=False, extra={"antivirus": AntivirusPlugin})
    cfg = parse_config(config, plugins.config_schemas())
    with tempfile.TemporaryDirectory(prefix="mw-avquality-") as home:
        cfg.gateway.home = home
        runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
        try:
            out = {}
            for name in files:
                verdict = runner.process(as_message(av / name), ENVELOPE).decision.verdict
                reasons = {
                    f.details.get("reason", "")
                    for f in verdict.findings
                    if f.detector == "antivirus" and f.status == "not_scanned"
                }
                out[name] = (verdict.antivirus.value, ", ".join(sorted(r for r in reasons if r)))
            return out
        finally:
            runner.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(
        os.environ.get("MAILWARDEN_CORPUS", Path(__file__).parents[2] / "../shared/corpus")
    )
    parser.add_argument("--corpus", type=Path, default=default, help="the shared corpus")
    parser.add_argument("--json", type=Path, help="also write the per-file results here")
    args = parser.parse_args()
    if shutil.which("clamscan") is None:
        sys.exit("clamscan is not installed (apt-get install clamav)")
    av = args.corpus.resolve() / "av"
    expected = json.loads((av / "EXPECTED.json").read_text())
    databases = [str(p) for pattern in expected["databases"] for p in sorted(av.glob(pattern))]
    files = sorted(expected["files"])
    clam = clamscan(av, files, databases)
    mw = mailwarden(av, files, databases)
    rows = collections.Counter()
    for name in files:
        ours, theirs = mw[name][0] == "infected", bool(clam.get(name))
        rows["both" if ours and theirs else "mw" if ours else "clam" if theirs else "neither"] += 1
    print(f"{len(files)} files, databases: {', '.join(Path(d).name for d in databases)}")
    print(f"{'detected by':<28}{'files':>6}")
    print(f"{'clamscan -z':<28}{rows['both'] + rows['clam']:>6}")
    print(f"{'mailwarden':<28}{rows['both'] + rows['mw']:>6}")
    print(f"{'both':<28}{rows['both']:>6}")
    print(f"{'neither':<28}{rows['neither']:>6}")
    for name in files:
        ours, theirs = mw[name][0] == "infected", bool(clam.get(name))
        if theirs and not ours:
            status, reason = mw[name]
            print(f"clamscan only: {name} (mailwarden: {status}{f', {reason}' if reason else ''})")
        elif ours and not theirs:
            print(f"mailwarden only: {name}")
    statuses = collections.Counter(status for status, _ in mw.values())
    print("mailwarden statuses: " + ", ".join(f"{s} {n}" for s, n in sorted(statuses.items())))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    name: {
                        "clamscan": sorted(clam.get(name, ())),
                        "mailwarden": mw[name][0],
                        "reason": mw[name][1],
                    }
                    for name in files
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
