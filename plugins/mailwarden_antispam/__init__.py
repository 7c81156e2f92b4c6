"""The built-in antispam detector: scored checks folded against thresholds.

Checks: the admin's block/allow lists, GTUBE, rule files in a SpamAssassin subset (header,
body, rawbody, uri, full, meta), SPF/DKIM/ARC/DMARC with an ``Authentication-Results``
header, DNS block lists, a Bayesian classifier, and heuristics (phishing links, lookalike
domains, missing headers, hidden text, bulk markers). Each hit is a finding with a stable code
and a score; scores and group caps come from the rule files (``rules/*.cf``, one file per
group), the total maps to a status with the thresholds. See docs/antispam.md.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import ipaddress
import logging
import time
from collections.abc import Generator
from pathlib import Path
from typing import Annotated, Any

import msgspec

from mailwarden_sdk import (
    Action,
    Category,
    Finding,
    Host,
    ParsedMessage,
    Quarantine,
    ScanContext,
    SpamStatus,
    StashKey,
    StoreDescriptor,
    Verdict,
    WhenFull,
    hookimpl,
    nonblocking,
    plugin_data_dir,
    run_cpu_bound,
    shared_state,
)
from mailwarden_sdk.findings import spam_rule
from mailwarden_sdk.offload import INLINE_MAX_BYTES, INLINE_MAX_FIELDS

from . import auth, heuristics
from .bayes import JOURNAL_MAX_ENTRIES, Bayes, band, tokens
from .content import body_text, links, message_facts, message_urls, rawbody_text
from .dnslists import DnsList, query_lists
from .fuzzy import MAX_ENTRIES as FUZZY_MAX_ENTRIES
from .fuzzy import FuzzyStore, sketch
from .quarantine import KEEP, SpamQuarantine, SpamQuarantineView, keep
from .resolver import DnsBudget, Resolver, SyncDns
from .rules import RuleSet, RuleTargets, load_rules
from .sa_evals import parse_received, received_times, relay_headers
from .update import current_rules

__all__ = ["AntispamConfig", "AntispamPlugin", "DnsList"]

log = logging.getLogger(__name__)

DETECTOR = "antispam"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
BUILTIN_RULES = Path(__file__).parent / "rules"
_KEEP_AT_ZERO = frozenset({"BULK_MAIL"})
_HEADERS: StashKey[list[tuple[str, str]]] = StashKey("antispam headers")
# The Bayes band of this message, scored or not: autolearn checks that Bayes does not disagree.
_BAND: StashKey[str] = StashKey("antispam bayes band")
# Set when this plugin's scan ran for the message: a rule may leave antispam out (an
# always-allow rule does), and mail nobody judged must teach Bayes nothing.
_SCANNED: StashKey[bool] = StashKey("antispam scanned")
# The message's Bayes tokens as the scan computed them: autolearn's lesson reuses them.
_TOKENS: StashKey[set[str]] = StashKey("antispam bayes tokens")
# Its body text and URLs as the scan extracted them (every check reads them): so does
# autolearn when the scan did not need the tokens.
_TEXT: StashKey[tuple[str, list[str]]] = StashKey("antispam body text and urls")
# The Bayes store autolearn would queue this message's lesson in (set by the scan when
# autolearn is on): the verdict hook's `nonblocking` check asks it for room.
_LEARNER: StashKey[Bayes] = StashKey("antispam autolearn store")


class AntispamConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[antispam]``: thresholds, rule files, authentication, DNS, lists, Bayes, quarantine.

    A total score at or above ``probable_spam_score`` / ``spam_score`` earns that status.
    ``rule_files`` adds rule files or directories (``*.cf``) in the SpamAssassin subset, for
    example ``/usr/share/spamassassin``; ``scores`` overrides the score of any code;
    ``group_caps`` caps what one group (rule file name without ``.cf``) adds. Sender patterns
    take ``*``/``?`` wildcards (``*@example.com``); IP entries are addresses or networks.
    ``quarantine`` names the statuses whose messages the spam quarantine keeps (the rule's
    action then decides whether they are also delivered). A released message goes to its
    original recipients the way the gateway delivers mail (relay queue or Maildir), unless
    ``release_host`` is set: then over SMTP to ``release_host``/``release_port`` (the MTA's
    re-injection port, for milter set-ups where the MTA delivers).

    DNS: each query may take ``dns_timeout`` seconds and all of one message's lookups
    ``dns_budget`` seconds together; after ``dns_breaker_timeouts`` timeouts in a row the
    servers are taken for down and not asked for ``dns_breaker_cooloff`` seconds. Checks
    that could not ask give temperror and the message a ``DNS_UNAVAILABLE`` finding.
    """

    probable_spam_score: float = 5.0
    spam_score: float = 10.0
    gtube: bool = True
    builtin_rules: bool = True
    rule_files: list[str] = msgspec.field(default_factory=list)
    scores: dict[str, float] = msgspec.field(default_factory=dict)
    group_caps: dict[str, float] = msgspec.field(default_factory=dict)
    blocked_senders: list[str] = msgspec.field(default_factory=list)
    allowed_senders: list[str] = msgspec.field(default_factory=list)
    blocked_ips: list[str] = msgspec.field(default_factory=list)
    allowed_ips: list[str] = msgspec.field(default_factory=list)
    authentication: bool = True
    authserv_id: str = "mailwarden"
    dmarc_tree_walk: bool = False
    # Relays whose Received: fields are believed (trusted) and the organisation's own hosts
    # (internal): SPF is checked for the first hop in neither (docs/antispam.md).
    trusted_networks: list[str] = msgspec.field(default_factory=list)
    internal_networks: list[str] = msgspec.field(default_factory=list)
    dkim_min_key_bits: int = 1024
    dns_servers: list[str] = msgspec.field(default_factory=list)
    dns_port: int = 53
    dns_timeout: float = 2.0
    # All DNS of one message's scan (SPF, DKIM, ARC, DMARC, lists) within this many seconds.
    dns_budget: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # The circuit breaker: so many timeouts in a row and the servers are not asked for the
    # cool-off (then one probe query), so a dead resolver does not cost every message.
    dns_breaker_timeouts: Annotated[int, msgspec.Meta(gt=0)] = 5
    dns_breaker_cooloff: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    dns_cache_entries: int = 10_000
    dns_lists: list[DnsList] = msgspec.field(default_factory=list)
    protected_domains: list[str] = msgspec.field(
        default_factory=lambda: [
            "paypal.com",
            "apple.com",
            "microsoft.com",
            "google.com",
            "amazon.com",
            "facebook.com",
            "netflix.com",
        ]
    )
    bayes: bool = True
    bayes_min_learned: int = 10
    # Tokens kept (the oldest learned are expired above this), as SpamAssassin's
    # bayes_expiry_max_db_size.
    bayes_max_tokens: Annotated[int, msgspec.Meta(ge=100)] = 150_000
    autolearn: bool = True
    autolearn_spam_score: float = 12.0
    autolearn_ham_score: float = 0.1
    autolearn_min_points: float = 3.0
    quarantine: list[str] = msgspec.field(default_factory=list)
    # The spam quarantine (<home>/quarantine/spam): the oldest are removed above this.
    quarantine_max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1 << 30
    # Empty: released mail goes the gateway's own delivery path.
    release_host: str = ""
    release_port: int = 10026
    add_headers: bool = True
    # A signed rule channel ('mailwarden antispam rules update'): the tarball's URL and the
    # admin's Ed25519 public key (base64); its rules replace the built-in ones once fetched.
    update_url: str = ""
    update_public_key: str = ""

    def __post_init__(self) -> None:
        if self.spam_score < self.probable_spam_score:
            raise ValueError("spam_score must not be below probable_spam_score")
        for status in self.quarantine:
            if status not in ("spam", "probable_spam", "bulk", "blocked"):
                raise ValueError(f"quarantine: unknown status {status!r}")
        for net in (*self.blocked_ips, *self.allowed_ips, *self.trusted_networks):
            ipaddress.ip_network(net, strict=False)
        for net in self.internal_networks:
            ipaddress.ip_network(net, strict=False)
        if self.dns_timeout <= 0:
            raise ValueError("dns_timeout must be positive")
        if self.dns_budget < self.dns_timeout:
            raise ValueError(
                f"dns_budget ({self.dns_budget:g}) must not be below dns_timeout "
                f"({self.dns_timeout:g}): one lookup could not be waited for"
            )


def _sender_matches(patterns: list[str], address: str) -> bool:
    address = address.lower()
    return any(fnmatch.fnmatchcase(address, p.lower()) for p in patterns)


def _ip_in(networks: list[str], address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


class AntispamPlugin:
    """Emits scored antispam findings and turns the total score into a spam status."""

    requires_sdk = ">=1.21,<2"  # FlagExpressions (paragraph_lines: 1.20, nonblocking: 1.19)

    def __init__(self) -> None:
        self.config = AntispamConfig()
        self.rules: RuleSet = RuleSet().compile()
        # Also run the rules a score of 0 turns off: `antispam fit` learns their scores.
        self.every_rule = False
        self._uses_relays = False
        self.resolver: Resolver | None = None
        self.bayes: Bayes | None = None
        self.fuzzy: FuzzyStore | None = None
        self.quarantine: SpamQuarantine | None = None
        self.host: Host | None = None
        self._view: SpamQuarantineView | None = None
        self._update_root: Path | None = None
        self._own_rules: Path | None = BUILTIN_RULES
        self._update_checked = 0.0

    # ------------------------------------------------------------ set-up

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return DETECTOR, AntispamConfig

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.host = host
        self.configure(
            host.config_for(DETECTOR) or AntispamConfig(), plugin_data_dir(host, DETECTOR)
        )
        if self.bayes is not None and self.fuzzy is not None:
            # In a cluster both read and write the shared state too (docs/cluster.md).
            self.bayes.shared = self.fuzzy.shared = shared_state(host)
            self.bayes.reported = self.fuzzy.report

    def configure(self, config: AntispamConfig, data_dir: Path | None = None) -> None:
        """Load rules and open stores for ``config`` (also used by tests and the benchmark)."""
        self.config = config
        # The built-in files load last, so their scores for our own checks (SPF_FAIL,
        # BAYES_99...) win over a stock rule set's scores for its rules of the same name.
        self._update_root = data_dir / "rules-update" if data_dir is not None else None
        self._own_rules = self._own_rules_dir()
        self.rules = self._load(self._own_rules)
        # Parsing Received: lines costs per message; only rule sets that read them pay it.
        self._uses_relays = self.rules.uses_relays
        log.info("antispam: %d rules loaded, skipped %s", len(self.rules.rules), self.rules.skipped)
        self.resolver = Resolver(
            config.dns_servers or None,
            port=config.dns_port,
            timeout=config.dns_timeout,
            cache_entries=config.dns_cache_entries,
            breaker_timeouts=config.dns_breaker_timeouts,
            breaker_cooloff=config.dns_breaker_cooloff,
        )
        if data_dir is not None:
            if config.bayes:
                self.bayes = Bayes(data_dir / "bayes", max_tokens=config.bayes_max_tokens)
                # Sketches of spam people reported, fed by the Bayes lessons (fuzzy.py).
                self.fuzzy = FuzzyStore(data_dir / "fuzzy")
            if config.quarantine:
                # The gateway's one quarantine store, in its home: the spam kind of it.
                self.quarantine = SpamQuarantine(data_dir.parent, config.quarantine_max_bytes)
                # Releases a process that is gone left half done: held again once stale.
                self.quarantine.recover()

    def _own_rules_dir(self) -> Path | None:
        """The project's rules: the last good channel update, else the built-in files."""
        if not self.config.builtin_rules:
            return None
        updated = current_rules(self._update_root) if self._update_root is not None else None
        return updated or BUILTIN_RULES

    def _load(self, own: Path | None) -> RuleSet:
        paths = [Path(p) for p in self.config.rule_files]
        paths += [own] if own is not None else []
        # A cold cache (the stock set takes minutes to compile) must not hold up the start:
        # the rules answer on re meanwhile, the same answers.
        return load_rules(paths, self.config.group_caps, background=True, unscored=self.every_rule)

    async def _follow_updates(self) -> None:
        """Load the channel's rules once 'rules update' switched them (checked every 10 s)."""
        now = time.monotonic()
        if self._update_root is None or now - self._update_checked < 10.0:
            return
        self._update_checked = now
        own = self._own_rules_dir()
        if own == self._own_rules:
            return
        try:
            rules = await asyncio.to_thread(self._load, own)
        except Exception as exc:  # the rules in use stay
            log.warning("antispam: updated rules in %s not loaded: %s", own, exc)
            self._own_rules = own
            return
        # One assignment: a scan under way finishes with the rules it started with.
        self.rules, self._own_rules = rules, own
        self._uses_relays = rules.uses_relays
        log.info("antispam: rules from %s loaded (%d rules)", own, len(rules.rules))

    @hookimpl
    async def mailwarden_shutdown(self) -> None:
        if self.resolver is not None:
            await self.resolver.aclose()
        for store in (self.bayes, self.fuzzy, self.quarantine):
            if store is not None:
                store.close()
        self.bayes = self.fuzzy = self.quarantine = None

    @hookimpl
    async def mailwarden_learn(self, raw: bytes, label: str, by: str) -> str | None:
        # The running gateway's own Bayes: LMDB must not be opened twice in one process, and
        # the journal records who taught what, as for the CLI and the quarantine.
        bayes = self.bayes
        if bayes is None:
            return None
        if label == "forget":
            done = await asyncio.to_thread(bayes.unlearn, raw, by)
            return "forgotten" if done else "not learned before"
        done = await asyncio.to_thread(bayes.learn, raw, label, by)
        return f"learned as {label}" if done else f"already learned as {label}"

    @hookimpl
    def mailwarden_data_stores(self, host: Host) -> list[StoreDescriptor]:
        config: AntispamConfig = host.config_for(DETECTOR) or AntispamConfig()
        base = host.data_dir / DETECTOR
        stores = [
            StoreDescriptor(
                name="antispam bayes",
                path=str(base / "bayes"),
                holds="word and host tokens with spam/ham counts; digests and Message-IDs of "
                "learned messages with who learned them and when (the journal of learning "
                f"acts keeps the newest {JOURNAL_MAX_ENTRIES:,})",
                read_permission="settings.view",
            )
        ]
        if config.bayes:
            stores.append(
                StoreDescriptor(
                    name="antispam fuzzy hashes",
                    path=str(base / "fuzzy"),
                    holds="24 hashes of word shingles per message a person reported as spam, "
                    "each pointing to the reported message's digest; no text (fuzzy.py), "
                    "each expiring after 30 days",
                    max_entries=FUZZY_MAX_ENTRIES,
                    # Capped in its own LMDB transactions (those expiring first go), as a cache.
                    when_full=WhenFull.EVICT_LRU,
                    read_permission="settings.view",
                )
            )
        # The spam kind's message files in the quarantine store (its index is the core's):
        # the core's enforcer may remove the oldest files too; the index forgets those entries.
        stores.append(
            StoreDescriptor(
                name="spam quarantine",
                path=str(host.data_dir / "quarantine" / "spam"),
                holds="messages held as spam, in full (one file each), with envelope sender, "
                "recipients, subject and score in the quarantine index",
                max_bytes=config.quarantine_max_bytes,
                when_full=WhenFull.REMOVE_OLDEST,
                read_permission="queues.view",
            )
        )
        return stores

    @hookimpl
    def mailwarden_quarantines(self) -> list[Quarantine]:
        """The spam quarantine for the web interface, while it is open."""
        if self.quarantine is None or self.host is None:
            return []
        view = self._view
        if view is None or view.store is not self.quarantine or view.bayes is not self.bayes:
            # One view per open store: it knows which ids are being released right now.
            view = SpamQuarantineView(self.quarantine, self.host, self.bayes, self._release_target)
            self._view = view
        return [view]

    def _release_target(self) -> tuple[str, int] | None:
        cfg = self.config
        return (cfg.release_host, cfg.release_port) if cfg.release_host else None

    @hookimpl
    def mailwarden_cli_commands(self) -> list[Any]:
        from .cli import antispam

        return [antispam]

    # ------------------------------------------------------------ scanning

    def _score(self, code: str) -> float:
        score = self.config.scores.get(code)
        if score is None:
            rule = self.rules.rules.get(code)
            score = self.rules.score_of(rule) if rule is not None else 0.0
        return score

    def _finding(
        self,
        code: str,
        details: dict[str, str],
        part: int | None = None,
        score: float | None = None,
    ) -> Finding:
        if score is None:
            score = self._score(code)
        return Finding(
            code=code,
            detector=DETECTOR,
            category=Category.ANTISPAM,
            status="hit",
            score=score,
            details=details,
            part=part,
        )

    @hookimpl
    async def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        cfg = self.config
        ctx.stash[_SCANNED] = True
        if cfg.autolearn and ctx.live and self.bayes is not None:
            ctx.stash[_LEARNER] = self.bayes
        env = ctx.envelope
        message = ctx.message
        if _sender_matches(cfg.allowed_senders, env.mail_from) or _ip_in(
            cfg.allowed_ips, env.client_address
        ):
            return [spam_rule(DETECTOR, "ALLOWED_SENDER", 0.0, status=SpamStatus.ALLOWED)]
        if _sender_matches(cfg.blocked_senders, env.mail_from) or _ip_in(
            cfg.blocked_ips, env.client_address
        ):
            return [spam_rule(DETECTOR, "BLOCKED_SENDER", 0.0, status=SpamStatus.BLOCKED)]
        if cfg.gtube:
            # Any decoded part, attachments included: a test message may carry the string in
            # a text file (SpamAssassin's extracttext test does), and it is never mail's own.
            for part in message.leaves():
                # bytes.find: a single literal, tens of times faster than a matcher call.
                if GTUBE in part.decoded():
                    # GTUBE is decisive by definition: spam whatever the thresholds.
                    return [
                        spam_rule(
                            DETECTOR,
                            "GTUBE",
                            1000.0,
                            part=part.index,
                            status=SpamStatus.SPAM,
                            rule="GTUBE test pattern",
                        )
                    ]
        await self._follow_updates()
        hits: dict[str, dict[str, str]] = {}
        size = len(ctx.raw)
        extra: list[Finding] = []
        urls = message_urls(message)
        # Fuzzy hashes, Bayes and the body rules all read the body text: extracted once.
        body = await run_cpu_bound(size, body_text, message)
        ctx.stash[_TEXT] = (body, urls)
        if self.resolver is not None and (cfg.authentication or cfg.dns_lists):
            dns = DnsBudget(self.resolver, cfg.dns_budget)
            checks = []
            if cfg.authentication:
                checks.append(self._auth(ctx, dns, hits))
            if cfg.dns_lists:
                checks.append(self._lists(ctx, dns, urls, extra))
            await asyncio.gather(*checks)
            if dns.skipped:
                # The temperror results say what failed; this says why, once per message.
                extra.append(_dns_unavailable(dns))
        for code, details in (
            *heuristics.link_checks(links(message), urls, cfg.protected_domains),
            *heuristics.header_checks(message),
            *heuristics.hidden_text(message),
            *heuristics.bulk_markers(message),
        ):
            hits.setdefault(code, details)
        if self.fuzzy is not None and self.fuzzy.may_match():
            # With nothing reported there is nothing to compare with: no sketch to compute.
            fuzzy = await self.fuzzy.check(await run_cpu_bound(size, sketch, message, body))
            if fuzzy is not None:
                hits["FUZZY_SPAM"] = fuzzy
        if self.bayes is not None:
            toks = None
            if self.bayes.shared is not None or min(self.bayes.counts()) >= cfg.bayes_min_learned:
                # Once for the verdict and the lesson autolearn may draw from it; a store too
                # new to classify leaves them to autolearn, in the hook thread, off the loop.
                toks = ctx.stash[_TOKENS] = await run_cpu_bound(size, tokens, message, body, urls)
            probability = await self.bayes.probability_async(
                message, cfg.bayes_min_learned, size, toks
            )
            if probability is not None:
                hits[band(probability)] = {"probability": f"{probability:.4f}"}
                ctx.stash[_BAND] = band(probability)
        targets = await run_cpu_bound(size, self._targets, ctx, urls, body)
        matched = await run_cpu_bound(size, self.rules.match, targets, set(hits))
        for rule in matched:
            hits.setdefault(rule.name, {"rule": rule.description[:120]} if rule.description else {})
        # Zero-score results (SPF_NONE, ARC_PASS...) fed the metas and the
        # Authentication-Results header; as findings they would read as detections: none is
        # built for them.
        findings = []
        for name, details in sorted(hits.items()):
            code = _code(name)
            score = self._score(code)
            if score or code in _KEEP_AT_ZERO:
                findings.append(self._finding(code, details, score=score))
        # One defect found by two rules (a heuristic and its stock twin) counts once. Only a
        # replacement that scores replaces: one the admin scored 0 leaves the code counting.
        scored = {f.code for f in (*findings, *extra) if f.score}
        replaced = self.rules.replaced(scored)
        findings = [f for f in findings if f.code not in replaced]
        findings = self._cap_groups(findings)
        return findings + extra

    def local_hits(self, message: ParsedMessage, mail_from: str = "") -> set[str]:
        """The codes of the checks that need nothing but the message (heuristics and rule
        files; no DNS, no Bayes): what ``antispam fit`` learns scores from."""
        urls = message_urls(message)
        hits = {
            code
            for code, _details in (
                *heuristics.link_checks(links(message), urls, self.config.protected_domains),
                *heuristics.header_checks(message),
                *heuristics.hidden_text(message),
                *heuristics.bulk_markers(message),
            )
        }
        targets = self._targets_of(message, mail_from, urls)
        return hits | {r.name for r in self.rules.match(targets, hits)}

    def _targets(self, ctx: ScanContext, urls: list[str], body: str) -> RuleTargets:
        return self._targets_of(ctx.message, ctx.envelope.mail_from, urls, body)

    def _targets_of(
        self, message: ParsedMessage, mail_from: str, urls: list[str], body: str | None = None
    ) -> RuleTargets:
        headers: dict[str, list[str]] = {}
        lines = []
        for name, value in message.headers:
            headers.setdefault(name.lower(), []).append(value)
            lines.append(f"{name}: {value}")
        for key, values in headers.items():
            # Only a value with an encoded word decodes to other text (decode_header_ex).
            if len(values) == 1 and "=?" in values[0]:
                decoded = message.root.decoded_header(key)
                if decoded is not None:
                    values[0] = decoded
        if mail_from:
            headers.setdefault("envelopefrom", [mail_from])
        received = headers.get("received", [])
        if self._uses_relays:
            # SpamAssassin's own pseudo-headers replace any the sender wrote.
            headers.update(relay_headers(parse_received(received)))
        return RuleTargets(
            headers=headers,
            body=body_text(message) if body is None else body,
            rawbody=rawbody_text(message),
            uris=urls,
            full=message.raw.decode("utf-8", "replace"),
            all_headers="\n".join(lines),
            facts=message_facts(message, headers, received_times(received))
            if self.rules.uses_evals
            else None,
        )

    def _cap_groups(self, findings: list[Finding]) -> list[Finding]:
        totals: dict[str, float] = {}
        for f in findings:
            rule = self.rules.rules.get(f.code)
            if rule is not None and f.score > 0:
                totals[rule.group] = totals.get(rule.group, 0.0) + f.score
        out = list(findings)
        for group, total in sorted(totals.items()):
            cap = self.rules.group_caps.get(group)
            if cap is not None and total > cap:
                out.append(spam_rule(DETECTOR, "GROUP_CAP", round(cap - total, 3), group=group))
        return out

    async def _auth(
        self, ctx: ScanContext, dns: DnsBudget, hits: dict[str, dict[str, str]]
    ) -> None:
        cfg = self.config
        env, message, raw = ctx.envelope, ctx.message, ctx.raw
        sync = SyncDns(dns)
        spf_task = None
        hop = auth.spf_client(
            env.client_address,
            env.helo or "",
            message.header_all("received"),
            [*cfg.trusted_networks, *cfg.internal_networks],
        )
        if hop is not None:
            spf_task = auth.check_spf(
                sync, hop.ip, env.mail_from, hop.helo, cfg.dns_budget, hop.note
            )
        dkim_results, arc = await asyncio.gather(
            auth.verify_dkim(sync, raw, cfg.dkim_min_key_bits),
            auth.verify_arc(sync, raw, cfg.dkim_min_key_bits),
        )
        spf_result = await spf_task if spf_task is not None else None
        dmarc = await auth.evaluate_dmarc(
            dns,
            message.header_all("from"),
            spf_result,
            dkim_results,
            cfg.dmarc_tree_walk,
            # pct sampling by the message's own identity: a retry falls the same way.
            message.header("message-id") or raw.split(b"\r\n\r\n", 1)[-1],
        )
        if spf_result is not None:
            hits[f"SPF_{spf_result.result.upper()}"] = {"domain": spf_result.domain}
            if spf_result.plus_all:
                hits["SPF_PLUSALL"] = {"domain": spf_result.domain}
        for r in dkim_results:
            code = {"pass": "DKIM_VALID", "fail": "DKIM_INVALID"}.get(r.result, "DKIM_ERROR")
            hits.setdefault(code, {"domain": r.domain, "result": r.result})
        if arc.result != "none":
            hits["ARC_PASS" if arc.result == "pass" else "ARC_INVALID"] = {}
        if dmarc.result == "pass":
            hits["DMARC_PASS"] = {"domain": dmarc.from_domain or ""}
        elif dmarc.result == "fail":
            code = f"DMARC_FAIL_{(dmarc.policy or 'none').upper()}"
            hits[code] = {"domain": dmarc.from_domain or "", "policy": dmarc.policy or "none"}
        ctx.stash.setdefault(_HEADERS, []).append(
            (
                "Authentication-Results",
                auth.authentication_results(cfg.authserv_id, spf_result, dkim_results, arc, dmarc),
            )
        )

    async def _lists(
        self, ctx: ScanContext, dns: DnsBudget, urls: list[str], out: list[Finding]
    ) -> None:
        env = ctx.envelope
        domains: list[str] = []
        if "@" in env.mail_from:
            domains.append(env.mail_from.rpartition("@")[2].lower())
        found = auth.from_domains(ctx.message.header_all("from"))
        if isinstance(found, list):
            domains.extend(d for d in found if d not in domains)
        hosts = [h for h in (_url_host(u) for u in urls) if h]
        hits, failed = await query_lists(
            dns, self.config.dns_lists, env.client_address, domains, hosts
        )
        for hit in hits:
            out.append(
                spam_rule(
                    DETECTOR, hit.code, hit.score, zone=hit.zone, item=hit.item, answer=hit.answer
                )
            )
        for zone in failed:
            out.append(spam_rule(DETECTOR, "DNSLIST_UNAVAILABLE", 0.0, zone=zone))

    # ------------------------------------------------------------ deciding

    # Only keeping a message in the spam quarantine writes (and syncs) the store.
    @hookimpl(wrapper=True)
    @nonblocking(when=lambda ctx, **_: not ctx.stash.get(KEEP, False))
    def mailwarden_action(
        self, ctx: ScanContext, verdict: Verdict, action: Action
    ) -> Generator[None, Action | None, Action | None]:
        """The spam quarantine keeps the message once the other action hooks are done (the
        action as they leave it); the gateway does not hold it again."""
        changed = yield
        if self.quarantine is None or not ctx.stash.get(KEEP, False):
            return changed
        return keep(self.quarantine, ctx, verdict, changed or action) or changed

    @hookimpl(trylast=True)
    @nonblocking(when=lambda ctx, **_: _verdict_runs_inline(ctx))
    def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
        cfg = self.config
        # Explicit statuses (the admin's block/allow lists, GTUBE) stand; otherwise the score
        # summed over every antispam and reputation finding decides.
        if verdict.spam is SpamStatus.CLEAN:
            if verdict.spam_score >= cfg.spam_score:
                verdict.spam = SpamStatus.SPAM
            elif verdict.spam_score >= cfg.probable_spam_score:
                verdict.spam = SpamStatus.PROBABLE_SPAM
            elif any(f.code == "BULK_MAIL" and f.detector == DETECTOR for f in verdict.findings):
                verdict.spam = SpamStatus.BULK
        # Mail antispam did not read (turned off, or left out by the message's rule) gets no
        # X-Spam-Status: "No" would say it was judged clean.
        if cfg.add_headers and ctx.stash.get(_SCANNED, False):
            verdict.headers.extend(self.status_headers(verdict))
            added: list[tuple[str, str]] = ctx.stash.get(_HEADERS, [])
            verdict.headers.extend(added)
        if self.quarantine is not None and verdict.spam.value in cfg.quarantine:
            # Kept once the rule has decided (mailwarden_action): not when it holds it itself.
            ctx.stash[KEEP] = True
        # Only real mail teaches: an admin's `rules test` or `scan` of a sample must not.
        if cfg.autolearn and self.bayes is not None and ctx.live:
            self._autolearn(ctx, verdict)

    def status_headers(self, verdict: Verdict) -> list[tuple[str, str]]:
        """``X-Spam-Status`` (SpamAssassin's layout), ``X-Spam-Score`` and a report line."""
        is_spam = verdict.spam in (SpamStatus.SPAM, SpamStatus.PROBABLE_SPAM, SpamStatus.BLOCKED)
        tests = sorted(
            {
                f.code
                for f in verdict.findings
                if f.category in (Category.ANTISPAM, Category.REPUTATION)
            }
        )
        status = (
            f"{'Yes' if is_spam else 'No'}, score={verdict.spam_score:.1f} "
            f"required={self.config.probable_spam_score:.1f} tests={','.join(tests) or 'none'}"
        )
        return [("X-Spam-Status", status), ("X-Spam-Score", f"{verdict.spam_score:.1f}")]

    def _autolearn(self, ctx: ScanContext, verdict: Verdict) -> None:
        """SpamAssassin's bayes_auto_learn: learn what the other checks are sure of.

        The score without Bayes's own findings decides (Bayes never teaches itself); spam
        also needs ``autolearn_min_points`` from header checks and as many from body checks
        (one side alone can be a forged header or a quoted spam), ham the clean status. A
        message Bayes already places firmly on the other side is not learned (one of the
        two is wrong: a person should decide), nor one whose scan was incomplete.
        """
        assert self.bayes is not None
        cfg = self.config
        if not ctx.stash.get(_SCANNED, False):
            return
        if verdict.errors or any(f.code == "DNS_UNAVAILABLE" for f in verdict.findings):
            return
        own = [f for f in verdict.findings if f.code.startswith("BAYES_")]
        score = verdict.spam_score - sum(f.score for f in own)
        bands = {ctx.stash.get(_BAND, "")}
        header = body = 0.0
        for f in verdict.findings:
            rule = self.rules.rules.get(f.code)
            if f.score <= 0 or f.detector != DETECTOR or rule is None:
                continue
            if rule.kind == "header" or rule.group in ("10_auth", "20_heuristics"):
                header += f.score
            elif rule.kind in ("body", "rawbody", "uri", "full"):
                body += f.score
        label = None
        if (
            score >= cfg.autolearn_spam_score
            and header >= cfg.autolearn_min_points
            and body >= cfg.autolearn_min_points
            and not bands & {"BAYES_00", "BAYES_05"}
        ):
            label = "spam"
        elif (
            score <= cfg.autolearn_ham_score
            and verdict.spam is SpamStatus.CLEAN
            and not bands & {"BAYES_95", "BAYES_99", "BAYES_999"}
        ):
            label = "ham"
        if label is not None:
            # Queued for the Bayes writer's next batch (group commit, bayes.py): the hook
            # thread neither tokenises again nor waits for an fsync.
            toks = ctx.stash.get(_TOKENS, None)
            if toks is None:
                toks = tokens(ctx.message, *ctx.stash.get(_TEXT, (None, None)))
            self.bayes.learn_later(ctx.raw, label, "autolearn", toks, ctx.message.message_id)


def _verdict_runs_inline(ctx: ScanContext) -> bool:
    """Whether the verdict hook cannot block for ``ctx``: the rest is arithmetic on the verdict,
    but autolearn waits while the Bayes writer's queue is full, and tokenises a message the
    scan did not (a store too new to classify), which for a large or many-part message is
    work for a thread, as :func:`mailwarden_sdk.offload.run_cpu_bound` decides. Only a scanned
    live message is learned from. Every message of a gateway that autolearns is such a
    message, and a worker hand-off per message cost more than the hook (issue 24)."""
    if not (ctx.live and ctx.stash.get(_SCANNED, False)):
        return True
    learner = ctx.stash.get(_LEARNER, None)
    if learner is None:
        return True
    if not learner.has_room():
        return False
    if ctx.stash.get(_TOKENS, None) is not None:
        return True
    message = ctx.message
    return (
        len(ctx.raw) <= INLINE_MAX_BYTES
        and len(message.parts) + len(message.root.headers) <= INLINE_MAX_FIELDS
    )


def _dns_unavailable(dns: DnsBudget) -> Finding:
    # Score 0: a DNS outage is the receiver's trouble, not evidence about the message.
    return spam_rule(
        DETECTOR,
        "DNS_UNAVAILABLE",
        0.0,
        reason=",".join(sorted(dns.skipped)),
        skipped=str(sum(dns.skipped.values())),
    )


@functools.lru_cache(maxsize=4096)
def _code(name: str) -> str:
    code = "".join(c if c.isalnum() else "_" for c in name.upper()).strip("_")
    return code if code[:1].isalpha() else f"R_{code}"


def _url_host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].split(":", 1)[0].lower()
