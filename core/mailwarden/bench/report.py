"""Results of ``mailwarden bench``: terminal table, JSON, Markdown, an SVG chart, comparisons.

The chart is a few dozen lines of SVG written here rather than a plotting library: two bar
charts do not justify numpy and matplotlib in every install of a mail gateway.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

__all__ = ["compare", "markdown", "svg", "table", "write_all"]


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(result: dict[str, Any]) -> str:
    """The terminal table: stages, peers, SMTP per worker count, each with its ratio."""
    lines = [
        f"mailwarden bench  {result['corpus']['messages']} messages, "
        f"{result['corpus']['megabytes']} MB ({result['corpus']['source']}), "
        f"{result['machine']['cores']} cores",
        f"{result['signatures']} antivirus signatures; {_reputation_note(result)}",
        "",
        f"{'stage':<28}{'msg/s':>10}{'MB/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}",
    ]
    for s in result["pipeline"]["stages"]:
        lines.append(
            f"{s['stage']:<28}{s['msgs_per_s']:>10.1f}{s['mb_per_s']:>10.2f}"
            f"{s['p50_ms']:>10.3f}{s['p95_ms']:>10.3f}{s['p99_ms']:>10.3f}"
        )
    whole, scan = result["pipeline"]["pipeline"], result["pipeline"]["scan"]
    lines += [
        f"{'scan only (parse..decide)':<28}{scan['msgs_per_s']:>10.1f}{scan['mb_per_s']:>10.2f}",
        f"{'whole pipeline':<28}{whole['msgs_per_s']:>10.1f}{whole['mb_per_s']:>10.2f}"
        f"   cpu {whole['cpu_seconds']} s ({_cpu_ms(whole)} ms/msg),"
        f" peak rss {whole['peak_rss_mb']} MB",
        "",
        "peers (same messages, same run)",
    ]
    for peer in result["peers"]:
        lines.append(
            f"  {peer['name']:<34}{peer['msgs_per_s']:>10.1f} msg/s   "
            f"ours / theirs = {peer['ratio']}"
            + (f"   ({peer['note']})" if peer.get("note") else "")
        )
    if result.get("scan_workers"):
        base = result["scan_workers"][0]["msgs_per_s"]
        lines += [
            "",
            f"{'scan workers':<28}{'msg/s':>10}{'MB/s':>10}{'vs 1':>10}{'CPU ms/msg':>12}",
        ]
        for run in result["scan_workers"]:
            lines.append(
                f"{run['workers']:<28}{run['msgs_per_s']:>10.1f}{run['mb_per_s']:>10.2f}"
                f"{_ratio(run['msgs_per_s'], base):>10}{_cpu_ms(run):>12}"
            )
    if result["smtp"]:
        base = result["smtp"][0]["msgs_per_s"]
        lines += [
            "",
            f"{'smtp ingress workers':<28}{'msg/s':>10}{'MB/s':>10}{'vs 1':>10}{'CPU ms/msg':>12}",
        ]
        for run in result["smtp"]:
            lines.append(
                f"{run['workers']:<28}{run['msgs_per_s']:>10.1f}{run['mb_per_s']:>10.2f}"
                f"{_ratio(run['msgs_per_s'], base):>10}{_cpu_ms(run):>12}"
            )
    return "\n".join(lines)


def _cpu_ms(run: dict[str, Any]) -> str:
    # Results saved before the figure existed (``--compare`` reads old JSON) have none.
    value = run.get("cpu_ms_per_msg")
    return "-" if value is None else f"{value:.2f}"


def _reputation_note(result: dict[str, Any]) -> str:
    lookups = result.get("reputation_lookups") or {}
    return (
        f"reputation with consent against a local service: {lookups.get('warm-up', 0)} lookups "
        f"while warming its cache, {lookups.get('measured', 0)} while measuring"
    )


def markdown(result: dict[str, Any]) -> str:
    """The same figures as Markdown tables, for ``benchmarks/README.md`` and reports."""
    corpus, machine = result["corpus"], result["machine"]
    out = [
        f"Corpus: {corpus['messages']} messages, {corpus['megabytes']} MB ({corpus['source']}); "
        f"{machine['cores']} cores; command: `{result['command']}`",
        "",
        f"{result['signatures']} antivirus signatures; {_reputation_note(result)}.",
        "",
        "| stage | msg/s | MB/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in result["pipeline"]["stages"]:
        out.append(
            f"| {s['stage']} | {s['msgs_per_s']:.1f} | {s['mb_per_s']:.2f} | {s['p50_ms']:.3f} "
            f"| {s['p95_ms']:.3f} | {s['p99_ms']:.3f} |"
        )
    whole, scan = result["pipeline"]["pipeline"], result["pipeline"]["scan"]
    out += [
        f"| scan only (parse..decide) | {scan['msgs_per_s']:.1f} | {scan['mb_per_s']:.2f} | | | |",
        f"| **whole pipeline** | **{whole['msgs_per_s']:.1f}** | {whole['mb_per_s']:.2f} | | | |",
        f"| whole pipeline, CPU ms per message | {_cpu_ms(whole)} | | | | |",
        "",
        "| peer (same messages) | their msg/s | ours / theirs |",
        "|---|---:|---:|",
    ]
    out += [f"| {p['name']} | {p['msgs_per_s']:.1f} | {p['ratio']} |" for p in result["peers"]]
    if result.get("scan_workers"):
        base = result["scan_workers"][0]["msgs_per_s"]
        out += [
            "",
            "| scan workers | msg/s | CPU ms / msg | MB/s | vs 1 worker | CPU s / worker "
            "| peak RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['workers']} | {r['msgs_per_s']:.1f} | {_cpu_ms(r)} | {r['mb_per_s']:.2f} "
            f"| {_ratio(r['msgs_per_s'], base)} | {r['cpu_seconds_per_worker']} "
            f"| {r['peak_rss_mb']} |"
            for r in result["scan_workers"]
        ]
    if result["smtp"]:
        base = result["smtp"][0]["msgs_per_s"]
        out += [
            "",
            "| SMTP workers | msg/s | CPU ms / msg | MB/s | vs 1 worker | CPU s / worker "
            "| peak RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['workers']} | {r['msgs_per_s']:.1f} | {_cpu_ms(r)} | {r['mb_per_s']:.2f} "
            f"| {_ratio(r['msgs_per_s'], base)} | {r['cpu_seconds_per_worker']} "
            f"| {r['peak_rss_mb']} |"
            for r in result["smtp"]
        ]
    return "\n".join(out) + "\n"


def _bars(
    title: str, items: list[tuple[str, float]], unit: str, x: int, y: int, width: int
) -> list[str]:
    top = max((v for _, v in items), default=0.0) or 1.0
    digits = 3 if unit == "ms" else 0
    out = [f'<text x="{x}" y="{y}" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        row = y + 14 + i * 22
        length = max(1.0, (width - 320) * value / top)
        out += [
            f'<text x="{x}" y="{row + 12}">{html.escape(label)}</text>',
            f'<rect x="{x + 170}" y="{row}" width="{length:.1f}" height="16" fill="#4a7bb7"/>',
            f'<text x="{x + 176 + length:.1f}" y="{row + 12}">{value:.{digits}f} {unit}</text>',
        ]
    return out


def svg(result: dict[str, Any]) -> str:
    """Messages/s against SMTP workers, and the per-stage p50 latency, as one SVG."""
    width = 760
    workers = [
        (f"scan, {r['workers']} worker(s)", float(r["msgs_per_s"]))
        for r in result.get("scan_workers", [])
    ] + [(f"smtp, {r['workers']} worker(s)", float(r["msgs_per_s"])) for r in result["smtp"]]
    stages = [(s["stage"], float(s["p50_ms"])) for s in result["pipeline"]["stages"]]
    top = 30
    parts = _bars("Messages/s by workers (scan; SMTP ingress)", workers, "msg/s", 10, top, width)
    top += 40 + 22 * len(workers)
    parts += _bars("Pipeline stages: p50 latency", stages, "ms", 10, top, width)
    height = top + 30 + 22 * len(stages)
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n'
    )


def _flat(result: dict[str, Any]) -> dict[str, float]:
    flat = {f"stage {s['stage']} msg/s": s["msgs_per_s"] for s in result["pipeline"]["stages"]}
    flat["scan only msg/s"] = result["pipeline"]["scan"]["msgs_per_s"]
    flat["whole pipeline msg/s"] = result["pipeline"]["pipeline"]["msgs_per_s"]
    flat.update(
        {
            f"scan {r['workers']} workers msg/s": r["msgs_per_s"]
            for r in result.get("scan_workers", [])
        }
    )
    flat.update({f"smtp {r['workers']} workers msg/s": r["msgs_per_s"] for r in result["smtp"]})
    return flat


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The change of every rate present in both results, as a table."""
    before, after = _flat(old), _flat(new)
    lines = [f"{'figure':<44}{'old':>10}{'new':>10}{'change':>10}"]
    for key in after:
        if before.get(key):
            change = (after[key] / before[key] - 1.0) * 100.0
            lines.append(f"{key:<44}{before[key]:>10.1f}{after[key]:>10.1f}{change:>+9.1f}%")
    return "\n".join(lines)


def write_all(result: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and ``bench.svg`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": directory / "bench.json",
        "markdown": directory / "bench.md",
        "svg": directory / "bench.svg",
    }
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(markdown(result) + "\n![per-stage chart](bench.svg)\n")
    paths["svg"].write_text(svg(result))
    return paths
