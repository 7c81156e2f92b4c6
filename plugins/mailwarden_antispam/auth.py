"""Sender authentication: SPF (pyspf), DKIM and ARC (dkimpy), DMARC, Authentication-Results.

Every DNS question goes through the plugin's one :class:`~.resolver.Resolver`, within the
message's :class:`~.resolver.DnsBudget` when the plugin scans. pyspf and dkimpy are synchronous
libraries, so they run in a worker thread and ask through
:class:`~.resolver.SyncDns`. DMARC is evaluated here (RFC 7489, with RFC 9091 ``np=`` and the
DMARCbis tree walk as an option) over the Public Suffix List from ``publicsuffixlist``: the
``dmarc`` package on PyPI knows neither ``np=`` nor the tree walk and pulls in the unmaintained
``publicsuffix2``.
"""

from __future__ import annotations

import asyncio
import binascii
import contextvars
import email.utils
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import dkim
import spf  # type: ignore[import-untyped]
from publicsuffixlist import PublicSuffixList

from .resolver import AsyncDns, DnsAnswer, SyncDns

__all__ = [
    "ArcResult",
    "DkimResult",
    "DmarcResult",
    "SpfResult",
    "authentication_results",
    "check_spf",
    "evaluate_dmarc",
    "from_domains",
    "org_domain",
    "verify_arc",
    "verify_dkim",
]


@dataclass(frozen=True, slots=True)
class SpfResult:
    """RFC 7208 result for one identity (``scope`` "mailfrom" or "helo")."""

    result: str
    domain: str
    scope: str = "mailfrom"
    explanation: str = ""


@dataclass(frozen=True, slots=True)
class DkimResult:
    """One signature's outcome: pass, fail, neutral, permerror or temperror (RFC 8601)."""

    result: str
    domain: str = ""
    selector: str = ""
    identity: str = ""
    algorithm: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The ARC chain validation status (RFC 8617 ``cv``): none, pass or fail."""

    result: str
    reason: str = ""
    instances: int = 0


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """DMARC outcome for the From domain; ``policy`` is the one that applies (p, sp or np)."""

    result: str
    from_domain: str | None = None
    policy: str | None = None
    comment: str = ""
    details: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- SPF (pyspf)

_SPF_DNS: contextvars.ContextVar[SyncDns | None] = contextvars.ContextVar("spf_dns", default=None)
_PYSPF_LOOKUP: Callable[..., Any] = spf.DNSLookup


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[Any]:
    """pyspf's module-level DNS hook, answering from the resolver of the running check."""
    sync = _SPF_DNS.get()
    if sync is None:  # pyspf used by someone else in this process: leave it as it was
        return list(_PYSPF_LOOKUP(name, qtype, strict, timeout))
    answer = sync.query(name, qtype)
    if answer.failed:
        raise spf.TempError(f"DNS {answer.status} for {name} {qtype}: {answer.detail}")
    out: list[Any] = []
    for rdata in answer.records:
        key = (name, qtype)
        if qtype in ("A", "AAAA"):
            out.append((key, str(rdata.address)))
        elif qtype == "MX":
            out.append((key, (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))))
        elif qtype == "PTR":
            out.append((key, rdata.target.to_text(omit_final_dot=True)))
        elif qtype in ("TXT", "SPF"):
            out.append((key, tuple(rdata.strings)))
    return out


spf.DNSLookup = _spf_lookup


async def check_spf(
    sync: SyncDns, client_ip: str, mail_from: str, helo: str, timeout: float = 20.0
) -> SpfResult:
    """SPF for the MAIL FROM identity (the HELO identity for the null sender)."""
    scope = "mailfrom" if mail_from else "helo"
    domain = mail_from.rpartition("@")[2] if mail_from else helo

    def run() -> tuple[str, int, str]:
        _SPF_DNS.set(sync)
        query = spf.query(i=client_ip, s=mail_from, h=helo, timeout=timeout, querytime=timeout)
        result, code, explanation = query.check()
        return str(result), int(code), str(explanation)

    ctx = contextvars.copy_context()
    result, _code, explanation = await asyncio.to_thread(ctx.run, run)
    return SpfResult(result.lower(), domain.lower(), scope, explanation)


# ---------------------------------------------------------------- DKIM and ARC (dkimpy)


class _DkimDns:
    """dkimpy's ``dnsfunc``: TXT through the resolver; remembers temporary failures."""

    def __init__(self, sync: SyncDns) -> None:
        self.sync = sync
        self.failed = False

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        answer = self.sync.query(name.decode("ascii", "replace"), "TXT")
        if answer.failed:
            self.failed = True
            raise dkim.DnsTimeoutError(f"{answer.status}: {answer.detail}")
        texts = answer.texts()
        return texts[0] if texts else None


def _sig_count(raw: bytes) -> int:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    return len(re.findall(rb"(?im)^dkim-signature[ \t]*:", head))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _verify_one(d: Any, idx: int, dnsfunc: _DkimDns) -> DkimResult:
    sig: dict[bytes, bytes] = {}
    try:
        prep = d.verify_headerprep(idx)
        if not prep:
            return DkimResult("none")
        sig, include_headers, sigheaders = prep
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        try:
            d.pk, d.keysize, d.ktag, d.seqtlsrpt = dkim.load_pk_from_dns(
                name, dnsfunc, timeout=d.timeout
            )
        except dkim.DnsTimeoutError as exc:
            return _dkim_result("temperror", sig, f"key lookup: {exc}")
        except (dkim.KeyFormatError, binascii.Error) as exc:
            return _dkim_result("permerror", sig, f"key: {exc}")
        ok = d.verify_sig_process(sig, include_headers, sigheaders[idx], dnsfunc)
        return _dkim_result("pass" if ok else "fail", sig, "" if ok else "signature mismatch")
    except dkim.ValidationError as exc:
        # Body hash mismatch, expired signature, bad i= ...: the signature does not verify.
        return _dkim_result("fail", sig, str(exc)[:120])
    except dkim.DKIMException as exc:
        return _dkim_result("permerror", sig, str(exc)[:120])
    except Exception as exc:  # dkimpy raises bare errors on some malformed input
        return _dkim_result("permerror", sig, f"{type(exc).__name__}: {exc}"[:120])


def _dkim_result(result: str, sig: dict[bytes, bytes], reason: str) -> DkimResult:
    domain = _text(sig.get(b"d")).lower()
    return DkimResult(
        result,
        domain=domain,
        selector=_text(sig.get(b"s")),
        identity=_text(sig.get(b"i")) or (f"@{domain}" if domain else ""),
        algorithm=_text(sig.get(b"a")),
        reason=reason,
    )


async def verify_dkim(sync: SyncDns, raw: bytes, minkey: int = 1024) -> list[DkimResult]:
    """Every DKIM-Signature in order, each verified on its own (empty list: unsigned)."""
    count = _sig_count(raw)
    if not count:
        return []

    def run() -> list[DkimResult]:
        dnsfunc = _DkimDns(sync)
        try:
            d = dkim.DKIM(raw, minkey=minkey, timeout=int(sync.resolver.timeout) or 1)
        except Exception as exc:
            return [DkimResult("permerror", reason=f"unparsable message: {exc}"[:120])] * count
        return [_verify_one(d, idx, dnsfunc) for idx in range(count)]

    return await asyncio.to_thread(run)


async def verify_arc(sync: SyncDns, raw: bytes, minkey: int = 1024) -> ArcResult:
    """Validate the ARC chain; "none" when the message carries no ARC set."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    if not re.search(rb"(?im)^arc-(seal|message-signature|authentication-results)[ \t]*:", head):
        return ArcResult("none")

    def run() -> ArcResult:
        dnsfunc = _DkimDns(sync)
        try:
            cv, results, reason = dkim.arc_verify(raw, dnsfunc=dnsfunc, minkey=minkey)
        except Exception as exc:  # malformed chains raise outside dkimpy's own handling
            return ArcResult("fail", f"{type(exc).__name__}: {exc}"[:120])
        result = _text(cv).lower() or "none"
        if result == "fail" and dnsfunc.failed:
            result = "temperror"
        return ArcResult(result, _text(reason)[:120], len(results or ()))

    return await asyncio.to_thread(run)


# ---------------------------------------------------------------- DMARC


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def org_domain(domain: str) -> str:
    """The organizational domain (registered domain) by the Public Suffix List."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def from_domains(values: Iterable[str]) -> list[str] | str:
    """Domains of the RFC5322.From addresses, or an error text when there is none."""
    domains: list[str] = []
    shown = ""
    for value in values:
        for name, addr in email.utils.getaddresses([value]):
            shown = shown or name or addr
            if "@" in addr:
                domain = addr.rpartition("@")[2].strip().lower().rstrip(".")
                if domain and domain not in domains:
                    domains.append(domain)
    if not domains:
        return f"Unable to extract From domain: {shown.strip()}".strip()
    return domains


class _BadRecord(Exception):
    pass


def _parse_dmarc(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    parts = [p.strip() for p in record.strip().rstrip(";").split(";")]
    for i, part in enumerate(parts):
        tag, eq, value = part.partition("=")
        if not eq or not tag.strip() or not value.strip():
            raise _BadRecord(f'missing tag or value: "{record}"')
        key = tag.strip().lower()
        if i == 0 and (key != "v" or value.strip() != "DMARC1"):
            raise _BadRecord(f'record must start with v=DMARC1: "{record}"')
        tags.setdefault(key, value.strip())
    for key in ("p", "sp", "np"):
        if key in tags and tags[key].lower() not in ("none", "quarantine", "reject"):
            raise _BadRecord(f'invalid {key}= value: "{record}"')
    for key in ("adkim", "aspf"):
        if tags.get(key, "r").lower() not in ("r", "s"):
            raise _BadRecord(f'invalid {key}= value: "{record}"')
    return tags


async def _dmarc_record(resolver: AsyncDns, domain: str) -> str | DnsAnswer | None:
    """The one DMARC record at ``_dmarc.domain``; None when there is none; the answer on a
    temporary failure."""
    answer = await resolver.query(f"_dmarc.{domain}", "TXT")
    if answer.failed:
        return answer
    records = [t for t in answer.texts() if t[:8].upper() == b"V=DMARC1"]
    if len(records) != 1:
        return None
    return records[0].decode("utf-8", "replace")


_POLICY_RANK = {"none": 0, "quarantine": 1, "reject": 2}
_RESULT_RANK = {"pass": 0, "none": 1, "temperror": 2, "permerror": 3, "fail": 4}


async def evaluate_dmarc(
    resolver: AsyncDns,
    from_values: list[str],
    spf_result: SpfResult | None,
    dkim_results: list[DkimResult],
    tree_walk: bool = False,
) -> DmarcResult:
    """DMARC for the message's From domain(s).

    With several From domains each is evaluated and the worst outcome is reported (RFC 7489
    section 6.6.1 lets a receiver apply the strictest). ``tree_walk`` uses the DMARCbis
    discovery (walk up the name, ``psd=y`` marks a public suffix domain) instead of the PSL.
    """
    domains = from_domains(from_values)
    if isinstance(domains, str):
        return DmarcResult("permerror", None, "none", domains)
    results = [await _dmarc_one(resolver, d, spf_result, dkim_results, tree_walk) for d in domains]
    return max(
        results,
        key=lambda r: (_RESULT_RANK.get(r.result, 0), _POLICY_RANK.get(r.policy or "none", 0)),
    )


async def _dmarc_one(
    resolver: AsyncDns,
    domain: str,
    spf_result: SpfResult | None,
    dkim_results: list[DkimResult],
    tree_walk: bool,
) -> DmarcResult:
    found = await _discover(resolver, domain, tree_walk)
    if isinstance(found, DmarcResult):
        return found
    record, record_domain, organization, comment = found
    try:
        tags = _parse_dmarc(record)
    except _BadRecord as exc:
        return DmarcResult("permerror", domain, "none", str(exc))
    if "p" not in tags:
        return DmarcResult("none", domain, None, "record without p=")
    policy = tags["p"].lower()
    if domain != organization:
        policy = tags.get("sp", policy).lower()
        if "np" in tags:
            exists = await resolver.query(domain, "A")
            if exists.status == "nxdomain":
                policy = tags["np"].lower()

    def aligned(other: str, mode: str) -> bool:
        other = other.lower().rstrip(".")
        if mode == "s":
            return other == domain
        return other == domain or (_org(other, tree_walk, organization, domain) == organization)

    dkim_ok = any(
        r.result == "pass" and aligned(r.domain, tags.get("adkim", "r").lower())
        for r in dkim_results
    )
    spf_ok = (
        spf_result is not None
        and spf_result.scope == "mailfrom"
        and spf_result.result == "pass"
        and aligned(spf_result.domain, tags.get("aspf", "r").lower())
    )
    details = {"record_domain": record_domain, "dkim_aligned": str(dkim_ok).lower()}
    details["spf_aligned"] = str(spf_ok).lower()
    result = "pass" if dkim_ok or spf_ok else "fail"
    return DmarcResult(result, domain, policy, comment, details)


def _org(other: str, tree_walk: bool, organization: str, domain: str) -> str:
    # Under the tree walk the organization of the author domain came from DNS; another name
    # shares it when it is that domain or below it.
    if tree_walk:
        return (
            organization if (other == organization or other.endswith("." + organization)) else other
        )
    return org_domain(other)


async def _discover(
    resolver: AsyncDns, domain: str, tree_walk: bool
) -> tuple[str, str, str, str] | DmarcResult:
    """(record, where it was found, organizational domain, comment) or a final result."""
    record = await _dmarc_record(resolver, domain)
    if isinstance(record, DnsAnswer):
        return DmarcResult("temperror", domain, None, f"DNS {record.status}")
    if not tree_walk:
        organization = org_domain(domain)
        if record is not None:
            return record, domain, organization, "Used From Domain Record"
        if organization != domain:
            record = await _dmarc_record(resolver, organization)
            if isinstance(record, DnsAnswer):
                return DmarcResult("temperror", domain, None, f"DNS {record.status}")
            if record is not None:
                return record, organization, organization, "Used Org Domain Record"
        return DmarcResult("none", domain, None, "no DMARC record")
    labels = domain.split(".")
    if record is not None:
        tags = _safe_tags(record)
        if tags.get("psd", "").lower() != "y":
            organization = await _walk_org(resolver, labels)
            return record, domain, organization, "Used From Domain Record"
    # DMARCbis: walk up at most to the shortest 8 labels, first record found wins.
    start = max(1, len(labels) - 7)
    for i in range(start, len(labels)):
        name = ".".join(labels[i:])
        found = await _dmarc_record(resolver, name)
        if isinstance(found, DnsAnswer):
            return DmarcResult("temperror", domain, None, f"DNS {found.status}")
        if found is None:
            continue
        if _safe_tags(found).get("psd", "").lower() == "y":
            organization = ".".join(labels[i - 1 :])
            return found, name, organization, "Used Tree Walk, org one level below PSD"
        return found, name, name, "Used Tree Walk"
    return DmarcResult("none", domain, None, "no DMARC record")


async def _walk_org(resolver: AsyncDns, labels: list[str]) -> str:
    for i in range(max(1, len(labels) - 7), len(labels)):
        name = ".".join(labels[i:])
        found = await _dmarc_record(resolver, name)
        if isinstance(found, str):
            if _safe_tags(found).get("psd", "").lower() == "y":
                return ".".join(labels[i - 1 :])
            return name
    return ".".join(labels)


def _safe_tags(record: str) -> dict[str, str]:
    try:
        return _parse_dmarc(record)
    except _BadRecord:
        return {}


# ---------------------------------------------------------------- Authentication-Results


def _comment(text: str) -> str:
    cleaned = text.replace("(", "[").replace(")", "]").replace("\\", "/")
    return f" ({cleaned})" if cleaned else ""


def authentication_results(
    authserv_id: str,
    spf_result: SpfResult | None = None,
    dkim_results: list[DkimResult] | None = None,
    arc: ArcResult | None = None,
    dmarc: DmarcResult | None = None,
) -> str:
    """The value of an RFC 8601 Authentication-Results header for these results."""
    parts = [authserv_id]
    if spf_result is not None:
        prop = "smtp.mailfrom" if spf_result.scope == "mailfrom" else "smtp.helo"
        parts.append(f"spf={spf_result.result} {prop}={spf_result.domain}")
    for r in dkim_results or ():
        if r.result == "none":
            continue
        text = f"dkim={r.result}"
        if r.result not in ("pass", "fail"):
            text += _comment(r.reason)
        if r.domain:
            text += f" header.d={r.domain} header.i={r.identity}"
        parts.append(text)
    if arc is not None and arc.result != "none":
        parts.append(f"arc={arc.result}")
    if dmarc is not None:
        if dmarc.result == "none" and dmarc.policy is None:
            parts.append("dmarc=none")
        else:
            text = f"dmarc={dmarc.result}{_comment(dmarc.comment)}"
            text += f" header.from={dmarc.from_domain or 'none'}"
            text += f" policy.dmarc={dmarc.policy or 'none'}"
            parts.append(text)
    if len(parts) == 1:
        parts.append("none")
    return "; ".join(parts)
