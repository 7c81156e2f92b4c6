"""The antispam rules ship: a wheel installed into a fresh virtualenv loads them and flags spam.

The wheel is built from a copy of the checkout (``pip wheel --no-deps``, ``built_wheel``) and
installed into a new virtualenv whose dependencies are the test environment's site-packages
linked in one by one, without this checkout's editable install: nothing of the source tree is
importable there, so every rule the installed plugin loads came out of the wheel. No
SpamAssassin rules are loaded (``rule_files = []``).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from mailwarden_antispam import BUILTIN_RULES
from mailwarden_antispam.rules import load_rules

pytestmark = pytest.mark.integration

CONFIG = "[antispam]\nrule_files = []\nbayes = false\nauthentication = false\n"
# Every 16th spam and every 40th ham of the labelled corpus: a spread sample, fixed by path.
SPAM_STEP, HAM_STEP = 16, 40


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    deps = tmp_path / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        name = entry.name.lower()
        # The checkout's editable install (its finder, .pth and metadata) stays out.
        if name.startswith(("mailwarden", "__editable__")) or name.endswith(".pth"):
            continue
        (deps / entry.name).symlink_to(entry)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")),
            *("install", "-q", "--no-deps", "--no-index", str(wheel)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


def _flagged(mailwarden: list[str], config: Path, files: list[Path]) -> dict[str, bool]:
    result = subprocess.run(
        [*mailwarden, "scan", "--config", str(config), "--json", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    out = {}
    for line in result.stdout.splitlines():
        row = json.loads(line)
        out[Path(row["file"]).name] = row["verdict"]["spam"] in ("spam", "probable_spam")
    return out


def test_wheel_install_loads_the_builtin_rules_and_flags_spam(
    corpus: Path, tmp_path: Path, built_wheel: tuple[Path, Path]
) -> None:
    source, wheel = built_wheel
    sdist_dir = tmp_path / "sdist"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
            str(sdist_dir),
        ],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    with tarfile.open(next(sdist_dir.glob("mailwarden-*.tar.gz"))) as sdist:
        shipped = {Path(n).name for n in sdist.getnames() if "mailwarden_antispam/rules/" in n}
    assert shipped == {p.name for p in BUILTIN_RULES.glob("*.cf")}
    venv = _fresh_venv(tmp_path, wheel)
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import json, mailwarden_antispam as a\n"
            "from mailwarden_antispam.rules import load_rules\n"
            "print(json.dumps([a.__file__, len(load_rules([a.BUILTIN_RULES]).rules)]))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        timeout=120,
    )
    where, count = json.loads(probe.stdout)
    assert Path(where).is_relative_to(venv), where
    # The installed plugin has every rule the checkout has (0 when the .cf files were left out).
    assert count == len(load_rules([BUILTIN_RULES]).rules)
    assert count >= 100

    public = corpus / "spam-public"
    with open(public / "LABELS.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    spam = [public / r["path"] for r in rows if r["label"] == "spam"][::SPAM_STEP]
    ham = [public / r["path"] for r in rows if r["label"] == "ham"][::HAM_STEP]
    config = tmp_path / "mailwarden.toml"
    config.write_text(CONFIG)
    installed = _flagged([str(venv / "bin" / "mailwarden")], config, spam + ham)
    checkout = _flagged([sys.executable, "-m", "mailwarden"], config, spam + ham)
    assert installed == checkout
    caught = sum(installed[p.name] for p in spam)
    # Rules and scores alone (no Bayes, no network) catch most spam and flag hardly any ham.
    assert caught >= 0.6 * len(spam), f"{caught} of {len(spam)} spam flagged"
    assert sum(installed[p.name] for p in ham) <= 1
