"""`mailwarden rules test` against a real slapd: the sample in docs/rules.md is what it prints."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailwarden.cli import cli
from tests.conftest import ROOT
from tests.services.slapd import Slapd, directory_section, running_slapd

pytestmark = pytest.mark.integration

DOC = ROOT / "docs" / "rules.md"
SAMPLE = ROOT / "tests" / "data" / "rules-sample.eml"


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        yield server


def _block(marker: str) -> str:
    """The fenced block that follows ``<!-- marker -->`` in docs/rules.md."""
    text = DOC.read_text()
    match = re.search(rf"<!-- {marker} -->\n```[a-z]*\n(.*?)```\n", text, re.S)
    assert match, f"docs/rules.md has no block after <!-- {marker} -->"
    return match[1]


def _run_sample(slapd: Slapd, tmp_path: Path) -> tuple[str, str]:
    config = tmp_path / "mailwarden.toml"
    config.write_text(_block("rules-sample-config") + "\n" + directory_section(slapd))
    message = tmp_path / "rules-sample.eml"
    message.write_bytes(SAMPLE.read_bytes())
    args = [
        "--from",
        "mallory@offers.example.com",
        "--to",
        "a.smith@example.test",
        "--to",
        "carol@example.test",
        "--to",
        "dave@elsewhere.test",
        "--client",
        "192.0.2.10",
        "rules-sample.eml",
    ]
    result = CliRunner().invoke(
        cli, ["rules", "test", "--config", str(config), *args[:-1], str(message)]
    )
    assert result.exit_code == 0, result.output
    return "$ mailwarden rules test " + " ".join(args) + "\n", result.output


def test_docs_show_what_rules_test_prints(slapd: Slapd, tmp_path: Path) -> None:
    command, output = _run_sample(slapd, tmp_path)
    assert _block("rules-sample-output") == command + output, (
        "docs/rules.md shows stale `mailwarden rules test` output; it prints:\n" + output
    )


def test_rules_test_explains_the_nested_group_match_and_the_action(
    slapd: Slapd, tmp_path: Path
) -> None:
    _command, output = _run_sample(slapd, tmp_path)
    sections = output.split("to <")
    alice = next(s for s in sections if s.startswith("a.smith@example.test>"))
    # a.smith@ is Alice's secondary address; Alice is in Sales, Sales in Staff.
    assert "staff-inbound (sender matched '*', recipient matched 'group:Staff'" in alice
    assert "action     quarantine (spam)" in alice
    carol = next(s for s in sections if s.startswith("carol@example.test>"))
    assert "trusted-relays" in carol and "client in 192.0.2.0/24" in carol
    assert "detectors  antivirus\n" in carol and "action     deliver (clean)" in carol
    dave = next(s for s in sections if s.startswith("dave@elsewhere.test>"))
    assert "action     reject (spam): 550" in dave
