"""`mailwarden bench`: the shape of its output (never its speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailwarden.bench.compare import medians_report, this_checkout
from mailwarden.bench.corpus import generate
from mailwarden_native import parse
from tests.conftest import need


def test_the_generated_corpus_is_seeded_and_shaped_like_mail() -> None:
    corpus = generate(200, seed=5)
    assert corpus == generate(200, seed=5) and corpus != generate(200, seed=6)
    parsed = [parse(raw) for raw in corpus]
    with_attachments = [p for p in parsed if any(True for _ in p.attachments())]
    attachment_bytes = sum(
        len(r) for r, p in zip(corpus, parsed, strict=True) if p in with_attachments
    )
    # About a fifth of the messages carry most of the bytes, as on real gateways.
    assert 0.1 < len(with_attachments) / len(corpus) < 0.35
    assert attachment_bytes > 0.6 * sum(map(len, corpus))
    assert any(b"=?utf-8?" in raw[:2000] for raw in corpus)  # encoded subjects
    assert any(b"koi8-r" in raw or b"shift_jis" in raw for raw in corpus)
    assert any(any(part.is_message for part in p.parts) for p in parsed)  # forwarded mail


@pytest.mark.integration
def test_quick_bench_writes_table_json_markdown_and_svg(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "bench", "--quick", "--no-peers", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("parse", "detector.antivirus", "detector.reputation", "act", "whole pipeline"):
        assert line in result.stdout
    assert "python email (parse only)" in result.stdout
    data = json.loads((out / "bench.json").read_text())
    stages = [s["stage"] for s in data["pipeline"]["stages"]]
    assert stages[0] == "parse" and stages[-2:] == ["act", "record"]
    for stage in data["pipeline"]["stages"]:
        assert stage["messages"] == 150
        assert stage["p50_ms"] <= stage["p95_ms"] <= stage["p99_ms"]
    # Reputation runs with consent against a local service, answered from the warmed cache: the
    # warm-up asked the service, the measured runs never did.
    assert data["reputation_lookups"]["warm-up"] > 0
    assert data["reputation_lookups"]["measured"] == 0
    assert [run["workers"] for run in data["smtp"]] == [1]
    assert [run["workers"] for run in data["scan_workers"]] == [1]
    assert data["scan_workers"][0]["messages"] == 150
    assert data["smtp"][0]["messages"] == 150 and data["smtp"][0]["peak_rss_mb"] > 0
    # CPU per message beside the rate, for each way in: what holds up on a shared machine.
    for run in (data["pipeline"]["pipeline"], data["scan_workers"][0], data["smtp"][0]):
        assert run["cpu_ms_per_msg"] > 0
    assert result.stdout.count("CPU ms/msg") == 2 and " ms/msg)" in result.stdout
    markdown = (out / "bench.md").read_text()
    assert "| stage | msg/s |" in markdown and "](bench.svg)" in markdown
    assert "| SMTP workers | msg/s | CPU ms / msg |" in markdown
    svg = (out / "bench.svg").read_text()
    assert svg.startswith("<svg") and "Messages/s by workers" in svg

    # --compare against the run just made names every rate with its change.
    again = subprocess.run(
        [
            *(sys.executable, "-m", "mailwarden", "bench", "--quick", "--no-peers", "--no-smtp"),
            *("--out", str(tmp_path / "second"), "--compare", str(out / "bench.json")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "whole pipeline msg/s" in again.stdout and "%" in again.stdout


def test_the_stage_check_compares_medians_and_names_each_stage_past_the_tolerance() -> None:
    before = {"parse": [100.0, 100.0, 100.0], "act": [50.0, 50.0, 50.0], "gone": [1.0]}
    # One bad round of parse is noise (its median is 99); act's median is 8% lower.
    after = {"parse": [60.0, 99.0, 120.0], "act": [46.0, 40.0, 49.0], "new": [5.0]}
    text, slower = medians_report(before, after, tolerance=5.0)
    assert [c.stage for c in slower] == ["act"]
    assert slower[0].before == 50.0 and slower[0].after == 46.0
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["parse", "act"]
    assert lines[1].endswith("-1.0%") and "slower by more than 5%" in lines[2]
    assert lines[-1] == "FAIL: act slower by more than 5% (median of 3 rounds)"
    text, slower = medians_report(before, after, tolerance=10.0)
    assert (
        slower == []
        and text.splitlines()[-1] == "OK: no stage slower by more than 10% (median of 3 rounds)"
    )


@pytest.mark.integration
def test_compare_with_a_checkout_runs_both_builds_and_reports_every_stage(tmp_path: Path) -> None:
    checkout = this_checkout()
    need(checkout is not None, "mailwarden is installed from a wheel: no checkout to compare with")
    assert checkout is not None
    command = [sys.executable, "-m", "mailwarden", "bench", "--messages", "20"]
    command += ["--signatures", "100", "--rounds", "1"]
    run = subprocess.run(
        [*command, "--compare", str(checkout)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # Two runs of the same build may differ by more than 5% on a busy machine: the exit status
    # follows the verdict line either way.
    assert run.returncode in (0, 1), run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0] == f"baseline: {checkout}"
    stages = [line.split()[0] for line in lines[2:-1]]
    assert stages[0] == "parse" and {"detect", "decide", "act", "record"} <= set(stages)
    assert lines[-1].startswith("OK: " if run.returncode == 0 else "FAIL: ")
    assert lines[-1].endswith("(median of 1 rounds)")
    not_a_checkout = subprocess.run(
        [*command, "--compare", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert not_a_checkout.returncode == 1
    assert f"{tmp_path} is not a mailwarden checkout" in not_a_checkout.stderr
