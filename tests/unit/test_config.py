"""A bad config file names the offending key and line; plugins own and validate their sections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailwarden.config import load_config, parse_config
from mailwarden.errors import ConfigError
from mailwarden.plugins import build_plugin_manager
from mailwarden.serve import default_config_text


@pytest.fixture(scope="module")
def schemas() -> dict:
    return build_plugin_manager().config_schemas()


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("[smtp]\nlisten = '127.0.0.1'\nport = 'twenty-five'\n", "smtp.port", 3, "Expected `int`"),
        ("[smtp]\nport = 70000\n", "smtp.port", 2, "<= 65535"),
        ("# comment\n\n[smtp]\nprot = 25\n", "smtp.prot", 4, "unknown field `prot`"),
        ("[smpt]\nport = 25\n", "smpt", 1, "unknown section"),
        (
            "[[rules]]\nname = 'a'\n\n[[rules]]\nname = 'b'\n"
            "[rules.actions]\ninfected = 'explode'\n",
            "rules[1].actions.infected",
            7,
            "explode",
        ),
        ("[[rules]]\nname = 'a'\n[[rules]]\nname = 'a'\n", "rules[1].name", 4, "duplicate rule"),
        ("[detectors]\ntimeouts = { antivirus = -1.0 }\n", "detectors.timeouts", 2, "> 0.0"),
        ("[gateway]\n\nevent_loop = 'libuv'\n", "gateway.event_loop", 3, "libuv"),
        # Plugin-owned sections are validated by the plugin's own schema.
        ("[antispam]\nspam_score = 'high'\n", "antispam.spam_score", 2, "Expected `float`"),
        ("[antivirus]\nsignatures = '/tmp'\n", "antivirus.signatures", 2, "Expected `array`"),
        ("[sandbox]\nverdict_timeout = 5\n", "sandbox.verdict_timeout", 2, ">= 60"),
        (
            "[reputation]\nconsent = true\n",
            "reputation",
            1,
            "consent needs consent_by and consent_at",
        ),
    ],
)
def test_bad_value_names_key_and_line(
    schemas: dict, text: str, key: str, line: int, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, schemas, source="gw.toml")
    error = info.value
    assert (error.key, error.line) == (key, line)
    assert words in str(error)
    assert str(error).startswith(f"gw.toml:{line}: [{key}]")


def test_toml_syntax_error_names_the_line(schemas: dict) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[smtp]\nport = 25\nlisten = \n", schemas, source="gw.toml")
    assert info.value.line == 3


def test_default_config_file_is_valid_and_matches_embedded_defaults(schemas: dict) -> None:
    from_file = parse_config(default_config_text(), schemas)
    embedded = parse_config("", schemas)
    assert from_file.smtp == embedded.smtp
    assert from_file.rules == embedded.rules
    assert from_file.detectors == embedded.detectors


def test_relative_home_is_relative_to_the_config_file(tmp_path: Path, schemas: dict) -> None:
    path = tmp_path / "etc" / "gw.toml"
    path.parent.mkdir()
    path.write_text("[gateway]\nhome = '../data'\n")
    config = load_config(path, schemas)
    assert config.home == (tmp_path / "etc" / ".." / "data")


def test_config_check_command_reports_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nport = 25\nmax_recipients = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"{bad}:3: [smtp.max_recipients]" in result.stderr

    good = tmp_path / "good.toml"
    good.write_text(default_config_text())
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "config", "check", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{good}: ok"
