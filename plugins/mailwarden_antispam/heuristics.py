"""Heuristic checks: phishing links, lookalike and mixed-script domains, missing or forged
headers, hidden text in HTML-only mail, bulk-mail markers.

Each returns ``(code, details)`` pairs; scores come from the config (``[antispam.scores]``),
so an admin can tune them without touching code.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable

from mailwarden_sdk import ParsedMessage

from .auth import org_domain
from .content import Link

__all__ = ["bulk_markers", "header_checks", "hidden_text", "link_checks"]

_DOMAIN_IN_TEXT = re.compile(
    r"(?:https?://)?((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})\b", re.IGNORECASE
)
# Characters that look like Latin letters (a small part of Unicode's confusables.txt: the
# Cyrillic and Greek letters used in real lookalike domains).
_CONFUSABLE = str.maketrans(
    "аеорсухіјѕԁһӏαοτνρΑΒΕΗΙΚΜΝΟΡΤΧΥΖ",
    "aeopcyxijsdhlaotvpabehikmnoptxyz",
)
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01](?:px|pt)?\s*[;\"']"
    r"|color\s*:\s*(?:#fff(?:fff)?|white)\b[^>]*background(?:-color)?\s*:\s*(?:#fff(?:fff)?|white)",
    re.IGNORECASE,
)

_MESSAGE_ID = re.compile(r"\s*<[^<>@\s]+@[^<>@\s]+>\s*")


def _host(url: str) -> str:
    try:
        host = urllib.parse.urlsplit(url if "://" in url else "http://" + url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.isdigit() and len(host) > 6  # http://3232235777/ (a decimal IPv4)
    return True


def _scripts(label: str) -> set[str]:
    scripts = set()
    for ch in label:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            scripts.add(name.split(" ", 1)[0])
    return scripts


def _unicode_host(host: str) -> str:
    try:
        return host.encode("ascii").decode("idna")
    except UnicodeError:
        return host


def link_checks(
    links: Iterable[Link], urls: Iterable[str], protected: Iterable[str]
) -> list[tuple[str, dict[str, str]]]:
    """Phishing signs in links: text naming another domain than the href, IP-literal links,
    mixed-script hosts, hosts that read like a protected domain."""
    found: list[tuple[str, dict[str, str]]] = []
    seen: set[str] = set()
    protected_set = {p.lower() for p in protected}

    def add(code: str, **details: str) -> None:
        if code not in seen:
            seen.add(code)
            found.append((code, details))

    for link in links:
        href_host = _host(link.href)
        if not href_host or link.href.lower().startswith(("mailto:", "tel:")):
            continue
        m = _DOMAIN_IN_TEXT.search(link.text)
        if m and "." in m.group(1):
            shown = m.group(1).lower()
            if org_domain(shown) != org_domain(href_host) and not _is_ip(href_host):
                add("PHISH_LINK_MISMATCH", shown=shown, target=href_host)
    for url in urls:
        host = _host(url)
        if not host:
            continue
        if _is_ip(host):
            add("PHISH_IP_LINK", host=host)
            continue
        readable = _unicode_host(host)
        for label in readable.split("."):
            if len(_scripts(label)) > 1:
                add("PHISH_MIXED_SCRIPT", host=host)
        skeleton = readable.translate(_CONFUSABLE)
        if readable != host and org_domain(skeleton) in protected_set:
            add("PHISH_LOOKALIKE_DOMAIN", host=host, looks_like=org_domain(skeleton))
    return found


def header_checks(message: ParsedMessage) -> list[tuple[str, dict[str, str]]]:
    """Missing mandatory fields and Message-IDs or Dates that cannot be real."""
    found: list[tuple[str, dict[str, str]]] = []
    if message.header("from") is None:
        found.append(("MISSING_FROM", {}))
    if message.header("date") is None:
        found.append(("MISSING_DATE", {}))
    mid = message.header("message-id")
    if mid is None:
        found.append(("MISSING_MESSAGE_ID", {}))
    elif not _MESSAGE_ID.fullmatch(mid):
        found.append(("INVALID_MESSAGE_ID", {}))
    if len(message.header_all("from")) > 1:
        found.append(("MULTIPLE_FROM", {}))
    return found


def hidden_text(message: ParsedMessage) -> list[tuple[str, dict[str, str]]]:
    """HTML-only mail (no plain-text alternative), and text hidden from the reader."""
    leaves = [p for p in message.leaves() if p.content_type.startswith("text/")]
    html_parts = [p for p in leaves if p.content_type == "text/html"]
    found: list[tuple[str, dict[str, str]]] = []
    if html_parts and not any(p.content_type == "text/plain" for p in leaves):
        found.append(("HTML_ONLY", {}))
        for part in html_parts:
            if _HIDDEN_STYLE.search(part.text()):
                found.append(("HTML_HIDDEN_TEXT", {}))
                break
    return found


def bulk_markers(message: ParsedMessage) -> list[tuple[str, dict[str, str]]]:
    """Mailing-list and bulk-sender markers (these decide the bulk status, not spam)."""
    precedence = (message.header("precedence") or "").strip().lower()
    marks = [
        name
        for name, present in (
            ("list-unsubscribe", message.header("list-unsubscribe") is not None),
            ("precedence", precedence in ("bulk", "list", "junk")),
            ("list-id", message.header("list-id") is not None),
            ("feedback-id", message.header("feedback-id") is not None),
        )
        if present
    ]
    if len(marks) >= 2:
        return [("BULK_MAIL", {"markers": ",".join(marks)})]
    return []
