"""DNS block lists (RFC 5782): client IPs (DNSBL), sender domains (RHSBL), URL domains (URIBL).

A list is queried through the plugin's resolver; an answer is a listing only when its code
is one the list's ``codes`` map names (or, without a map, any 127.0.0.0/8 address other than
the error answers public lists give). URL lists are asked for the registered domain only.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

import msgspec

from .auth import org_domain
from .resolver import AsyncDns

__all__ = ["DnsList", "ListHit", "query_lists"]

# Answers that mean "this query was refused", never "listed" (Spamhaus and others).
_ERROR_CODES = {"127.255.255.252", "127.255.255.254", "127.255.255.255", "127.0.1.255"}


class DnsList(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[[antispam.dns_lists]]``: one list.

    ``kind`` is ``ip`` (client address), ``domain`` (envelope sender and From domains) or
    ``uri`` (registered domains of the message's URLs). ``codes`` maps an answer (for
    example ``"127.0.0.2"``) to its score; ``bits`` maps a bit value of the last octet to a
    score (SURBL/URIBL style). Without either, any listing scores ``score``.
    """

    zone: str
    kind: str = "ip"
    score: float = 2.0
    codes: dict[str, float] = msgspec.field(default_factory=dict)
    bits: dict[str, float] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for bit in self.bits:
            if not bit.isdigit():
                raise ValueError(f"bits keys are numbers (TOML keys are strings): {bit!r}")
        if self.kind not in ("ip", "domain", "uri"):
            raise ValueError(f"kind must be ip, domain or uri, not {self.kind!r}")


@dataclass(frozen=True, slots=True)
class ListHit:
    """One listing: which list, what was looked up, the answer and its score."""

    code: str
    zone: str
    item: str
    answer: str
    score: float


_CODES = {"ip": "DNSBL_LISTED", "domain": "RHSBL_LISTED", "uri": "URIBL_LISTED"}


def _ip_name(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def _score(lst: DnsList, answer: str) -> float | None:
    if answer in _ERROR_CODES or not answer.startswith("127."):
        return None
    if lst.codes:
        return lst.codes.get(answer)
    if lst.bits:
        last = int(answer.rsplit(".", 1)[1])
        total = sum(score for bit, score in lst.bits.items() if last & int(bit))
        return total or None
    return lst.score


async def query_lists(
    resolver: AsyncDns,
    lists: list[DnsList],
    client_ip: str | None,
    domains: list[str],
    uri_domains: list[str],
    max_items: int = 20,
) -> tuple[list[ListHit], list[str]]:
    """All lists for all items, concurrently. Returns (hits, zones that failed to answer)."""
    jobs: list[tuple[DnsList, str, str]] = []
    for lst in lists:
        if lst.kind == "ip" and client_ip:
            name = _ip_name(client_ip)
            if name:
                jobs.append((lst, client_ip, f"{name}.{lst.zone}"))
        elif lst.kind == "domain":
            jobs.extend((lst, d, f"{d}.{lst.zone}") for d in domains[:max_items])
        elif lst.kind == "uri":
            registered = list(dict.fromkeys(org_domain(d) for d in uri_domains))
            jobs.extend((lst, d, f"{d}.{lst.zone}") for d in registered[:max_items])
    answers = await asyncio.gather(*(resolver.query(name, "A") for _l, _i, name in jobs))
    hits: list[ListHit] = []
    failed: list[str] = []
    for (lst, item, _name), answer in zip(jobs, answers, strict=True):
        if answer.failed:
            failed.append(lst.zone)
            continue
        for address in answer.addresses():
            score = _score(lst, address)
            if score is not None:
                hits.append(ListHit(_CODES[lst.kind], lst.zone, item, address, score))
    return hits, sorted(set(failed))
