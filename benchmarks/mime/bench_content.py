"""HTML-to-text and URL extraction: mailwarden_native's C vs a Python baseline, same run.

Usage: python benchmarks/mime/bench_content.py [--seconds S]
Inputs are every text/html and text/plain leaf of the corpus ($MAILWARDEN_CORPUS, default
../shared/corpus beside the repository), decoded to text once up front. Baselines are what a
Python detector would write without the native core: ``html.parser.HTMLParser`` collecting
the data outside script/style (character references converted), and a regex for
``scheme://`` / ``www.`` URLs plus ``href``/``src`` attributes. Prints MB/s for each and
the ratio. The baselines do less than the C code (no obfuscation handling, no IDNA, no
normalisation), so the ratios understate the gap.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from mailwarden_native import extract_urls, html_to_text, parse

ROOT = Path(__file__).resolve().parents[2]


def load_parts() -> tuple[list[str], list[str]]:
    base = Path(os.environ.get("MAILWARDEN_CORPUS") or ROOT.parent / "shared" / "corpus")
    html: list[str] = []
    plain: list[str] = []
    for sub in ("mime", "mime-expected", "spam"):
        for f in sorted((base / sub).rglob("*")):
            if not f.is_file() or f.suffix in {".json", ".csv", ".tsv", ".md"}:
                continue
            for p in parse(f.read_bytes()).leaves():
                if p.content_type == "text/html":
                    html.append(p.text())
                elif p.content_type == "text/plain":
                    plain.append(p.text())
    if not html:
        sys.exit(f"no HTML parts under {base} (set MAILWARDEN_CORPUS)")
    return html, plain


class _TextParser(HTMLParser):
    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "title"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title") and self.skip:
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def py_html_to_text(html: str) -> str:
    p = _TextParser()
    p.feed(html)
    p.close()
    return re.sub(r"[ \t\r\f\v]+", " ", "".join(p.out)).strip()


_URL = re.compile(r"""(?:(?:https?|ftp)://|www\.)[^\s<>"']+""", re.I)
_ATTR = re.compile(r"""(?:href|src|action)\s*=\s*["']?([^"'\s>]+)""", re.I)


def py_urls(text: str, html: bool) -> list[str]:
    found = _ATTR.findall(text) if html else []
    return found + _URL.findall(text)


def rate(fn: Callable[[str], object], docs: list[str], seconds: float) -> float:
    total = sum(len(d.encode()) for d in docs)
    done = 0
    start = time.perf_counter()
    while True:
        for d in docs:
            fn(d)
        done += total
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = ap.parse_args()
    html, plain = load_parts()
    mb_html = sum(len(d.encode()) for d in html) / 1e6
    mb_plain = sum(len(d.encode()) for d in plain) / 1e6
    print(f"corpus: {len(html)} HTML parts ({mb_html:.2f} MB), "
          f"{len(plain)} plain parts ({mb_plain:.2f} MB)")  # fmt: skip
    rows = [
        ("HTML to text", lambda d: html_to_text(d), py_html_to_text, html, "html.parser"),
        ("URLs from HTML", lambda d: extract_urls(d, html=True),
         lambda d: py_urls(d, True), html, "regex"),
        ("URLs from text", lambda d: extract_urls(d), lambda d: py_urls(d, False), plain, "regex"),
    ]  # fmt: skip
    print(f"{'task':<18}{'native MB/s':>13}{'baseline':>13}{'baseline MB/s':>15}{'ratio':>9}")
    for name, native, base, docs, base_name in rows:
        n = rate(native, docs, args.seconds)
        b = rate(base, docs, args.seconds)
        print(f"{name:<18}{n:>13.1f}{base_name:>13}{b:>15.1f}{n / b:>8.1f}x")


if __name__ == "__main__":
    main()
