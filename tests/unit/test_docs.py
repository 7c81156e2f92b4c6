"""The docs stay true: the generated reference is current and the site builds without warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mailwarden.config_reference import render_reference
from mailwarden.plugins import build_plugin_manager
from tests.conftest import ROOT, need


def test_configuration_reference_is_current() -> None:
    generated = render_reference(build_plugin_manager().config_schemas())
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == generated, (
        "docs/configuration.md is stale: run `mailwarden config reference > docs/configuration.md`"
    )


def test_reference_documents_every_builtin_section() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for section in ("[smtp]", "[[rules]]", "[[rules]].actions", "[antivirus]", "[antispam]"):
        assert f"## `{section}`" in text


def test_docs_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    need(mkdocs.exists() or shutil.which("mkdocs") is not None, "mkdocs is not installed")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "hooks" / "index.html").is_file()


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make serve" in readme and "make test" in readme
