"""What the pages compute and draw: event filters with paging and export, the dashboard's
trends and top lists as server-side SVG (the pages run no script), human units.

Everything returned is data for an autoescaping template, except the SVG charts, which are
built here from numbers and escaped labels only.
"""

from __future__ import annotations

import csv
import inspect
import io
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

from mailwarden_sdk import ActionKind, AntivirusStatus, MessageEvent, SpamStatus

from ..events import EventQuery

__all__ = [
    "ACTIONS",
    "PERIODS",
    "STATUSES",
    "EventFilter",
    "event_csv",
    "human_bytes",
    "human_seconds",
    "parse_when",
    "rest_text",
    "trends",
]

ACTIONS = tuple(a.value for a in ActionKind)
STATUSES = tuple(
    dict.fromkeys(
        [s.value for s in AntivirusStatus]
        + [s.value for s in SpamStatus]
        + ["suspicious", "malicious", "blocked"]
    )
)
PER_PAGE = 50
# Paging walks the newest matches: past this many, narrow the filter instead.
MAX_OFFSET = 10_000
EXPORT_LIMIT = 10_000

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float | None = None) -> float | None:
    """A moment from a filter field: ``2h``/``7d`` (that long ago), a Unix time, or a local
    date and time as a browser's date-time input sends it (``2026-12-06T14:30``).
    ``None`` for empty; :class:`ValueError` naming the text otherwise."""
    text = text.strip()
    if not text:
        return None
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    for shape in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, shape))
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a time (2h, 7d, 2026-12-06T14:30 or a Unix time)")


@dataclass
class EventFilter:
    """The events page's filters from its query string, with the page asked for."""

    params: Mapping[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        value = str(self.params.get(name) or "").strip()
        return value[:400] or None

    def _when(self, name: str) -> float | None:
        try:
            return parse_when(str(self.params.get(name) or ""))
        except ValueError as exc:
            self.errors[name] = str(exc)
            return None

    def _number(self, name: str, default: int, low: int, high: int) -> int:
        raw = str(self.params.get(name) or "").strip()
        if not raw:
            return default
        if not raw.isdigit():
            self.errors[name] = f"{name} must be a whole number"
            return default
        return max(low, min(int(raw), high))

    def _choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is not None and value not in choices:
            self.errors[name] = f"{name} is one of {', '.join(choices)}"
            return None
        return value

    def query(self, limit: int | None) -> EventQuery:
        """The log query; the filters that could not be read are in :attr:`errors` (and left
        out: a wrong filter never widens silently, the page shows why)."""
        since = self._when("since")
        hours = self.text("hours")
        if since is None and hours:
            try:
                since = time.time() - float(hours) * 3600
            except ValueError:
                self.errors["hours"] = "hours must be a number"
        return EventQuery(
            since=since,
            until=self._when("until"),
            sender=self.text("sender"),
            recipient=self.text("recipient"),
            subject=self.text("subject"),
            action=self._choice("action", ACTIONS),
            status=self._choice("status", STATUSES),
            message_id=self.text("message_id"),
            client_address=self.text("client"),
            limit=limit,
        )

    @property
    def page(self) -> int:
        return self._number("page", 1, 1, MAX_OFFSET // PER_PAGE)

    @property
    def per_page(self) -> int:
        return self._number("per_page", PER_PAGE, 1, 500)

    def link(self, **changes: Any) -> str:
        """This filter's query string with ``changes`` (``None`` removes a key)."""
        from urllib.parse import urlencode

        values = {k: v for k, v in self.params.items() if v not in ("", None)}
        for key, value in changes.items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = str(value)
        return urlencode(values)


def _cell(value: str) -> str:
    # A spreadsheet runs a cell starting with these as a formula (CSV injection): senders and
    # subjects are attacker-chosen text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


EXPORT_COLUMNS = (
    "time",
    "id",
    "mail_from",
    "rcpt_to",
    "client_address",
    "helo",
    "message_id",
    "subject",
    "size",
    "attachments",
    "antivirus",
    "virus_names",
    "spam",
    "spam_score",
    "rule",
    "action",
    "reply",
)


def event_csv(events: Iterable[MessageEvent]) -> str:
    """Events as CSV (one row each, lists joined with spaces, times in UTC ISO 8601)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    for e in events:
        row = [
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.time)),
            e.id,
            e.mail_from,
            " ".join(e.rcpt_to),
            e.client_address or "",
            e.helo or "",
            e.message_id or "",
            e.subject or "",
            str(e.size),
            " ".join(e.attachments),
            e.verdict.antivirus.value,
            " ".join(e.verdict.virus_names),
            e.verdict.spam.value,
            f"{e.verdict.spam_score:.2f}",
            e.rule,
            e.action.value,
            e.reply,
        ]
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


# -- human units -----------------------------------------------------------------------------

_BYTE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def human_bytes(value: float | None) -> str:
    """``1073741824`` → ``1 GiB``; ``None`` → ``""``."""
    if value is None:
        return ""
    size = float(value)
    for unit in _BYTE_UNITS:
        if abs(size) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.3g} {unit}"
        size /= 1024
    return str(value)  # pragma: no cover - the loop always returns


def human_seconds(value: float | None) -> str:
    """``5400`` → ``1.5 h``; ``None`` → ``""``."""
    if value is None:
        return ""
    seconds = float(value)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


_SIZE_NAME = re.compile(r"(bytes|_size)$|^max_size")
_DURATION_NAMES = {"_seconds": 1.0, "_minutes": 60.0, "_hours": 3600.0, "_days": 86400.0}


def field_unit(name: str, kind: str, text: str) -> str:
    """How a number field's value reads in human units (``""`` when it has none)."""
    if kind not in ("int", "float") or not text:
        return ""
    try:
        number = float(text)
    except ValueError:
        return ""
    if _SIZE_NAME.search(name):
        return human_bytes(number)
    for suffix, scale in _DURATION_NAMES.items():
        if name.endswith(suffix):
            return human_seconds(number * scale)
    return ""


_BYTE_INPUT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)


def parse_size(text: str) -> int | None:
    """``10 MB``/``10M``/``10 MiB`` → bytes (powers of 1024, as the page shows them);
    ``None`` when ``text`` is not a size with a unit."""
    found = _BYTE_INPUT.match(text)
    if not found or not (found.group(2) or found.group(3)):
        return None
    power = "kmgt".find(found.group(2).lower()) + 1 if found.group(2) else 0
    return int(float(found.group(1)) * 1024**power)


_ROLE = re.compile(r":[a-z]+:`~?\.?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")


def rest_text(doc: str) -> str:
    """A docstring's reStructuredText as HTML: escaped text in paragraphs, literals in
    ``<code>``, roles reduced to their name (no backticks left)."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], inspect.cleandoc(doc))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    html = []
    for paragraph in paragraphs:
        parts = _LITERAL.split(paragraph)
        html.append(
            "<p>"
            + "".join(
                f"<code>{escape(p)}</code>" if i % 2 else escape(p).replace("`", "")
                for i, p in enumerate(parts)
            )
            + "</p>"
        )
    return "".join(html)


def parse_number(name: str, kind: str, raw: str) -> float | None:
    """A number field's input given with a unit, in the field's own unit: ``10 MiB`` for a
    size in bytes, ``12h`` for a ``*_days`` field (0.5); ``None`` when it has no unit this
    field takes."""
    if kind not in ("int", "float"):
        return None
    if _SIZE_NAME.search(name):
        return parse_size(raw)
    relative = _RELATIVE.match(raw)
    if relative is None:
        return None
    for suffix, scale in _DURATION_NAMES.items():
        if name.endswith(suffix):
            seconds = float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
            return seconds / scale
    return None


# -- dashboard -------------------------------------------------------------------------------

PERIODS: dict[str, tuple[int, int, str]] = {
    # name: (buckets, seconds per bucket, label of one bucket)
    "24h": (24, 3600, "hour"),
    "7d": (28, 6 * 3600, "6 hours"),
    "30d": (30, 86400, "day"),
}


def _is_virus(e: MessageEvent) -> bool:
    return e.verdict.antivirus in (AntivirusStatus.INFECTED, AntivirusStatus.SUSPICIOUS)


def _is_spam(e: MessageEvent) -> bool:
    return e.verdict.spam in (SpamStatus.SPAM, SpamStatus.PROBABLE_SPAM, SpamStatus.BULK)


SERIES: dict[str, Callable[[MessageEvent], bool]] = {"spam": _is_spam, "virus": _is_virus}


def trends(events: list[MessageEvent], period: str, now: float) -> dict[str, Any]:
    """Counts per bucket of ``period`` (by action, spam, virus), the totals and the top
    senders, viruses and rule hits of ``events``."""
    buckets, width, label = PERIODS[period]
    # Buckets end on local hour, 6-hour or day boundaries, so the axis labels are round.
    offset = time.localtime(now).tm_gmtoff
    end = ((now + offset) // width + 1) * width - offset
    start = end - buckets * width
    actions: list[Counter[str]] = [Counter() for _ in range(buckets)]
    kinds: list[Counter[str]] = [Counter() for _ in range(buckets)]
    senders: Counter[str] = Counter()
    viruses: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    for e in events:
        slot = int((e.time - start) // width)
        if not 0 <= slot < buckets:
            continue
        actions[slot][e.action.value] += 1
        for name, test in SERIES.items():
            if test(e):
                kinds[slot][name] += 1
        senders[e.mail_from.lower() or "<>"] += 1
        viruses.update(e.verdict.virus_names)
        rules[e.rule] += 1
        for finding in e.verdict.findings:
            if finding.status == "hit" or finding.score:
                hits[finding.code] += 1
    return {
        "period": period,
        "bucket": label,
        "start": start,
        "width": width,
        "messages": sum(sum(c.values()) for c in actions),
        "actions": dict(sum(actions, Counter())),
        "spam": sum(k["spam"] for k in kinds),
        "virus": sum(k["virus"] for k in kinds),
        "by_bucket": [dict(a) for a in actions],
        "kinds": [dict(k) for k in kinds],
        "top_senders": senders.most_common(10),
        "top_viruses": viruses.most_common(10),
        "top_hits": hits.most_common(10),
        "top_rules": rules.most_common(10),
    }


COLOURS = {
    "deliver": "#4a7bb7",
    "quarantine": "#d9a030",
    "reject": "#c0392b",
    "tempfail": "#8e44ad",
    "discard": "#7f8c8d",
    "spam": "#d9a030",
    "virus": "#c0392b",
}


def _ticks(top: int) -> list[int]:
    if top <= 5:
        return list(range(top + 1))
    step = 1
    while top / step > 5:
        step *= 5 if str(step)[0] == "2" else 2
    return list(range(0, top + 1, step))


def _tick_label(moment: float, period: str) -> str:
    shape = "%H:%M" if period == "24h" else "%a %d" if period == "7d" else "%d %b"
    return time.strftime(shape, time.localtime(moment))


def bar_chart(
    stats: dict[str, Any], rows: list[dict[str, int]], series: tuple[str, ...], title: str
) -> str:
    """Stacked bars of ``rows`` (one dict per bucket) as SVG with both axes labelled; it
    scales to the page width (``viewBox``)."""
    buckets = len(rows)
    width, height, left, right, bottom, top_pad = 480, 200, 34, 22, 30, 10
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    top = max((sum(r.get(s, 0) for s in series) for r in rows), default=0)
    ticks = _ticks(max(top, 1))
    scale = plot_h / max(ticks[-1], 1)
    slot = plot_w / max(buckets, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'class="chart" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for tick in ticks:
        y = top_pad + plot_h - tick * scale
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{tick}</text>'
        )
    for i, row in enumerate(rows):
        y = top_pad + plot_h
        for name in series:
            count = row.get(name, 0)
            if not count:
                continue
            h = count * scale
            y -= h
            moment = _tick_label(stats["start"] + i * stats["width"], stats["period"])
            parts.append(
                f'<rect x="{left + i * slot + 1:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{COLOURS.get(name, "#888")}">'
                f"<title>{escape(moment)}: {count} {escape(name)}</title></rect>"
            )
    base = top_pad + plot_h
    parts.append(
        f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#555"/>'
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{base}" stroke="#555"/>'
    )
    every = max(1, buckets // 4)
    for i in range(0, buckets + 1, every):
        x = left + i * slot
        label = _tick_label(stats["start"] + i * stats["width"], stats["period"])
        parts.append(
            f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#555"/>'
            f'<text x="{x:.1f}" y="{base + 17}" font-size="11" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
