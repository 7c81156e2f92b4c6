"""The template plugin in docs/examples installs like any third-party plugin and passes tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, make_message

TEMPLATE = ROOT / "docs" / "examples" / "mailwarden-example"


def test_template_plugin_installs_scans_and_passes_its_own_tests(tmp_path: Path) -> None:
    site = tmp_path / "site"
    # --target keeps the test environment itself untouched: only runs that put `site` on
    # PYTHONPATH see the plugin, exactly as if it were pip-installed there.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(TEMPLATE),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}

    listed = subprocess.run(
        [sys.executable, "-m", "mailwarden", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "example      mailwarden-example 0.1.0" in listed.stdout

    message = tmp_path / "m.eml"
    message.write_bytes(make_message(attachment=b"MZ\x90\x00", filename="invoice.pdf.exe"))
    scanned = subprocess.run(
        [sys.executable, "-m", "mailwarden", "scan", str(message)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert "EXAMPLE_RISKY_ATTACHMENT" in scanned.stdout

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout
