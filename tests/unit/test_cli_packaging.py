"""What an installer gets beside the package: systemd units, Postfix snippets, the Makefile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, need
from tests.services import ensure_packages

UNITS = ROOT / "contrib" / "systemd"


def _systemd_analyze() -> str:
    if shutil.which("systemd-analyze") is None and os.geteuid() == 0:
        ensure_packages("systemd")
    found = shutil.which("systemd-analyze")
    need(found is not None, "systemd-analyze (Debian package systemd) is not installed")
    assert found is not None
    return found


def test_systemd_units_verify_clean(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    names = sorted(p.name for p in UNITS.iterdir())
    assert names == [
        "mailwarden-retention.service",
        "mailwarden-retention.timer",
        "mailwarden-sigs-update.service",
        "mailwarden-sigs-update.timer",
        "mailwarden.service",
    ]
    # The one line an installer adapts: where pip put the script (here, this interpreter's).
    script = Path(sys.executable).parent / "mailwarden"
    assert script.is_file()
    for name in names:
        text = (UNITS / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/mailwarden", str(script)))
    result = subprocess.run(
        [analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    # verify prints parse warnings (an unknown key, a bad value) and still exits 0: both count.
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_every_unit_command_is_a_mailwarden_command() -> None:
    from click.testing import CliRunner

    from mailwarden.cli import cli

    for unit in UNITS.glob("*.service"):
        (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
        args = line.split()[1:]
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, (unit.name, result.output)


def _dry_run(target: str, tmp_path: Path) -> str:
    """``make -n target`` in a copy of the checkout's Makefile inputs with no .venv."""
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "native", tmp_path / "native", ignore=shutil.ignore_patterns("*.so"))
    need(shutil.which("make") is not None, "make is not installed")
    result = subprocess.run(
        ["make", "-n", target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("target", ["serve", "test"])
def test_make_serve_installs_the_runtime_only_and_make_test_the_extras(
    target: str, tmp_path: Path
) -> None:
    commands = _dry_run(target, tmp_path)
    assert "python3 -m venv .venv" in commands
    if target == "serve":
        assert "pip install -q -e ." in commands and "[test]" not in commands
        assert 'MAILWARDEN_HOME="${MAILWARDEN_HOME:-' in commands
    else:
        assert "pip install -q -e '.[test]'" in commands and "pytest" in commands


def test_docs_site_has_a_root_page_leading_to_the_install_page(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    need(mkdocs.exists(), "mkdocs is not installed")
    subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=120,
    )
    root = (tmp_path / "site" / "index.html").read_text()
    assert 'href="install/"' in root and 'href="operations/"' in root
    install = (tmp_path / "site" / "install" / "index.html").read_text()
    for words in ("pip install", "make serve", "systemd-analyze verify", "main.cf-milter"):
        assert words in install
