"""SpamAssassin's ``eval:`` tests that stock rules lean on most, in Python, and its relay
pseudo-headers.

SpamAssassin computes some facts in Perl (the ``eval:`` rules) and exposes others as
pseudo-headers (``X-Spam-Relays-External`` and friends) that hundreds of plain header rules
match against. A stock rule file loaded here keeps its names and scores; what this module adds is
the Perl half: the relays parsed out of ``Received:`` in SpamAssassin's layout, and the eval
functions in :data:`EVALS`. An eval rule whose function is not here stays skipped and counted,
as before.

The relay parser covers the layouts of Postfix, Sendmail, Exim, qmail and Microsoft's
``Received:`` lines (SpamAssassin's Received.pm knows many more); trust is inferred as
SpamAssassin does without ``trusted_networks``: relays on private or loopback addresses at the
top are trusted, everything from the first public address on is untrusted and external.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["EVALS", "EvalInput", "Relay", "bind", "parse_received", "relay_headers"]

_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]|\((\d{1,3}(?:\.\d{1,3}){3})\)")
_HELO_EXIM = re.compile(r"\bhelo=([^\s()\]]+)", re.IGNORECASE)
_HELO_QMAIL = re.compile(r"\(HELO ([^)\s]+)\)", re.IGNORECASE)
_RDNS_BEFORE_IP = re.compile(r"\(([^\s()\[\]]+)\s+\[(?:IPv6:)?[0-9A-Fa-f:.]+\]")
_BY = re.compile(r"\bby\s+([^\s;()]+)", re.IGNORECASE)
_ID = re.compile(r"\bid\s+<?([^\s;>]+)", re.IGNORECASE)
_ENVFROM = re.compile(r"envelope-from\s+<?([^\s>;)]+)", re.IGNORECASE)
_IDENT = re.compile(r"\(([^\s()@]+)@[^\s()]+\s+\[", re.IGNORECASE)
_WITH = re.compile(r"\bwith\s+([A-Za-z0-9_]+)", re.IGNORECASE)
_AUTH_SENDER = re.compile(r"authenticated sender|\(authenticated\b|auth=", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Relay:
    """One hop in SpamAssassin's terms."""

    ip: str
    rdns: str = ""
    helo: str = ""
    by: str = ""
    ident: str = ""
    envfrom: str = ""
    id: str = ""
    auth: str = ""

    def layout(self, internal: bool) -> str:
        """The relay as SpamAssassin writes it into its ``X-Spam-Relays-*`` pseudo-headers."""
        return (
            f"[ ip={self.ip} rdns={self.rdns} helo={self.helo} by={self.by} ident={self.ident} "
            f"envfrom={self.envfrom} intl={int(internal)} id={self.id} auth={self.auth} msa=0 ]"
        )


def _parse_one(value: str) -> Relay | None:
    text = " ".join(value.split())
    if not text.lower().startswith("from "):
        return None  # "by host with local": a hand-off inside one machine, not a relay
    head = re.split(r"\bby\s", text, maxsplit=1, flags=re.IGNORECASE)[0]
    found = _IP.search(head)
    if found is None:
        return None
    ip = found.group(1) or found.group(2)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return None
    first = head[5:].split(None, 1)[0] if len(head) > 5 else ""
    helo = rdns = ""
    if m := _HELO_EXIM.search(head):  # Exim: "from rdns ([ip] helo=name)"
        helo = m.group(1)
        rdns = "" if first.startswith(("[", "(")) else first
    elif m := _HELO_QMAIL.search(head):  # qmail: "from rdns (HELO name) (ip)"
        helo = m.group(1)
        rdns = "" if first.lower() == "unknown" else first
    else:  # Postfix, Sendmail, Microsoft: "from helo (rdns [ip])"
        helo = "" if first.startswith(("[", "(")) else first
        if m := _RDNS_BEFORE_IP.search(head):
            rdns = m.group(1)
        if rdns.lower() == "unknown" or "@" in rdns:
            rdns = ""
    helo = helo.strip("[]")
    protocol = m.group(1) if (m := _WITH.search(text)) else ""
    auth = ""
    if re.fullmatch(r"E?SMTPS?A|LMTPS?A", protocol, re.IGNORECASE):
        auth = protocol
    elif _AUTH_SENDER.search(text):
        auth = "authenticated"
    return Relay(
        ip=ip,
        rdns=rdns.lower(),
        helo=helo,
        by=m.group(1).lower() if (m := _BY.search(text)) else "",
        ident=m.group(1) if (m := _IDENT.search(head)) else "",
        envfrom=m.group(1) if (m := _ENVFROM.search(text)) else "",
        id=m.group(1) if (m := _ID.search(text)) else "",
        auth=auth,
    )


def parse_received(values: list[str]) -> list[Relay]:
    """The relays of ``Received:`` values (topmost, i.e. most recent, first)."""
    return [relay for value in values if (relay := _parse_one(value)) is not None]


# SpamAssassin's IP_PRIVATE: where a relay is taken to be inside the network. Narrower than
# Python's is_private, which also counts the documentation ranges (192.0.2.0/24...).
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


def _private(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address.version == n.version and address in n for n in _PRIVATE)


def relay_headers(relays: list[Relay]) -> dict[str, list[str]]:
    """SpamAssassin's relay pseudo-headers (lower-cased names, as rule targets hold them)."""
    trusted: list[Relay] = []
    for relay in relays:
        if not _private(relay.ip):
            break
        trusted.append(relay)
    untrusted = relays[len(trusted) :]
    inside = " ".join(r.layout(True) for r in trusted)
    outside = " ".join(r.layout(False) for r in untrusted)
    return {
        "x-spam-relays-trusted": [inside],
        "x-spam-relays-internal": [inside],
        "x-spam-relays-untrusted": [outside],
        "x-spam-relays-external": [outside],
    }


@dataclass
class EvalInput:
    """The facts eval tests read, computed once per message."""

    headers: Mapping[str, list[str]]
    received_times: list[float] = field(default_factory=list)
    # Per multipart/alternative: the words of its text/plain and of its text/html part.
    alternatives: list[tuple[list[str], list[str]]] = field(default_factory=list)
    html_text_length: int = 0
    html_has_image: bool = False

    def __post_init__(self) -> None:
        self._date_diff: float | None = None
        self._alternative_difference: float | None = None

    def date_diff(self) -> float:
        """Seconds from the closest ``Received:`` time to the ``Date:`` (0 when unknown)."""
        if self._date_diff is None:
            self._date_diff = 0.0
            date = _timestamp((self.headers.get("date") or [""])[0])
            if date is not None and self.received_times:
                self._date_diff = min((date - t for t in self.received_times), key=abs)
        return self._date_diff

    def alternative_difference(self) -> float:
        """The largest share (percent) of an HTML alternative's words its text part lacks."""
        if self._alternative_difference is None:
            largest = 0.0
            for text_words, html_words in self.alternatives:
                html = set(html_words)
                if not html:
                    continue
                missing = html - set(text_words)
                largest = max(largest, 100.0 * len(missing) / len(html))
            self._alternative_difference = largest
        return self._alternative_difference


def _timestamp(value: str) -> float | None:
    parsed = email.utils.parsedate_tz(value.strip()) if value else None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def received_times(values: list[str]) -> list[float]:
    """The date after the last ``;`` of each ``Received:`` value, where one parses."""
    times = []
    for value in values:
        if ";" in value and (t := _timestamp(value.rsplit(";", 1)[1])) is not None:
            times.append(t)
    return times


def _bound(text: str) -> float | None:
    return None if text == "undef" else float(text)


# An eval test with its rule's arguments read: the check of one message's facts. The stock
# rules call one function with many argument pairs (12 date ranges): read once, at load.
Check = Callable[[EvalInput], bool]


def _shifted_date(low: str, high: str) -> Check:
    lo, hi = _bound(low), _bound(high)
    least = None if lo is None else lo * 3600
    below = None if hi is None else hi * 3600

    def check(facts: EvalInput) -> bool:
        diff = facts.date_diff()
        return (least is None or diff >= least) and (below is None or diff < below)

    return check


def _missing_to() -> Check:
    def check(facts: EvalInput) -> bool:
        values = facts.headers.get("to", []) + facts.headers.get("apparently-to", [])
        return not any(v.strip() for v in values)

    return check


def _alternative_difference(low: str, high: str) -> Check:
    least, below = float(low), float(high)
    return lambda facts: least <= facts.alternative_difference() < below


def _image_only(low: str, high: str) -> Check:
    above, most = float(low), float(high)
    return lambda facts: facts.html_has_image and above < facts.html_text_length <= most


_BINDERS: dict[str, Callable[..., Check]] = {
    "check_for_shifted_date": _shifted_date,
    "check_for_missing_to_header": _missing_to,
    "multipart_alternative_difference": _alternative_difference,
    "html_image_only": _image_only,
}


def bind(name: str, args: Sequence[str]) -> Check | None:
    """The eval test ``name`` (one of :data:`EVALS`) with a rule's arguments: None when it
    does not take them (such a rule never hits, as a call of it that raised did not)."""
    try:
        return _BINDERS[name](*args)
    except (TypeError, ValueError):
        return None


def check_for_shifted_date(facts: EvalInput, low: str, high: str) -> bool:
    """``Date:`` lies between ``low`` and ``high`` hours from the ``Received:`` time."""
    return _shifted_date(low, high)(facts)


def check_for_missing_to_header(facts: EvalInput) -> bool:
    """Neither ``To:`` nor ``Apparently-To:`` holds anything."""
    return _missing_to()(facts)


def multipart_alternative_difference(facts: EvalInput, low: str, high: str) -> bool:
    """The largest share (percent) of an HTML alternative's words its text part lacks."""
    return _alternative_difference(low, high)(facts)


def html_image_only(facts: EvalInput, low: str, high: str) -> bool:
    """HTML with an image and only ``low`` < n <= ``high`` characters of text."""
    return _image_only(low, high)(facts)


#: Eval functions by SpamAssassin name; each takes the message's facts and the rule's arguments.
EVALS: dict[str, Callable[..., bool]] = {
    "check_for_shifted_date": check_for_shifted_date,
    "check_for_missing_to_header": check_for_missing_to_header,
    "multipart_alternative_difference": multipart_alternative_difference,
    "html_image_only": html_image_only,
}
