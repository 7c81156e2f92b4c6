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
import datetime
import email.utils
import hashlib
import ipaddress
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import dkim
import spf  # type: ignore[import-untyped]
from dkim.canonicalization import CanonicalizationPolicy
from publicsuffixlist import PublicSuffixList

from .resolver import AsyncDns, DnsAnswer, SyncDns
from .sa_evals import parse_received

__all__ = [
    "ArcResult",
    "DkimResult",
    "DmarcResult",
    "SpfHop",
    "SpfResult",
    "authentication_results",
    "check_spf",
    "evaluate_dmarc",
    "from_domains",
    "org_domain",
    "parse_tag_list",
    "spf_client",
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
    #: The client and HELO checked, and which Received: hop they came from ("" for the
    #: SMTP client itself).
    client_ip: str = ""
    helo: str = ""
    hop: str = ""
    #: The sender's record ends in ``+all``/``all``: it authorizes every host on the Internet.
    plus_all: bool = False


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
    """DMARC outcome for the From domain.

    ``policy`` is the one applied: ``p``, ``sp`` or ``np`` (RFC 9091) as the From domain calls
    for, then for failing mail the next lower one when the message falls outside ``pct``
    (RFC 7489 6.6.4); ``published`` is the one before sampling.
    """

    result: str
    from_domain: str | None = None
    policy: str | None = None
    comment: str = ""
    details: dict[str, str] = field(default_factory=dict)
    #: Why, in plain words (which identifiers aligned or did not).
    reason: str = ""
    #: The policy the record asks for (p, sp or np) before ``pct`` sampling, and what
    #: sampling did to it ("" when the record has no pct below 100).
    published: str | None = None
    policy_note: str = ""


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
    sync: SyncDns,
    client_ip: str,
    mail_from: str,
    helo: str,
    timeout: float = 20.0,
    hop: str = "",
) -> SpfResult:
    """SPF for the MAIL FROM identity (the HELO identity for the null sender).

    ``hop`` says where ``client_ip`` came from when it is not the SMTP client's (a
    ``Received:`` hop below trusted relays, see :func:`spf_client`).
    """
    scope = "mailfrom" if mail_from else "helo"
    domain = mail_from.rpartition("@")[2] if mail_from else helo

    def run() -> tuple[str, int, str, bool]:
        _SPF_DNS.set(sync)
        query = spf.query(i=client_ip, s=mail_from, h=helo, timeout=timeout, querytime=timeout)
        result, code, explanation = query.check()
        # No record, or one that could not be had or read: nothing to ask again.
        known = str(result).lower() not in ("none", "temperror", "permerror")
        return str(result), int(code), str(explanation), known and _plus_all(sync, domain)

    ctx = contextvars.copy_context()
    result, _code, explanation, plus_all = await asyncio.to_thread(ctx.run, run)
    result = result.lower()
    # A pass needs no explaining; pyspf's "sender SPF authorized" would only be noise.
    reason = "" if result == "pass" else explanation
    if plus_all:
        reason = (reason + "; " if reason else "") + "the record ends in +all: any host passes"
    shown_helo = helo if hop else ""
    return SpfResult(
        result,
        domain.lower(),
        scope,
        reason,
        client_ip if hop else "",
        shown_helo,
        hop,
        plus_all,
    )


def _plus_all(sync: SyncDns, domain: str) -> bool:
    """The domain's one SPF record ends in ``all``/``+all`` (RFC 7208 5.1 with qualifier +).

    Asked after pyspf, so the answer comes from the resolver's cache.
    """
    if not domain or "." not in domain:
        return False
    answer = sync.query(domain, "TXT")
    records = [
        t.decode("utf-8", "replace")
        for t in answer.texts()
        if t[:6].lower() == b"v=spf1" and (len(t) == 6 or t[6:7] == b" ")
    ]
    if answer.failed or len(records) != 1:
        return False
    mechanisms = [
        t.lower() for t in records[0].split()[1:] if not re.match(r"[a-z][\w.-]*=", t, re.I)
    ]
    return bool(mechanisms) and mechanisms[-1] in ("all", "+all")


@dataclass(frozen=True, slots=True)
class SpfHop:
    """The client SPF is checked for: its address, HELO name, and which hop it was."""

    ip: str
    helo: str
    note: str = ""


def _in(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address.version == n.version and address in n for n in networks)


def spf_client(
    client_ip: str | None, helo: str, received: list[str], trusted: Iterable[str]
) -> SpfHop | None:
    """The first hop not in ``trusted`` networks, whose address and HELO SPF is checked for.

    The SMTP client when it is not trusted; otherwise the ``Received:`` fields (newest
    first) are walked: each trusted relay's own field names who handed it the message. None
    when every hop is trusted or a trusted relay's field cannot be read (then nothing
    reliable is known about the sender's client, and SPF is not evaluated).
    """
    if not client_ip:
        return None
    networks = [ipaddress.ip_network(n, strict=False) for n in trusted]
    ip, name, count = client_ip, helo, 0
    values = iter(received)
    while _in(networks, ip):
        for value in values:
            count += 1
            relays = parse_received([value])
            if not relays:
                if value.lstrip().lower().startswith("from"):
                    return None  # a relay's field we cannot read: the trail ends here
                continue  # "by host with local": a hand-off inside one machine
            if relays[0].ip == ip:
                continue  # the field recording the connection we already know
            ip, name = relays[0].ip, relays[0].helo
            break
        else:
            return None
    if ip == client_ip:
        return SpfHop(ip, helo)
    return SpfHop(ip, name, f"from Received: field {count}, below trusted relays")


# ---------------------------------------------------------------- DKIM and ARC (dkimpy)


class _DkimDns:
    """dkimpy's ``dnsfunc`` (ARC): TXT through the resolver; remembers temporary failures."""

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


class _Invalid(Exception):
    """A signature or key record RFC 6376 calls PERMFAIL, with the reason a reader gets."""

    def __init__(self, reason: str, result: str = "permerror") -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


# Signature algorithms (RFC 6376 3.3, RFC 8463 3) and the key type each needs. rsa-sha1 is
# defined by RFC 6376 but RFC 8301 section 3.1 forbids treating it as valid.
_ALGORITHMS = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519"}
_REQUIRED = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*")
_FWS = re.compile(rb"[ \t\r\n]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DOMAIN = re.compile(
    rb"(?:[A-Za-z0-9\x80-\xff](?:[A-Za-z0-9\x80-\xff-]*[A-Za-z0-9\x80-\xff])?\.)*"
    rb"[A-Za-z0-9\x80-\xff](?:[A-Za-z0-9\x80-\xff-]*[A-Za-z0-9\x80-\xff])?"
)
# Signers' clocks drift: a t= this far ahead is still taken (dkimpy allows the same).
_CLOCK_SLOP = 36000


def _shown(value: bytes, limit: int = 40) -> str:
    """A tag value as a reader should see it in a reason: text, never a bytes repr."""
    text = value.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_tag_list(data: bytes, what: str) -> dict[bytes, bytes]:
    """An RFC 6376 section 3.2 tag=value list (whitespace allowed around ``=`` and ``;``).

    Tag names are case-sensitive; a duplicate name or a spec without ``=`` makes the whole
    list invalid (:class:`_Invalid`); values keep their inner whitespace.
    """
    tags: dict[bytes, bytes] = {}
    specs = data.split(b";")
    if len(specs) > 1 and not specs[-1].strip():
        specs.pop()  # a trailing ";" is allowed
    for spec in specs:
        name, eq, value = spec.partition(b"=")
        name = name.strip(b" \t\r\n")
        if not eq:
            raise _Invalid(f"{what} syntax error: '{_shown(spec.strip())}' has no '='")
        if not _TAG_NAME.fullmatch(name):
            raise _Invalid(f"{what} syntax error: bad tag name '{_shown(name)}'")
        if name in tags:
            raise _Invalid(f"{what} syntax error: tag {_shown(name)}= appears twice")
        value = value.strip(b" \t\r\n")
        if re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", value):
            raise _Invalid(f"{what} syntax error: control character in {_shown(name)}=")
        tags[name] = value
    return tags


def _qp_decode(value: bytes) -> bytes:
    """dkim-quoted-printable (RFC 6376 2.11): ``=XX`` hex escapes, whitespace dropped."""
    value = _FWS.sub(b"", value)
    return re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), value)


def _base64(value: bytes, tag: str) -> bytes:
    clean = _FWS.sub(b"", value)
    if not clean or not _BASE64.fullmatch(clean) or len(clean) % 4:
        raise _Invalid(f"{tag}= is not valid base64")
    return binascii.a2b_base64(clean)


def _check_signature(sig: dict[bytes, bytes], now: float) -> dict[bytes, bytes]:
    """RFC 6376 6.1.1 (with RFC 8301 and 8463): the tags dkimpy is handed, normalised."""
    if sig.get(b"v") not in (None, b"1"):
        raise _Invalid(f"unsupported signature version v={_shown(sig[b'v'])}")
    missing = [t.decode() + "=" for t in _REQUIRED if t not in sig]
    if missing:
        raise _Invalid(f"signature lacks the required tag(s) {', '.join(missing)}")
    out = dict(sig)
    algorithm = sig[b"a"].lower()
    if algorithm == b"rsa-sha1":
        raise _Invalid("rsa-sha1 is not acceptable (RFC 8301 section 3.1)")
    if algorithm not in _ALGORITHMS:
        raise _Invalid(f"unknown signature algorithm a={_shown(sig[b'a'])}")
    out[b"a"] = algorithm
    canon = sig.get(b"c", b"simple").lower()
    header, _, body = canon.partition(b"/")
    if header not in (b"simple", b"relaxed") or body not in (b"", b"simple", b"relaxed"):
        raise _Invalid(f"unknown canonicalization c={_shown(sig.get(b'c', b''))}")
    out[b"c"] = header + b"/" + (body or b"simple")
    domain = sig[b"d"].lower().rstrip(b".")
    if not _DOMAIN.fullmatch(domain):
        raise _Invalid(f"d={_shown(sig[b'd'])} is not a domain name")
    # Selectors are DNS labels; "_" is outside RFC 6376's grammar but common and harmless.
    if not _DOMAIN.fullmatch(sig[b"s"].replace(b"_", b"x")):
        raise _Invalid(f"s={_shown(sig[b's'])} is not a valid selector")
    signed = [h.strip(b" \t\r\n").lower() for h in sig[b"h"].split(b":")]
    if b"from" not in signed:
        raise _Invalid("the From header field is not signed (h= lacks From)")
    if b"i" in sig:
        identity = _qp_decode(sig[b"i"])
        local, at, idomain = identity.rpartition(b"@")
        idomain = idomain.lower().rstrip(b".")
        if not at or not _DOMAIN.fullmatch(idomain):
            raise _Invalid(f"i={_shown(identity)} is not an identity (no @domain)")
        if idomain != domain and not idomain.endswith(b"." + domain):
            raise _Invalid(
                f"i= domain {_shown(idomain)} is neither d={_shown(domain)} nor a subdomain of it"
            )
        out[b"i"] = local + b"@" + idomain
    if b"q" in sig:
        methods = [m.strip(b" \t\r\n").lower() for m in sig[b"q"].split(b":")]
        # RFC 6376 3.5: a verifier tries the methods it knows in order and skips the others.
        if b"dns/txt" not in methods:
            raise _Invalid(f"no known key query method in q={_shown(sig[b'q'])} (only dns/txt)")
    if b"l" in sig and not re.fullmatch(rb"[0-9]{1,76}", sig[b"l"]):
        raise _Invalid(f"l={_shown(sig[b'l'])} is not a body length")
    signed_at: int | None = None
    for tag in (b"t", b"x"):
        if tag in sig and not re.fullmatch(rb"[0-9]{1,12}", sig[tag]):
            raise _Invalid(f"{tag.decode()}={_shown(sig[tag])} is not a timestamp")
    if b"t" in sig:
        signed_at = int(sig[b"t"])
        if signed_at > now + _CLOCK_SLOP:
            raise _Invalid(f"signature timestamp t= is in the future ({_when(signed_at)})")
    if b"x" in sig:
        expires = int(sig[b"x"])
        if signed_at is not None and expires <= signed_at:
            raise _Invalid("signature expiry x= is not after its timestamp t=")
        if expires < now:
            raise _Invalid(f"signature expired at {_when(expires)} (x=)")
    _base64(sig[b"b"], "b")
    _base64(sig[b"bh"], "bh")
    out.pop(b"q", None)
    return out


def _when(stamp: int) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _key_record(sync: SyncDns, name: str) -> bytes:
    """The key record at ``name`` (RFC 6376 3.6.2.2), or :class:`_Invalid`."""
    answer = sync.query(name, "TXT")
    if answer.failed:
        raise _Invalid(
            f"key lookup {name}: DNS {answer.status} {answer.detail}".strip(), "temperror"
        )
    texts = answer.texts()
    if not texts:
        raise _Invalid(f"no key record at {name}")
    # Records starting with another v= are not DKIM keys (3.6.1) and are passed over.
    usable = [
        t
        for t in texts
        if not re.match(rb"\s*v\s*=", t) or re.match(rb"\s*v\s*=\s*DKIM1\s*(;|$)", t)
    ]
    if not usable:
        raise _Invalid(f"the record at {name} is not a DKIM key (v= is not DKIM1)")
    return usable[0]


def _check_key(
    record: bytes, sig: dict[bytes, bytes], name: str, minkey: int
) -> tuple[Any, int, bytes, bool]:
    """RFC 6376 3.6.1 and 6.1.2 (RFC 8301, 8463): (public key, bits, type, testing)."""
    tags = parse_tag_list(record, "key record")
    if b"v" in tags and (next(iter(tags)) != b"v" or tags[b"v"] != b"DKIM1"):
        raise _Invalid("key record v= must be DKIM1 and come first")
    algorithm = sig[b"a"]
    if b"h" in tags:
        hashes = [h.strip(b" \t\r\n").lower() for h in tags[b"h"].split(b":")]
        if algorithm.rpartition(b"-")[2] not in hashes:
            raise _Invalid(f"key does not allow {algorithm.decode()} (h={_shown(tags[b'h'])})")
    ktype = tags.get(b"k", b"rsa").lower()
    if ktype not in (b"rsa", b"ed25519"):
        raise _Invalid(f"unknown key type k={_shown(tags[b'k'])}")
    if ktype != _ALGORITHMS[algorithm]:
        raise _Invalid(f"key type k={ktype.decode()} does not fit a={algorithm.decode()}")
    services = [s.strip(b" \t\r\n").lower() for s in tags.get(b"s", b"*").split(b":")]
    if b"*" not in services and b"email" not in services:
        raise _Invalid(f"key is not for email (s={_shown(tags[b's'])})")
    flags = [f.strip(b" \t\r\n").lower() for f in tags.get(b"t", b"").split(b":")]
    if b"s" in flags and b"i" in sig:
        idomain = sig[b"i"].rpartition(b"@")[2]
        if idomain != sig[b"d"].lower().rstrip(b"."):
            raise _Invalid(
                f"key has t=s but i= domain {_shown(idomain)} is a subdomain of "
                f"d={_shown(sig[b'd'])}"
            )
    if b"p" not in tags:
        raise _Invalid("key record lacks p=")
    if not _FWS.sub(b"", tags[b"p"]):
        raise _Invalid("key revoked (empty p=)")
    material = _base64(tags[b"p"], "key p")
    try:
        pk, bits, kind, _tlsrpt = dkim.evaluate_pk(
            name.encode(), b"k=" + ktype + b"; p=" + binascii.b2a_base64(material, newline=False)
        )
    except (dkim.KeyFormatError, binascii.Error, ValueError) as exc:
        # dkimpy's message carries the key as a bytes repr: the reason names the tag.
        reason = f"key p= is not a usable {ktype.decode()} public key"
        raise _Invalid(reason) from exc
    if kind == b"rsa" and bits < minkey:
        raise _Invalid(f"RSA key of {bits} bits, below {minkey} (RFC 8301 section 3.2)")
    return pk, bits, kind, b"y" in flags


def _verify_one(
    d: Any, header: tuple[bytes, bytes], sync: SyncDns, minkey: int, now: float
) -> DkimResult:
    sig: dict[bytes, bytes] = {}
    try:
        sig = parse_tag_list(header[1], "signature")
        sig = _check_signature(sig, now)
        name = f"{_text(sig[b's'])}._domainkey.{_text(sig[b'd']).rstrip('.')}"
        record = _key_record(sync, name)
        d.pk, d.keysize, d.ktag, testing = _check_key(record, sig, name, minkey)
        d.seqtlsrpt = False
        include = [h.strip(b" \t\r\n").lower() for h in re.split(rb":", sig[b"h"])]
        if b"l" in sig:
            canon = CanonicalizationPolicy.from_c_value(sig[b"c"])
            length = len(canon.canonicalize_body(d.body))
            if int(sig[b"l"]) > length:
                # dkimpy hashes the whole shorter body and may pass: the body lost content.
                why = f"l={int(sig[b'l'])} is longer than the body ({length} octets)"
                return _dkim_result("fail", sig, why)
        try:
            ok = d.verify_sig_process(sig, include, header, None)
        except dkim.ValidationError as exc:
            # The one ValidationError left once the tags are checked: the body changed.
            reason = "body hash mismatch: the body changed after signing"
            if "body hash" not in str(exc):
                reason = _shown(str(exc).encode(), 80)
            ok, why = False, reason
        else:
            why = "" if ok else "signature does not verify: signed header fields changed"
        if ok:
            return _dkim_result("pass", sig, "")
        if testing:
            # 3.6.1 t=y: such mail must be treated like unsigned mail, not as a failure.
            return _dkim_result("neutral", sig, f"{why}; key is in testing mode (t=y)")
        return _dkim_result("fail", sig, why)
    except _Invalid as exc:
        return _dkim_result(exc.result, sig or _lenient_tags(header[1]), exc.reason)
    except dkim.DKIMException as exc:
        return _dkim_result("permerror", sig, _shown(str(exc).encode(), 80))
    except Exception as exc:  # dkimpy raises bare errors on some malformed input
        return _dkim_result("permerror", sig, f"unverifiable: {type(exc).__name__}")


def _lenient_tags(value: bytes) -> dict[bytes, bytes]:
    """d=, s= and a= of a signature whose tag list is invalid, so the result still names the
    domain and selector it claims (shown only, never used to verify)."""
    found = {}
    for tag in (b"d", b"s", b"a"):
        m = re.search(rb"(?:^|;)[ \t\r\n]*" + tag + rb"[ \t\r\n]*=[ \t\r\n]*([^;\s]+)", value)
        if m:
            found[tag] = m.group(1)
    return found


def _dkim_result(result: str, sig: dict[bytes, bytes], reason: str) -> DkimResult:
    domain = _text(sig.get(b"d")).lower().rstrip(".")
    identity = _text(sig.get(b"i"))
    if b"i" in sig and "@" not in identity:
        identity = ""  # never show a value that failed to decode as if it were the identity
    return DkimResult(
        result,
        domain=domain,
        selector=_text(sig.get(b"s")),
        identity=identity or (f"@{domain}" if domain else ""),
        algorithm=_text(sig.get(b"a")).lower(),
        reason=reason,
    )


async def verify_dkim(
    sync: SyncDns, raw: bytes, minkey: int = 1024, now: float | None = None
) -> list[DkimResult]:
    """Every DKIM-Signature in order, each verified on its own (empty list: unsigned).

    The tags and the key record are checked here to the letter of RFC 6376, 8301 and 8463;
    dkimpy canonicalizes and checks the cryptography. ``now`` is the verification time
    (default: the current time), against which ``x=`` and ``t=`` are judged.
    """
    count = _sig_count(raw)
    if not count:
        return []
    when = time.time() if now is None else now

    def run() -> list[DkimResult]:
        try:
            d = dkim.DKIM(raw, minkey=minkey, timeout=int(sync.resolver.timeout) or 1)
        except Exception as exc:
            reason = f"unparsable message: {type(exc).__name__}"
            return [DkimResult("permerror", reason=reason)] * count
        headers = [(k, v) for k, v in d.headers if k.lower() == b"dkim-signature"]
        return [_verify_one(d, h, sync, minkey, when) for h in headers]

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
            return ArcResult("fail", _clean(f"{type(exc).__name__}: {exc}"))
        result = _text(cv).lower() or "none"
        if result == "fail" and dnsfunc.failed:
            result = "temperror"
        text = _clean(_text(reason))
        if result == "fail" and " " not in text:
            # dkimpy gives a bad tag-spec as just its text ("s", "=="): say what it is.
            text = f"malformed ARC header field near '{text}'" if text else "chain invalid"
        return ArcResult(result, text, len(results or ()))

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
    sample_key: str | bytes = b"",
) -> DmarcResult:
    """DMARC for the message's From domain(s).

    With several From domains each is evaluated and the worst outcome is reported (RFC 7489
    section 6.6.1 lets a receiver apply the strictest). ``tree_walk`` uses the DMARCbis
    discovery (walk up the name, ``psd=y`` marks a public suffix domain) instead of the PSL.
    ``sample_key`` (the Message-ID, or the body) decides the ``pct`` sampling: the same
    message always falls on the same side, so a retry or a test gets the same result.
    """
    domains = from_domains(from_values)
    if isinstance(domains, str):
        return DmarcResult("permerror", None, "none", domains, reason=domains)
    bucket = _sample_bucket(sample_key)
    results = [
        await _dmarc_one(resolver, d, spf_result, dkim_results, tree_walk, bucket) for d in domains
    ]
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
    bucket: int,
) -> DmarcResult:
    found = await _discover(resolver, domain, tree_walk)
    if isinstance(found, DmarcResult):
        return found
    record, record_domain, organization, comment = found
    try:
        tags = _parse_dmarc(record)
    except _BadRecord as exc:
        return DmarcResult("permerror", domain, "none", str(exc), reason="DMARC record invalid")
    if "p" not in tags:
        return DmarcResult("none", domain, None, "record without p=", reason="record without p=")
    policy = tags["p"].lower()
    source = "p"
    if domain != organization:
        if "sp" in tags:
            policy, source = tags["sp"].lower(), "sp"
        if "np" in tags:
            exists = await resolver.query(domain, "A")
            if exists.status == "nxdomain":
                policy, source = tags["np"].lower(), "np"

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
    if dkim_ok or spf_ok:
        which = " and ".join(n for n, ok in (("DKIM", dkim_ok), ("SPF", spf_ok)) if ok)
        reason = f"{which} aligned with {domain}"
    else:
        reason = f"neither DKIM nor SPF passed aligned with {domain}"
    published = policy
    note = f"{source}={published}"
    pct = _pct(tags.get("pct", "100"))
    if pct < 100:
        # RFC 7489 6.6.4: mail outside the sample gets the next lower policy.
        sampled = bucket < pct
        note += f" pct={pct}: " + ("sampled" if sampled else "not sampled")
        if result == "fail" and not sampled:
            policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
            note += f", {policy} applied"
        details["pct"] = str(pct)
        details["sampled"] = str(sampled).lower()
    return DmarcResult(result, domain, policy, comment, details, reason, published, note)


def _pct(value: str) -> int:
    # A pct that is not a number 0-100 is ignored as a bad tag, so the default 100 applies.
    return int(value) if value.isdigit() and int(value) <= 100 else 100


def _sample_bucket(key: str | bytes) -> int:
    """0-99 from a hash of the message's own identity: the pct draw, the same every time."""
    data = key.encode("utf-8", "replace") if isinstance(key, str) else key
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % 100


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


def _clean(text: str, limit: int = 120) -> str:
    # Libraries' messages may hold bytes reprs (b'...'): a reader gets the text inside.
    text = re.sub(r"""\bb(['"])(.*?)\1""", r"\2", text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _comment(text: str) -> str:
    cleaned = _clean(text).replace("(", "[").replace(")", "]").replace("\\", "/")
    return f" ({cleaned})" if cleaned else ""


def _reason(text: str) -> str:
    """RFC 8601 reasonspec: ``reason="..."``, a quoted-string."""
    cleaned = _clean(text).replace("\\", "\\\\").replace('"', '\\"')
    return f' reason="{cleaned}"' if cleaned else ""


_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_ADDRESS = re.compile(
    r"(?:[!#$%&'*+\-/=?^_`{|}~.0-9A-Za-z]*@)?[0-9A-Za-z](?:[0-9A-Za-z.-]*[0-9A-Za-z])?"
)


def _prop(name: str, value: str) -> str:
    """`` ptype.property=pvalue``: a token or address as is, anything else quoted."""
    if _TOKEN.fullmatch(value) or _ADDRESS.fullmatch(value):
        return f" {name}={value}"
    return f" {name}=" + '"' + _clean(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def authentication_results(
    authserv_id: str,
    spf_result: SpfResult | None = None,
    dkim_results: list[DkimResult] | None = None,
    arc: ArcResult | None = None,
    dmarc: DmarcResult | None = None,
) -> str:
    """The value of an RFC 8601 Authentication-Results header for these results.

    Each method with its properties (``smtp.mailfrom``/``smtp.helo``; ``header.d``,
    ``header.s``, ``header.i``, ``header.a``; ``header.from``, ``policy.dmarc``) and, where
    there is something to say, a ``reason="..."`` in plain words.
    """
    parts = [authserv_id]
    if spf_result is not None:
        text = f"spf={spf_result.result}{_reason(spf_result.explanation)}"
        if spf_result.hop:
            helo = f" helo {spf_result.helo}" if spf_result.helo else ""
            text += _comment(f"client {spf_result.client_ip}{helo} {spf_result.hop}")
        scope = "smtp.mailfrom" if spf_result.scope == "mailfrom" else "smtp.helo"
        parts.append(text + _prop(scope, spf_result.domain))
    for r in dkim_results or ():
        if r.result == "none":
            continue
        text = f"dkim={r.result}{_reason(r.reason)}"
        for name, value in (
            ("header.d", r.domain),
            ("header.s", r.selector),
            ("header.i", r.identity),
            ("header.a", r.algorithm),
        ):
            if value:
                text += _prop(name, value)
        parts.append(text)
    if arc is not None and arc.result != "none":
        parts.append(f"arc={arc.result}{_reason(arc.reason if arc.result != 'pass' else '')}")
    if dmarc is not None:
        if dmarc.result == "none" and dmarc.policy is None:
            parts.append(f"dmarc=none{_reason(dmarc.reason)}")
        else:
            text = f"dmarc={dmarc.result}{_reason(dmarc.reason)}"
            text += _comment("; ".join(c for c in (dmarc.comment, dmarc.policy_note) if c))
            text += _prop("header.from", dmarc.from_domain or "none")
            text += _prop("policy.dmarc", dmarc.policy or "none")
            parts.append(text)
    if len(parts) == 1:
        parts.append("none")
    return "; ".join(parts)
