"""DKIM, DMARC and SPF edge cases to the letter of the RFCs, with keys made in the test.

Each case signs a message with a key generated here (RSA or Ed25519, ``cryptography``), with
exactly the tags the case is about, publishes the key record on a real DNS server on
127.0.0.1 (tests/services/dns_zone.py) and checks the result a verifier owes it: the RFC
clause is named in each test. The signer below is written from RFC 6376 section 3.7 and
RFC 8463 section 3 (dkimpy only canonicalizes), so a tag dkimpy would never emit (a
quoted-printable ``i=``, a ``q=`` list) can be signed as a real signer might send it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.cli import cli
from mailwarden.testing import expect_finding, no_finding, scan
from mailwarden_antispam.auth import (
    DkimResult,
    DmarcResult,
    SpfHop,
    authentication_results,
    evaluate_dmarc,
    parse_tag_list,
    spf_client,
    verify_dkim,
)
from mailwarden_antispam.resolver import Resolver, SyncDns
from mailwarden_sdk import Envelope
from tests.auth_results import Method, parse_authentication_results
from tests.conftest import make_message
from tests.services.dns_zone import TIMEOUT, ZoneServer, running_zone, simple_zone, txt_rdata

DOMAIN = "football.example.com"
MESSAGE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game.  Are you hungry yet?\r\n"
    b"\r\n"
    b"Joe.\r\n"
)


@dataclass(frozen=True)
class Key:
    kind: str  # "rsa" or "ed25519"
    private: Any
    public_b64: str

    def record(self, extra: str = "") -> str:
        return f"v=DKIM1; k={self.kind}; {extra}p={self.public_b64}"


@pytest.fixture(scope="module")
def rsa_key() -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key("rsa", private, base64.b64encode(der).decode())


@pytest.fixture(scope="module")
def ed_key() -> Key:
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return Key("ed25519", private, base64.b64encode(raw).decode())


def sign(key: Key, tags: str, message: bytes = MESSAGE, algorithm: str | None = None) -> bytes:
    """``message`` with a DKIM-Signature of ``tags`` (all but bh= and b=), prepended.

    RFC 6376 3.7: the body hash over the canonical body, then the signed header fields
    bottom-up and the signature field itself with an empty b=, without its final CRLF.
    """
    algorithm = algorithm or ("ed25519-sha256" if key.kind == "ed25519" else "rsa-sha256")
    digest = hashlib.sha1 if algorithm == "rsa-sha1" else hashlib.sha256
    headers, body = dkimpy.rfc822_parse(message)
    c = re.search(r"\bc=([^;]+)", tags)
    try:
        canon = CanonicalizationPolicy.from_c_value(c.group(1).strip().encode() if c else b"simple")
    except dkimpy.canonicalization.InvalidCanonicalizationPolicyError:
        canon = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")  # a c= no one knows
    body = canon.canonicalize_body(body)
    if m := re.search(r"\bl=(\d+)", tags):
        body = body[: int(m.group(1))]
    bh = base64.b64encode(digest(body).digest()).decode()
    value = f" v=1; a={algorithm}; {tags}; bh={bh}; b="
    h = re.search(r"\bh=([^;]+)", tags)
    assert h is not None
    names = [n.strip().lower().encode() for n in h.group(1).split(":")]
    chosen = dkimpy.select_headers(headers, names)
    signed = b"".join(n + b":" + v for n, v in canon.canonicalize_headers(chosen))
    ((sname, svalue),) = canon.canonicalize_headers([(b"DKIM-Signature", value.encode())])
    data = signed + sname + b":" + svalue.rstrip(b"\r\n")
    if key.kind == "ed25519":
        signature = key.private.sign(hashlib.sha256(data).digest())
    else:
        hash_algorithm = hashes.SHA1() if algorithm == "rsa-sha1" else hashes.SHA256()
        signature = key.private.sign(data, padding.PKCS1v15(), hash_algorithm)
    header = f"DKIM-Signature:{value}{base64.b64encode(signature).decode()}\r\n"
    return header.encode() + message


@pytest.fixture
def verify() -> Iterator[Any]:
    """verify(raw, {name: TXT}) -> the DkimResults, DNS from a server on 127.0.0.1."""

    def run(raw: bytes, records: dict[str, str]) -> list[DkimResult]:
        with running_zone(simple_zone(records)) as server:

            async def go() -> list[DkimResult]:
                resolver = Resolver(["127.0.0.1"], port=server.port, timeout=1.0)
                return await verify_dkim(SyncDns(resolver), raw)

            return asyncio.run(go())

    yield run


BASE = f"c=relaxed/relaxed; d={DOMAIN}; s=sel; h=from:to:subject:date:message-id"
KEYNAME = f"sel._domainkey.{DOMAIN}"


def _one(results: list[DkimResult]) -> DkimResult:
    assert len(results) == 1
    return results[0]


# ---------------------------------------------------------------- the signer itself


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_own_signatures_pass_and_a_changed_body_fails(
    kind: str, rsa_key: Key, ed_key: Key, verify: Any
) -> None:
    key = rsa_key if kind == "rsa" else ed_key
    raw = sign(key, BASE)
    got = _one(verify(raw, {KEYNAME: key.record()}))
    assert (got.result, got.domain, got.selector) == ("pass", DOMAIN, "sel")
    # RFC 6376 6.1.3: a body hash mismatch is a failed signature, said so.
    changed = _one(verify(raw.replace(b"We lost", b"We won"), {KEYNAME: key.record()}))
    assert changed.result == "fail" and "body" in changed.reason


# ---------------------------------------------------------------- RFC 8301


def test_rsa_sha1_is_not_a_pass(rsa_key: Key, verify: Any) -> None:
    """RFC 8301 3.1: verifiers MUST NOT consider rsa-sha1 signatures valid."""
    raw = sign(rsa_key, BASE, algorithm="rsa-sha1")
    # The signature is cryptographically sound: dkimpy alone calls it valid.
    dns = {KEYNAME.encode() + b".": rsa_key.record().encode()}
    assert dkimpy.verify(raw, dnsfunc=lambda name, timeout=5: dns.get(name))
    got = _one(verify(raw, {KEYNAME: rsa_key.record()}))
    assert got.result == "permerror"
    assert "rsa-sha1" in got.reason and "RFC 8301" in got.reason


# ---------------------------------------------------------------- RFC 6376 3.2 and 3.6.1


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_key_record_with_whitespace_around_equals_passes(
    kind: str, rsa_key: Key, ed_key: Key, verify: Any
) -> None:
    """RFC 6376 3.2: tag-spec = [FWS] tag-name [FWS] "=" [FWS] tag-value [FWS].

    3.6.1: h= and s= are colon-separated lists (with whitespace), p= base64 with FWS.
    """
    key = rsa_key if kind == "rsa" else ed_key
    record = (
        f"v = DKIM1 ; k = {kind} ; h = sha1 : sha256 ; s = email : * ; t = y : s ; "
        f"p = {key.public_b64[:40]} {key.public_b64[40:]}"
    )
    got = _one(verify(sign(key, BASE), {KEYNAME: record}))
    assert got.result == "pass", got


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_quoted_printable_identity_passes(
    kind: str, rsa_key: Key, ed_key: Key, verify: Any
) -> None:
    """RFC 6376 3.5 i= is dkim-quoted-printable: joe=40football... is joe@football..."""
    key = rsa_key if kind == "rsa" else ed_key
    raw = sign(key, BASE + f"; i=joe=40{DOMAIN}")
    got = _one(verify(raw, {KEYNAME: key.record()}))
    assert got.result == "pass", got
    assert got.identity == f"joe@{DOMAIN}"


def test_query_method_list_skips_unknown_methods(rsa_key: Key, verify: Any) -> None:
    """RFC 6376 3.5 q=: a colon-separated list; verifiers use the first method they know."""
    got = _one(verify(sign(rsa_key, BASE + "; q=foo/bar:dns/txt"), {KEYNAME: rsa_key.record()}))
    assert got.result == "pass", got


@pytest.mark.parametrize(
    ("tags", "key_extra", "reason"),
    [
        # RFC 6376 6.1.1: the i= domain must be d= or a subdomain of it (PERMFAIL).
        ("; i=joe@attacker.example", "", "neither d="),
        # 3.6.1 t=s: the i= domain must not be a subdomain of d=.
        (f"; i=joe@sub.{DOMAIN}", "t=s; ", "t=s"),
        # 3.5 x=: a signature past its expiry is not valid.
        (f"; t={int(time.time()) - 7200}; x={int(time.time()) - 3600}", "", "expired"),
        # 3.5 q=: no method the verifier knows.
        ("; q=foo/bar", "", "query method"),
    ],
    ids=["i-not-under-d", "t=s-subdomain-i", "x-expired", "q-unknown"],
)
def test_invalid_signatures_are_permerror_with_a_reason(
    tags: str, key_extra: str, reason: str, rsa_key: Key, verify: Any
) -> None:
    raw = sign(rsa_key, BASE + tags)
    got = _one(verify(raw, {KEYNAME: rsa_key.record(key_extra)}))
    assert got.result == "permerror", got
    assert reason in got.reason
    assert "b'" not in got.reason and "None" not in got.reason


NOW = int(time.time())


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        (f"; t={NOW}; x={NOW}", "x= is not after its timestamp t="),
        (f"; t={NOW + 86400}", "t= is in the future"),
        ("; d=football.example.com", "tag d= appears twice"),
        ("; l=ten", "l=ten is not a body length"),
    ],
    # Named, not numbered by the clock: pytest-xdist workers must collect the same test ids.
    ids=["x-not-after-t", "t-in-the-future", "d-twice", "l-not-a-length"],
)
def test_signature_tag_errors_are_permerror_naming_the_tag(
    tags: str, reason: str, rsa_key: Key, verify: Any
) -> None:
    """RFC 6376 3.2 (duplicate tags invalidate the list) and 3.5 (t=, x=, l= values)."""
    got = _one(verify(sign(rsa_key, BASE + tags), {KEYNAME: rsa_key.record()}))
    assert got.result == "permerror" and reason in got.reason, got


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        # 5.4 and 6.1.1: From MUST be signed.
        ((b"h=from:to:", b"h=to:"), "From header field is not signed"),
        ((b" v=1;", b""), "lacks the required tag(s) v="),
        ((b" v=1;", b" v=2;"), "unsupported signature version v=2"),
        ((b"; s=sel", b"; s sel"), "'s sel' has no '='"),
    ],
)
def test_malformed_signatures_are_permerror(
    edit: tuple[bytes, bytes], reason: str, rsa_key: Key, verify: Any
) -> None:
    raw = sign(rsa_key, BASE).replace(*edit, 1)
    got = _one(verify(raw, {KEYNAME: rsa_key.record()}))
    assert got.result == "permerror" and reason in got.reason, got
    # Even an unparsable signature is named by the domain it claims.
    assert got.domain == DOMAIN


def test_key_lookup_timeout_is_temperror(rsa_key: Key) -> None:
    """RFC 6376 6.1.2: a DNS failure fetching the key is TEMPFAIL."""
    raw = sign(rsa_key, BASE)
    with running_zone({KEYNAME: [TIMEOUT]}) as server:

        async def go() -> list[DkimResult]:
            resolver = Resolver(["127.0.0.1"], port=server.port, timeout=0.3)
            return await verify_dkim(SyncDns(resolver), raw)

        got = _one(asyncio.run(go()))
    assert got.result == "temperror" and KEYNAME in got.reason


def test_body_length_longer_than_the_body_fails(rsa_key: Key, verify: Any) -> None:
    """RFC 6376 3.5 l=: the signer hashed that many octets; a shorter body lost some."""
    raw = sign(rsa_key, BASE + "; l=20")
    assert _one(verify(raw, {KEYNAME: rsa_key.record()})).result == "pass"
    # Content appended after l= octets is not covered: still a pass (RFC 6376 8.2).
    appended = raw + b"P.S. click here\r\n"
    assert _one(verify(appended, {KEYNAME: rsa_key.record()})).result == "pass"
    cut = raw.replace(b"We lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n", b"")
    got = _one(verify(sign(rsa_key, BASE + "; l=9999"), {KEYNAME: rsa_key.record()}))
    assert got.result == "fail" and "longer than the body" in got.reason, got
    assert _one(verify(cut, {KEYNAME: rsa_key.record()})).result == "fail"


def test_t_s_key_with_identity_at_d_passes(rsa_key: Key, verify: Any) -> None:
    """3.6.1 t=s allows an i= whose domain is d= itself."""
    raw = sign(rsa_key, BASE + f"; i=joe@{DOMAIN}")
    assert _one(verify(raw, {KEYNAME: rsa_key.record("t=s; ")})).result == "pass"


@pytest.mark.parametrize(
    ("key_extra", "reason"),
    [
        ("h=sha1; ", "does not allow"),  # 3.6.1 h=: acceptable hash algorithms
        ("s=tlsrpt; ", "not for email"),  # 3.6.1 s=: service types
    ],
)
def test_key_restrictions_are_permerror(
    key_extra: str, reason: str, rsa_key: Key, verify: Any
) -> None:
    got = _one(verify(sign(rsa_key, BASE), {KEYNAME: rsa_key.record(key_extra)}))
    assert got.result == "permerror" and reason in got.reason, got


def test_revoked_key_and_wrong_key_type_are_permerror(
    rsa_key: Key, ed_key: Key, verify: Any
) -> None:
    raw = sign(ed_key, BASE)
    revoked = _one(verify(raw, {KEYNAME: "v=DKIM1; k=ed25519; p="}))
    assert (revoked.result, revoked.reason) == ("permerror", "key revoked (empty p=)")
    # RFC 8463 / 6376 6.1.2: an ed25519-sha256 signature against an RSA key.
    wrong = _one(verify(raw, {KEYNAME: rsa_key.record()}))
    assert wrong.result == "permerror" and "does not fit" in wrong.reason


def test_testing_mode_key_failure_is_neutral(rsa_key: Key, verify: Any) -> None:
    """3.6.1 t=y: mail of a signer in testing mode is treated like unsigned mail."""
    raw = sign(rsa_key, BASE).replace(b"We lost", b"We won")
    got = _one(verify(raw, {KEYNAME: rsa_key.record("t=y; ")}))
    assert got.result == "neutral" and "t=y" in got.reason


def test_missing_key_and_syntax_errors_read_as_text(rsa_key: Key, verify: Any) -> None:
    raw = sign(rsa_key, BASE)
    missing = _one(verify(raw, {}))
    assert (missing.result, missing.reason) == ("permerror", f"no key record at {KEYNAME}")
    bad_c = _one(verify(sign(rsa_key, BASE.replace("relaxed/relaxed", "foobar")), {}))
    assert (bad_c.result, bad_c.reason) == ("permerror", "unknown canonicalization c=foobar")
    synerr = _one(verify(raw, {KEYNAME: "v=DKIM1; k=rsa; synerr"}))
    assert synerr.result == "permerror"
    assert synerr.reason == "key record syntax error: 'synerr' has no '='"


# ---------------------------------------------------------------- parsers, by property

_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,5}", fullmatch=True)
_VALUES = st.from_regex(r"([!-:<-~]{1,6}( [!-:<-~]{1,6})?)?", fullmatch=True)
_WS = st.sampled_from(["", " ", "\t", " \r\n ", "  "])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=6), st.data())
def test_tag_lists_parse_whatever_the_whitespace(tags: dict[str, str], data: Any) -> None:
    """RFC 6376 3.2: FWS around names, '=' and ';', and a trailing ';', change nothing."""
    ws = lambda: data.draw(_WS)  # noqa: E731
    text = ";".join(f"{ws()}{k}{ws()}={ws()}{v}{ws()}" for k, v in tags.items())
    text += data.draw(st.sampled_from(["", ";", " ; "]))
    parsed = parse_tag_list(text.encode(), "test")
    assert parsed == {k.encode(): v.encode() for k, v in tags.items()}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.text(max_size=30), st.text(max_size=30))
def test_authentication_results_stay_well_formed(reason: str, selector: str, comment: str) -> None:
    """Whatever a library or a sender's tags hold, the header parses by RFC 8601's grammar."""
    value = authentication_results(
        "mx.example",
        dkim_results=[
            DkimResult("permerror", "example.com", selector, "@example.com", "x", reason)
        ],
        dmarc=DmarcResult("fail", "example.com", "none", comment, reason=reason),
    )
    methods = parse_authentication_results(value)
    assert [(m.method, m.result) for m in methods] == [("dkim", "permerror"), ("dmarc", "fail")]
    assert "\r" not in value and "\n" not in value


# ---------------------------------------------------------------- Authentication-Results


def test_authentication_results_name_domain_selector_and_reason(rsa_key: Key, verify: Any) -> None:
    """RFC 8601 2.7.1: header.d, header.i, header.s; a reason a reader understands."""
    results = verify(sign(rsa_key, BASE, algorithm="rsa-sha1"), {KEYNAME: "synerr"})
    results += verify(sign(rsa_key, BASE + f"; i=joe=40{DOMAIN}"), {KEYNAME: rsa_key.record()})
    value = authentication_results("mx.example.net", dkim_results=results)
    first, second = parse_authentication_results(value)
    assert (first.method, first.result) == ("dkim", "permerror")
    assert first.reason == "rsa-sha1 is not acceptable (RFC 8301 section 3.1)"
    assert first.props == {
        "header.d": DOMAIN,
        "header.s": "sel",
        "header.i": f"@{DOMAIN}",
        "header.a": "rsa-sha1",
    }
    assert (second.result, second.reason, second.props["header.i"]) == (
        "pass",
        None,
        f"joe@{DOMAIN}",
    )
    assert "None" not in value and "b'" not in value


# ---------------------------------------------------------------- DMARC (RFC 7489, RFC 9091)

DMARC_ZONE = {
    "_dmarc.pct0.example": "v=DMARC1; p=reject; pct=0",
    "_dmarc.quar0.example": "v=DMARC1; p=quarantine; pct=0",
    "_dmarc.half.example": "v=DMARC1; p=reject; pct=50",
    "_dmarc.org.example": "v=DMARC1; p=none; sp=quarantine; np=reject",
    "sub.org.example": "exists",
}


def _dmarc(from_domain: str, sample_key: str = "<1@x>") -> DmarcResult:
    with running_zone(simple_zone(DMARC_ZONE)) as server:

        async def go() -> DmarcResult:
            resolver = Resolver(["127.0.0.1"], port=server.port, timeout=1.0)
            return await evaluate_dmarc(
                resolver, [f"a@{from_domain}"], None, [], sample_key=sample_key
            )

        return asyncio.run(go())


@pytest.mark.parametrize(
    ("domain", "published", "applied"),
    [("pct0.example", "reject", "quarantine"), ("quar0.example", "quarantine", "none")],
)
def test_dmarc_pct_0_applies_the_next_lower_policy(
    domain: str, published: str, applied: str
) -> None:
    """RFC 7489 6.6.4: mail outside the pct sample gets the next lower policy."""
    got = _dmarc(domain)
    assert (got.result, got.published, got.policy) == ("fail", published, applied)
    (line,) = parse_authentication_results(authentication_results("mx", dmarc=got))
    assert line.props["policy.dmarc"] == applied
    assert f"p={published} pct=0: not sampled, {applied} applied" in line.comments[0]
    assert line.reason == f"neither DKIM nor SPF passed aligned with {domain}"


def test_dmarc_pct_sampling_is_deterministic_per_message() -> None:
    draws = {key: _dmarc("half.example", key).policy for key in (f"<{i}@x>" for i in range(24))}
    # The same message falls on the same side every time; with pct=50 both sides occur.
    assert all(_dmarc("half.example", key).policy == policy for key, policy in draws.items())
    assert set(draws.values()) == {"reject", "quarantine"}


def test_dmarc_subdomain_sp_and_nonexistent_np() -> None:
    """RFC 7489 6.3 sp= for an existing subdomain; RFC 9091 np= for a non-existent one."""
    existing, missing = _dmarc("sub.org.example"), _dmarc("nowhere.org.example")
    assert (existing.policy, existing.policy_note) == ("quarantine", "sp=quarantine")
    assert (missing.policy, missing.policy_note) == ("reject", "np=reject")
    assert _dmarc("org.example").policy == "none"


# ---------------------------------------------------------------- SPF (RFC 7208) in the plugin

SPF_ZONE = {
    "plusall.example": [("TXT", txt_rdata("v=spf1 a:mail.plusall.example +all"))],
    "bareall.example": [("TXT", txt_rdata("v=spf1 all"))],
    "strict.example": [("TXT", txt_rdata("v=spf1 ip4:192.0.2.1 -all"))],
}
RELAYED = (
    # Postfix on the gateway host records the trusted relay it took the message from...
    b"Received: from relay.corp.example (relay.corp.example [10.1.2.3])\r\n"
    b"\tby gw.corp.example (Postfix) with ESMTP id 4Xyz; Mon, 1 Jan 2024 10:00:02 +0000\r\n"
    # ...which recorded the sender's server, the hop SPF is about.
    b"Received: from mail.strict.example (mail.strict.example [192.0.2.1])\r\n"
    b"\tby relay.corp.example (Postfix) with ESMTP id 3Abc; Mon, 1 Jan 2024 10:00:01 +0000\r\n"
)


@pytest.fixture(scope="module")
def spf_dns() -> Iterator[ZoneServer]:
    with running_zone(SPF_ZONE) as server:
        yield server


def _scan(dns: ZoneServer, raw: bytes, envelope: Envelope, extra: str = "") -> Any:
    config = (
        f"[antispam]\ndns_servers = ['127.0.0.1']\ndns_port = {dns.port}\n"
        f"dns_timeout = 0.5\nbayes = false\n{extra}"
    )
    return scan(raw, builtins=True, config=config, envelope=envelope)


def _spf_line(decision: Any) -> Method | None:
    value = dict(decision.action.add_headers)["Authentication-Results"]
    return next((m for m in parse_authentication_results(value) if m.method == "spf"), None)


@pytest.mark.parametrize("domain", ["plusall.example", "bareall.example"])
def test_spf_plus_all_is_a_finding(spf_dns: ZoneServer, domain: str) -> None:
    """RFC 7208 5.1: "all" (qualifier + by default) matches every host on the Internet."""
    envelope = Envelope(
        mail_from=f"a@{domain}", rcpt_to=["b@example.net"], client_address="203.0.113.9"
    )
    decision = _scan(spf_dns, make_message(sender=f"a@{domain}"), envelope)
    finding = expect_finding(decision, "SPF_PLUSALL")
    assert finding.details == {"domain": domain} and finding.score > 0
    line = _spf_line(decision)
    assert line is not None and line.result == "pass" and "+all" in (line.reason or "")
    strict = Envelope(
        mail_from="a@strict.example", rcpt_to=["b@example.net"], client_address="192.0.2.1"
    )
    no_finding(_scan(spf_dns, make_message(sender="a@strict.example"), strict), "SPF_PLUSALL")


def test_spf_is_checked_at_the_first_untrusted_received_hop(spf_dns: ZoneServer) -> None:
    envelope = Envelope(
        mail_from="a@strict.example",
        rcpt_to=["b@example.net"],
        client_address="10.1.2.3",
        helo="relay.corp.example",
    )
    raw = RELAYED + make_message(sender="a@strict.example")
    # Without trusted_networks the relay itself is the client, and it is not allowed.
    untrusted = _spf_line(_scan(spf_dns, raw, envelope))
    assert untrusted is not None and untrusted.result == "fail"
    trusted = _scan(spf_dns, raw, envelope, "trusted_networks = ['10.0.0.0/8']\n")
    line = _spf_line(trusted)
    assert line is not None and line.result == "pass"
    assert line.props == {"smtp.mailfrom": "strict.example"}
    assert line.comments == [
        "client 192.0.2.1 helo mail.strict.example from Received: field 2, below trusted relays"
    ]
    expect_finding(trusted, "SPF_PASS")
    # Every hop inside: no client outside to check, so no SPF result at all.
    inside = _scan(spf_dns, raw, envelope, "internal_networks = ['10.0.0.0/8', '192.0.2.0/24']\n")
    assert _spf_line(inside) is None


@pytest.mark.parametrize(
    ("received", "want"),
    [
        ([], SpfHop("198.51.100.7", "client.example")),  # the client is not trusted
        # A trusted relay's field that names no address: nothing reliable, no SPF.
        (["from relay.corp.example by gw.corp.example with ESMTP"], None),
        # A local hand-off between the relay's own processes is stepped over.
        (
            [
                "by relay.corp.example (Postfix, from userid 0) id 1",
                "from out.sender.example (out.sender.example [198.51.100.20]) by relay",
            ],
            SpfHop(
                "198.51.100.20",
                "out.sender.example",
                "from Received: field 2, below trusted relays",
            ),
        ),
    ],
)
def test_spf_hop_selection(received: list[str], want: SpfHop | None) -> None:
    client = "198.51.100.7" if not received else "10.9.9.9"
    assert spf_client(client, "client.example", received, ["10.0.0.0/8"]) == want


# ---------------------------------------------------------------- the command line


def test_scan_and_rules_test_take_the_client_ip_and_helo(
    spf_dns: ZoneServer, tmp_path: Path
) -> None:
    config = tmp_path / "mailwarden.toml"
    config.write_text(
        f'[gateway]\nhome = "{tmp_path / "home"}"\n'
        f"[antispam]\ndns_servers = ['127.0.0.1']\ndns_port = {spf_dns.port}\nbayes = false\n"
    )
    message = tmp_path / "m.eml"
    message.write_bytes(make_message(sender="a@strict.example"))
    runner = CliRunner()
    args = ["--config", str(config), "--json", "--sender", "a@strict.example"]
    for ip, code in (("192.0.2.1", "SPF_PASS"), ("203.0.113.5", "SPF_FAIL")):
        result = runner.invoke(
            cli, ["scan", *args, "--client-ip", ip, "--helo", "mx.example", str(message)]
        )
        record = json.loads(result.output)
        assert code in [f["code"] for f in record["verdict"]["findings"]], result.output
    bad = runner.invoke(cli, ["scan", *args, "--client-ip", "not-an-ip", str(message)])
    assert bad.exit_code == 2 and "--client-ip" in bad.output
    result = runner.invoke(
        cli,
        [
            "rules",
            "test",
            "--config",
            str(config),
            "--from",
            "a@strict.example",
            "--to",
            "b@example.net",
            "--client-ip",
            "203.0.113.5",
            "--helo",
            "mx.example",
            str(message),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "SPF_FAIL" in result.output
    assert "  auth       mailwarden; spf=fail" in result.output
