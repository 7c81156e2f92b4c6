"""`mailwarden bench`: the shape of its output (never its speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailwarden.bench.corpus import generate
from mailwarden_native import parse


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
