"""The ``mailwarden`` command line as an admin uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import EICAR, ROOT, make_message
from tests.thirdparty.detectors import MARKER

BUILTINS = {"antivirus", "antispam", "reputation", "sandbox"}


def mailwarden(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=60,
    )


def test_plugins_lists_the_four_builtins_from_entry_points() -> None:
    result = mailwarden("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert BUILTINS <= set(listed)
    for name in BUILTINS:
        assert listed[name]["distribution"] == "mailwarden"
        assert "mailwarden_config_schema" in listed[name]["hooks"]
    assert "mailwarden_scan" in listed["antivirus"]["hooks"]


def test_installed_third_party_plugin_is_listed_and_scans(
    thirdparty_dist: Path, tmp_path: Path
) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(thirdparty_dist), str(ROOT)])}
    listed = {p["name"]: p for p in json.loads(mailwarden("plugins", "--json", env=env).stdout)}
    assert listed["marker"]["distribution"] == "acme-marker"
    assert listed["marker"]["version"] == "1.2.3"

    message = tmp_path / "m.eml"
    message.write_bytes(make_message(body=MARKER.decode() + "\n"))
    result = mailwarden("scan", "--json", str(message), env=env)
    record = json.loads(result.stdout)
    assert [f["code"] for f in record["verdict"]["findings"]] == ["TEST_MARKER"]

    result = mailwarden("marker-info", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"marker={MARKER.decode()}"
    assert "marker-info" in mailwarden("--help", env=env).stdout


def test_scan_exit_status_and_output(tmp_path: Path) -> None:
    clean = tmp_path / "clean.eml"
    clean.write_bytes(make_message())
    infected = tmp_path / "infected.eml"
    infected.write_bytes(make_message(attachment=EICAR, filename="eicar.com"))

    result = mailwarden("scan", str(clean))
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout

    result = mailwarden("scan", str(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FILE", "ANTIVIRUS", "SPAM", "ACTION", "FINDINGS"]
    row = next(line for line in lines if "infected.eml" in line)
    assert "infected" in row and "reject" in row and "Eicar-Test-Signature" in row

    result = mailwarden("scan", "--json", str(tmp_path))
    records = {Path(r["file"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["infected.eml"]["verdict"]["antivirus"] == "infected"
    assert records["clean.eml"]["action"] == "deliver"

    result = mailwarden("scan", str(tmp_path / "missing.eml"))
    assert result.returncode == 2
    assert "error" in result.stdout


def test_scan_reads_the_corpus_eicar_samples(corpus: Path) -> None:
    eicar = corpus / "av" / "eicar"
    result = mailwarden(
        "scan", "--json", str(eicar / "eicar-attachment.eml"), str(eicar / "eicar.com")
    )
    assert result.returncode == 1
    for line in result.stdout.splitlines():
        assert json.loads(line)["verdict"]["virus_names"] == ["Eicar-Test-Signature"]


def test_version_and_init(tmp_path: Path) -> None:
    result = mailwarden("version")
    assert result.returncode == 0 and result.stdout.startswith("mailwarden ")
    result = mailwarden("init", "--home", str(tmp_path / "home"))
    assert (tmp_path / "home" / "mailwarden.toml").is_file()
    assert mailwarden("config", "check", str(tmp_path / "home" / "mailwarden.toml")).returncode == 0
