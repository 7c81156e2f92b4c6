"""What the antispam checks read out of a message: texts, URLs, links with their text.

URL extraction and HTML-to-text come from the native core through the SDK's ``Part``
(``urls()``, ``visible_text()``); this module is the one place that asks, so a change of that
interface touches only here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mailwarden_sdk import ParsedMessage, paragraph_lines

from .sa_evals import EvalInput

__all__ = ["Link", "body_text", "links", "message_facts", "message_urls", "rawbody_text"]

_ANCHOR = re.compile(
    rb"<a\s[^>]*?href\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))[^>]*>(.*?)</a\s*>",
    re.IGNORECASE | re.DOTALL,
)
_TAG = re.compile(r"<[^>]*>")
# b"<img" in data.lower(): ASCII letters either case (a bytes pattern folds no others), no copy.
_IMAGE = re.compile(rb"<img", re.IGNORECASE)
_MAX_TEXT = 2_000_000  # characters of text per message the rules look at


@dataclass(frozen=True, slots=True)
class Link:
    """An HTML link: where it goes and the text the reader sees."""

    href: str
    text: str


def message_urls(message: ParsedMessage, limit: int = 500) -> list[str]:
    """Normalised URLs of every text part, first ``limit`` distinct ones."""
    seen: dict[str, None] = {}
    for part in message.leaves():
        for url in part.urls():
            seen.setdefault(url.url, None)
            if len(seen) >= limit:
                return list(seen)
    return list(seen)


def body_text(message: ParsedMessage) -> str:
    """SpamAssassin's "body": the subject, then the visible text of the text parts, one
    paragraph per line (lines inside a paragraph joined), so rules see sentences whole."""
    chunks = [message.decoded_header("subject") or ""]
    for part in message.leaves():
        if part.content_type in ("text/plain", "text/html") and part.disposition != "attachment":
            # Its paragraphs (split at blank lines) one a line, whitespace runs one space.
            lines = paragraph_lines(part.visible_text())
            if lines:
                chunks.append(lines)
    return "\n".join(chunks)[:_MAX_TEXT]


def rawbody_text(message: ParsedMessage) -> str:
    """SpamAssassin's "rawbody": the decoded text parts, HTML markup included."""
    texts = [p.text() for p in message.leaves() if p.content_type.startswith("text/")]
    return "\n".join(texts)[:_MAX_TEXT]


def links(message: ParsedMessage, limit: int = 200) -> list[Link]:
    """``<a href>`` links of the HTML parts with their visible text."""
    out: list[Link] = []
    for part in message.leaves():
        if part.content_type != "text/html":
            continue
        source = part.text().encode("utf-8", "replace")
        for m in _ANCHOR.finditer(source):
            href = (m.group(1) or m.group(2) or m.group(3) or b"").decode("utf-8", "replace")
            text = html.unescape(_TAG.sub(" ", m.group(4).decode("utf-8", "replace")))
            out.append(Link(html.unescape(href).strip(), " ".join(text.split())))
            if len(out) >= limit:
                return out
    return out


def message_facts(
    message: ParsedMessage, headers: Mapping[str, list[str]], received_times: list[float]
) -> EvalInput:
    """What SpamAssassin's eval tests read: alternatives' words, the HTML text and images."""
    alternatives = []
    for part in message.parts:
        if part.content_type != "multipart/alternative":
            continue
        children = [message.parts[i] for i in part.children if message.parts[i].is_leaf]
        words: dict[str, list[str]] = {"text/plain": [], "text/html": []}
        for child in children:
            # extend: a C loop over the words, not a comprehension step per word.
            found = words.get(child.content_type)
            if found is not None:
                found.extend(_words(child.visible_text()))
        if words["text/plain"] or words["text/html"]:
            alternatives.append((words["text/plain"], words["text/html"]))
    html_parts = [p for p in message.leaves() if p.content_type == "text/html"]
    return EvalInput(
        headers=headers,
        received_times=received_times,
        alternatives=alternatives,
        html_text_length=sum(len(p.visible_text()) for p in html_parts),
        html_has_image=any(_IMAGE.search(p.decoded(), 0, _MAX_TEXT) for p in html_parts),
    )


def _words(text: str) -> list[str]:
    return text[:_MAX_TEXT].lower().split()
