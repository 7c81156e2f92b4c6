"""Rule files in a subset of the SpamAssassin syntax, matched with a literal prefilter.

Supported directives: ``header``, ``body``, ``rawbody``, ``uri``, ``full``, ``meta``,
``score``, ``describe``, ``tflags``, the ``replace_tag``/``replace_rules`` templating, and the
``if``/``ifplugin``/``else``/``endif`` blocks of the stock rule set. Two mailwarden directives
are added: ``group_cap N`` caps what all rules of that file (its *group*) add together, and
``replaced_by CODE OTHER...`` leaves CODE unscored when one of the OTHERs scores (the same test
under two names, e.g. a built-in heuristic and a stock rule). Rules
that call SpamAssassin's Perl code (``eval:``) run when :mod:`.sa_evals` has the function, and
are skipped and counted otherwise, so a stock rule set loads; metas see skipped ones as not hit.

Regex rules are compiled into one hyperscan database per target (body, rawbody, full, URI,
and per header name for header rules, as rspamd groups them), so one pass over a text answers
every rule; see :mod:`.fastmatch` for how the answers stay those of Python's ``re``. Rules
hyperscan cannot take (and every rule with ``engine="re"``) go the ``re`` path: each rule's
longest required literal in one native :class:`Matcher` per target, and a regular expression
runs only when its literal occurs (or when it has none).
"""

from __future__ import annotations

import ast
import email.utils
import fcntl
import functools
import heapq
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mailwarden_sdk import OP, FlagExpressions, Matcher

from .fastmatch import (
    FRAME_END,
    FRAME_RESERVE,
    FRAME_START,
    HAVE_HYPERSCAN,
    PatternSet,
    default_cache_dir,
    found_in,
    frame_tag,
    framed_rewrites,
    high_bytes,
)
from .sa_evals import EVALS, Check, EvalInput, bind

__all__ = ["Rule", "RuleSet", "RuleTargets", "load_rules"]

log = logging.getLogger(__name__)

KINDS = ("header", "body", "rawbody", "uri", "full")
_META_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?|[A-Za-z_][A-Za-z0-9_]*|&&|\|\||[<>=!]=|[-+*/()<>!])")
# Plugins whose rule types we do not have: their blocks are left out, their fallbacks kept.
_MISSING_PLUGINS = {"Mail::SpamAssassin::Plugin::MIMEHeader"}
_EVAL = re.compile(r"^eval:(\w+)\((.*)\)$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A header name with no ":raw"/":addr" modifier; _PSEUDO are SpamAssassin's names that are
# not one header (see _header_values).
_NAME_ONLY = re.compile(r"[^:\s]+")
_PSEUDO = frozenset({"ALL", "ToCc", "MESSAGEID"})
# From this many metas off cycles, they are resolved by one C program (see _compile_program).
_C_METAS_FROM = 200


@dataclass
class Rule:
    """One rule; ``kind`` is a target (``header``, ``body``...), ``meta``, or ``eval`` (then
    ``header`` holds the function's name and ``eval_args`` its arguments)."""

    name: str
    kind: str
    group: str
    pattern: re.Pattern[str] | None = None
    header: str = ""
    negate: bool = False
    exists: bool = False
    if_unset: str | None = None
    meta: str = ""
    score: float | None = None
    description: str = ""
    literal: str = ""
    nocase: bool = False
    source: str = ""
    eval_args: tuple[str, ...] = ()
    # SpamAssassin's tflags words; "nice" marks a rule that speaks for ham (negative score).
    tflags: frozenset[str] = frozenset()

    @property
    def sub_rule(self) -> bool:
        """``__NAME`` rules only feed metas: no score, never reported."""
        return self.name.startswith("__")


@dataclass
class RuleTargets:
    """The texts rules match against, prepared once per message."""

    headers: Mapping[str, list[str]]
    body: str
    rawbody: str
    uris: list[str]
    full: str
    all_headers: str = ""
    facts: EvalInput | None = None
    # The (name, address) pairs of a header already parsed for :addr/:name, by header name.
    parsed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # Every header rule's values by its header name (with modifier), read once per message:
    # the stock rules read ~100 a message through ~20 names.
    values: dict[str, list[str] | None] = field(default_factory=dict)


@dataclass
class RuleSet:
    """Loaded rules with their prefilters; :meth:`match` gives the rules that hit."""

    rules: dict[str, Rule] = field(default_factory=dict)
    group_caps: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    # CODE -> the rules that test the same thing and take its score when they score.
    replaced_by: dict[str, set[str]] = field(default_factory=dict)
    tflags: dict[str, frozenset[str]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    _metas: list[tuple[Rule, _Meta]] = field(default_factory=list)
    _readers: dict[str, list[int]] = field(default_factory=dict)
    _always: set[int] = field(default_factory=set)
    # Per rule or meta name: the metas off cycles that read it directly, by index.
    _next: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Every meta's value when no rule hits, by index; the names of those off cycles it holds.
    _base: list[bool] = field(default_factory=list)
    # By meta index: its name, its function and the indexes of its readers off cycles (the
    # loop over a message's changed metas reads these, not the Rule objects and _next).
    _meta_name_at: list[str] = field(default_factory=list)
    _meta_function_at: list[_Meta] = field(default_factory=list)
    _next_at: list[tuple[int, ...]] = field(default_factory=list)
    _baseline: frozenset[str] = frozenset()
    _meta_names: frozenset[str] = frozenset()
    _cyclic: list[tuple[Rule, _Meta]] = field(default_factory=list)
    # The metas off cycles as one program of the C core (None: the Python functions run),
    # each name they read or set as a flag number (from 1: 0 is no name), and by program
    # index each meta's name and its value when no rule hits.
    _program: FlagExpressions | None = None
    _flag_of: dict[str, int] = field(default_factory=dict)
    _program_names: list[str] = field(default_factory=list)
    _program_base: tuple[bool, ...] = ()
    # The names match() reports (not sub-rules), and the eval rules with their arguments bound.
    _reported: frozenset[str] = frozenset()
    _evals: list[Rule] = field(default_factory=list)
    # The eval rules' checks, their arguments read (none for a rule whose function refuses
    # them: it never hits).
    _checks: list[tuple[str, Check]] = field(default_factory=list)
    # "hyperscan" (when installed; the re path for what it cannot take) or "re" alone.
    engine: str = "hyperscan"
    cache: Path | None = None
    # Compile the hyperscan databases in a thread when the cache does not hold them: the
    # rules answer on the re path meanwhile (the same answers), then switch.
    background: bool = False
    # Run the rules a score of 0 turns off too (`antispam fit` learns their scores).
    unscored: bool = False
    #: The rules not run: a score of 0 and no meta naming them (SpamAssassin's "a score of 0
    #: disables the rule"); empty with ``unscored``.
    disabled: frozenset[str] = frozenset()
    _matching: _Matching = field(default_factory=lambda: _Matching())
    _ready: threading.Event = field(default_factory=threading.Event)

    def score_of(self, rule: Rule) -> float:
        if rule.score is not None:
            return rule.score
        if rule.sub_rule:
            return 0.0
        # SpamAssassin's defaults: rules under test (T_ names) count 0.01, the others 1.0.
        return 0.01 if rule.name.startswith("T_") else 1.0

    def compile(self) -> RuleSet:
        """Build the literal prefilter per target and order the metas; call after loading."""
        self.disabled = frozenset() if self.unscored else self._zero_scored()
        by_kind: dict[str, list[Rule]] = {k: [] for k in KINDS}
        for rule in self.rules.values():
            if (
                rule.kind in by_kind
                and (rule.pattern is not None or rule.exists)
                and rule.name not in self.disabled
            ):
                by_kind[rule.kind].append(rule)
        self._ready.clear()
        matching = None
        fast = self.engine == "hyperscan" and HAVE_HYPERSCAN
        if fast:
            # Only what the cache holds when compiling is left to a thread.
            matching = _fast_matching(by_kind, self.cache, compile_now=not self.background)
        if matching is None:
            self._matching = _Matching(prefilters=_prefilters(by_kind))
        else:
            self._matching = matching
        if fast and matching is None:
            threading.Thread(
                target=self._compile_later, args=(by_kind,), name="antispam-hyperscan", daemon=True
            ).start()
        else:
            self._ready.set()
        metas = {r.name: r for r in self.rules.values() if r.kind == "meta"}
        # Compiled once: SpamAssassin's stock set has about 1,500 metas, and compiling their
        # source on every message was most of the rule engine's time. Ordered so that a meta
        # comes after the metas it names, one pass resolves them (cycles still converge).
        depth: dict[str, int] = {}
        cyclic: set[str] = set()

        def depth_of(name: str, seen: frozenset[str] = frozenset()) -> int:
            if name in seen:
                cyclic.add(name)
            if name not in metas or name in seen:
                return 0
            if name not in depth:
                names = _NAME.findall(metas[name].meta or "")
                depth[name] = 1 + max((depth_of(n, seen | {name}) for n in names), default=0)
            return depth[name]

        self._metas = [
            (r, _meta_function(r)) for r in sorted(metas.values(), key=lambda r: depth_of(r.name))
        ]
        self._compile_meta_graph(cyclic)
        self._evals = [
            r for r in self.rules.values() if r.kind == "eval" and r.name not in self.disabled
        ]
        self._checks = [
            (rule.name, check)
            for rule in self._evals
            if (check := bind(rule.header, rule.eval_args)) is not None
        ]
        return self

    def _zero_scored(self) -> frozenset[str]:
        """The tests whose hit would change nothing: scored 0 (the stock set's score set 0
        turns about 150 of its regex rules off so) and named by no meta. Their findings are
        never built, so matching them was work for nothing."""
        named = {n for r in self.rules.values() if r.kind == "meta" for n in _NAME.findall(r.meta)}
        return frozenset(
            name
            for name, rule in self.rules.items()
            if (rule.kind in KINDS or rule.kind == "eval")
            and not rule.sub_rule
            and name not in named
            and self.score_of(rule) == 0
        )

    def _compile_meta_graph(self, cyclic: set[str]) -> None:
        """Who reads whom, and every meta's value when no rule hits.

        A meta none of whose inputs differ from their no-hit value keeps its own no-hit
        value: a message's rules and metas that hit are propagated through the direct
        readers in topological order, and only the metas an input changed for are evaluated
        (a few dozen of the stock set's 1,200 a message). Metas on a cycle, and what reads
        them, are evaluated on every message, to their fixpoint.
        """
        readers: dict[str, list[int]] = {}
        for index, (rule, _code) in enumerate(self._metas):
            for name in set(_NAME.findall(rule.meta or "")):
                readers.setdefault(name, []).append(index)
        self._readers = readers
        self._always = self._downstream(cyclic, set())
        self._next = {
            name: tuple(sorted(i for i in found if i not in self._always))
            for name, found in readers.items()
        }
        self._cyclic = [self._metas[i] for i in sorted(self._always)]
        base: set[str] = set()
        self._fixpoint(base, self._metas)
        self._base = [rule.name in base for rule, _code in self._metas]
        self._meta_name_at = [rule.name for rule, _code in self._metas]
        self._meta_function_at = [code for _rule, code in self._metas]
        self._next_at = [self._next.get(name, ()) for name in self._meta_name_at]
        self._baseline = frozenset(
            rule.name
            for i, (rule, _code) in enumerate(self._metas)
            if self._base[i] and i not in self._always
        )
        self._meta_names = frozenset(rule.name for rule, _code in self._metas)
        self._reported = frozenset(n for n, r in self.rules.items() if not r.sub_rule)
        self._compile_program()

    def _compile_program(self, least: int = _C_METAS_FROM) -> None:
        """The metas off cycles as one C program (:class:`FlagExpressions`), their order kept,
        when they are ``least`` or more; left to the Python functions when fewer (the C
        call's fixed cost is more than a few metas cost in Python: the shipped set's 48, 4 us
        against 1.5 a message; the stock set's 1,200, 7 us against 30), when a meta has what
        the program cannot say, or when the two disagree on a meta's value when nothing
        hits."""
        self._program = None
        kept = [i for i in range(len(self._metas)) if i not in self._always]
        if len(kept) < least:
            return
        flag_of: dict[str, int] = {}
        programs: list[list[float]] = []
        try:
            for i in kept:
                rule = self._metas[i][0]
                tree = ast.parse(_meta_python(rule.meta or "").strip(), mode="eval")
                programs.append(_program_of(tree.body, flag_of))
            flags = [flag_of.setdefault(self._metas[i][0].name, len(flag_of) + 1) for i in kept]
            program = FlagExpressions(programs, flags, len(flag_of) + 1)
        except (ValueError, SyntaxError, RecursionError) as exc:
            log.info("antispam: metas evaluated in Python (%s)", exc)
            return
        names = [self._metas[i][0].name for i in kept]
        if program.base != tuple(self._base[i] for i in kept):
            log.warning("antispam: metas evaluated in Python (the C core's no-hit values differ)")
            return
        self._program, self._flag_of = program, flag_of
        self._program_names, self._program_base = names, program.base

    def _downstream(self, names: Iterable[str], found: set[int]) -> set[int]:
        todo = list(names)
        while todo:
            for index in self._readers.get(todo.pop(), ()):
                if index not in found:
                    found.add(index)
                    todo.append(self._metas[index][0].name)
        return found

    def _compile_later(self, by_kind: dict[str, list[Rule]]) -> None:
        try:
            # One compile for all the workers sharing the cache: the others wait here, then
            # load what it stored.
            with _compile_lock(self.cache):
                matching = _fast_matching(by_kind, self.cache, compile_now=True)
        except Exception:  # the re path keeps answering, as without hyperscan
            log.exception("antispam: hyperscan databases not built; rules stay on re")
            matching = None
        if matching is not None:
            self._matching = matching  # one assignment: a match under way keeps its own
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the hyperscan databases are in use (or compiling is not needed)."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        """Whether the regexes run on their final engine (not on re while compiling)."""
        return self._ready.is_set()

    @property
    def uses_relays(self) -> bool:
        """Whether any rule reads SpamAssassin's ``X-Spam-Relays-*`` pseudo-headers."""
        return any(
            r.kind == "header" and r.header.lower().startswith("x-spam-relays-")
            for r in self.rules.values()
        )

    @property
    def uses_evals(self) -> bool:
        """Whether any eval rule runs (and so needs :class:`~.sa_evals.EvalInput`)."""
        return bool(self._evals)

    @staticmethod
    def _candidates(matching: _Matching, kind: str, text: str) -> list[Rule]:
        matcher, with_literal, always = matching.prefilters.get(kind, (None, [], []))
        found: list[Rule] = list(always)
        if len(with_literal) <= _SEARCH_ALL and kind != "uri":
            # A few rules' own searches cost less than lowering and encoding the text for
            # the prefilter (the stock set's 2 rawbody rules hyperscan leaves to re: 2 us
            # against 9 us); the regexes decide either way, so the hits are the same. (A
            # URI rule is searched in every URI: there the prefilter's one pass stays.)
            found.extend(with_literal)
        elif matcher is not None and text:
            # One scan of the lowered text serves both kinds of literal: case-sensitive
            # literals were lowered too, their regex then decides exactly.
            lowered = text.lower().encode("utf-8", "replace")
            ids = {pid for pid, _ in matcher.scan(lowered)}
            found.extend(with_literal[i] for i in sorted(ids))
        return found

    def match(self, targets: RuleTargets, extra: Iterable[str] = ()) -> list[Rule]:
        """Every scored rule that hits (sub-rules and metas resolved), in name order.

        ``extra`` are codes other checks found (SPF_FAIL, BAYES_99...): metas may name them.
        """
        given = set(extra)
        hits: set[str] = given | self.regex_hits(targets)
        facts = targets.facts
        if facts is not None:
            for name, check in self._checks:
                try:
                    hit = check(facts)
                except (TypeError, ValueError):  # e.g. a Date: the parser chokes on
                    hit = False
                if hit:
                    hits.add(name)
        self._resolve_metas(hits)
        rules = self.rules
        return [rules[n] for n in sorted((hits - given) & self._reported)]

    def regex_hits(self, targets: RuleTargets) -> set[str]:
        """The header, body, rawbody, URI and full rules (sub-rules included) that hit."""
        hits: set[str] = set()
        matching = self._matching  # read once: the compiling thread may swap it meanwhile
        if matching.fast or matching.headers is not None:
            self._match_fast(matching, targets, hits)
        else:
            self._match_re(matching, targets, hits)
        return hits

    def _match_fast(self, matching: _Matching, targets: RuleTargets, hits: set[str]) -> None:
        for kind, text in (
            ("body", targets.body),
            ("rawbody", targets.rawbody),
            ("full", targets.full),
        ):
            if kind in matching.fast:
                patterns, rules = matching.fast[kind]
                hits.update(r.name for r in _confirmed(patterns, rules, text))
        if "uri" in matching.fast:
            patterns, rules = matching.fast["uri"]
            for uri in targets.uris:
                hits.update(r.name for r in _confirmed(patterns, rules, uri))
        if matching.headers is not None:
            matching.headers.match(targets, hits)
        for kind in ("body", "rawbody", "full"):
            text = getattr(targets, kind)
            for rule in self._candidates(matching, kind, text):
                if rule.pattern is not None and found_in(rule.pattern, text):
                    hits.add(rule.name)
        if targets.uris:
            for rule in self._candidates(matching, "uri", "\n".join(targets.uris)):
                if rule.pattern is not None and any(rule.pattern.search(u) for u in targets.uris):
                    hits.add(rule.name)
        headers = targets.headers
        # The message's dozen header names against the exists: rules' (83 in the stock set).
        exists = matching.exists
        for key in exists.keys() & headers.keys():
            if headers[key]:
                hits.update(exists[key])
        for rule in matching.slow_headers:
            if _header_hit(rule, targets):
                hits.add(rule.name)

    def _match_re(self, matching: _Matching, targets: RuleTargets, hits: set[str]) -> None:
        header_text = "\n".join(v for vs in targets.headers.values() for v in vs)
        for rule in self._candidates(matching, "header", header_text + "\n" + targets.all_headers):
            if _header_hit(rule, targets):
                hits.add(rule.name)
        # Rules whose literal never occurs can still hit through a negation or if-unset.
        _matcher, with_literal, _always = matching.prefilters.get("header", (None, [], []))
        for rule in with_literal:
            if (rule.negate or rule.if_unset is not None) and rule.name not in hits:
                if _header_hit(rule, targets):
                    hits.add(rule.name)
        for kind, text in (("body", targets.body), ("rawbody", targets.rawbody)):
            for rule in self._candidates(matching, kind, text):
                if rule.pattern is not None and rule.pattern.search(text):
                    hits.add(rule.name)
        if targets.uris:
            uri_text = "\n".join(targets.uris)
            for rule in self._candidates(matching, "uri", uri_text):
                if rule.pattern is not None and any(rule.pattern.search(u) for u in targets.uris):
                    hits.add(rule.name)
        for rule in self._candidates(matching, "full", targets.full):
            if rule.pattern is not None and rule.pattern.search(targets.full):
                hits.add(rule.name)

    def replaced(self, scored: Iterable[str]) -> set[str]:
        """The codes among ``scored`` to leave out because a ``replaced_by`` rule also scored.

        Applied to findings, after metas resolved: a meta over CODE still sees it hit, only
        its score is not counted twice. Chains are followed (one test under three names is
        one test); cycles are refused at load, so of codes replacing one another one stays.
        """
        present = set(scored)
        return {
            code
            for code in present & self.replaced_by.keys()
            if not _replacers(self, code).isdisjoint(present)
        }

    def _resolve_metas(self, hits: set[str]) -> None:
        program = self._program
        if program is not None:
            # Flag numbers start at 1: filter(None, ...) drops the names no meta reads.
            changed = program.changed(filter(None, map(self._flag_of.get, hits)))
            hits.update(self._baseline)
            names, base = self._program_names, self._program_base
            for index in changed:
                if base[index]:
                    hits.discard(names[index])
                else:
                    hits.add(names[index])
            if self._cyclic:
                self._fixpoint(hits, self._cyclic)
            return
        self._resolve_metas_python(hits)

    def _resolve_metas_python(self, hits: set[str]) -> None:
        """The metas resolved by their Python functions (the C program's reference)."""
        following, base = self._next, self._base
        names, functions, next_at = self._meta_name_at, self._meta_function_at, self._next_at
        # Metas the caller's hits already name (a check's code) count as hit, unevaluated.
        given = hits & self._meta_names
        queued: set[int] = set()
        for name in hits:
            found = following.get(name)
            if found:
                queued.update(found)
        hits.update(self._baseline)
        # Readers come after what they read (compile() orders them), so the smallest index
        # queued has its inputs final: each meta is evaluated once, when an input changed.
        queue = list(queued)
        heapq.heapify(queue)
        pop, push = heapq.heappop, heapq.heappush
        while queue:
            index = pop(queue)
            name = names[index]
            if name in given:
                continue
            try:
                value = bool(functions[index](hits))
            except Exception:  # a meta over a division by zero and the like: not hit
                value = False
            if value:
                hits.add(name)
            else:
                hits.discard(name)
            if value != base[index]:
                for reader in next_at[index]:
                    if reader not in queued:
                        queued.add(reader)
                        push(queue, reader)
        if self._cyclic:
            self._fixpoint(hits, self._cyclic)

    def _resolve_metas_everywhere(self, hits: set[str]) -> None:
        """Every meta evaluated (what :meth:`_resolve_metas` must equal; tests compare)."""
        self._fixpoint(hits, self._metas)

    def _fixpoint(self, hits: set[str], pending: list[tuple[Rule, _Meta]], passes: int = 0) -> None:
        # Metas may depend on metas: evaluate until nothing changes (bounded by their count).
        for _ in range(passes or len(pending) + 1):
            changed = False
            for rule, meta in pending:
                if rule.name in hits:
                    continue
                try:
                    value = meta(hits)
                except Exception:  # a meta over a division by zero and the like: not hit
                    continue
                if value:
                    hits.add(rule.name)
                    changed = True
            if not changed:
                break


@dataclass
class _Matching:
    """How the regex rules run: hyperscan databases per target and the literal prefilter
    of what is left to ``re`` (everything, on the re path). Swapped as one object."""

    prefilters: dict[str, tuple[Matcher | None, list[Rule], list[Rule]]] = field(
        default_factory=dict
    )
    # Per target ("body"...; "header" per header name): the database and its rules.
    fast: dict[str, tuple[PatternSet, list[Rule]]] = field(default_factory=dict)
    headers: _HeaderScan | None = None
    slow_headers: list[Rule] = field(default_factory=list)
    # "exists:Name" rules on plain header names: their names by lowered header name.
    exists: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class _HeaderScan:
    """Every header rule hyperscan takes in one database, answered by one scan a message.

    The block scanned holds, per header name that rules read (``Subject``, ``From:addr``,
    ``ALL``...), the text ``re`` would search (the values joined by newlines) in a frame of
    its own, tagged with the name's number (:func:`~.fastmatch.framed_rewrites`): a rule's
    rewrite matches only inside its name's frame, and its ^ and $ are that frame's ends. A
    hit is final where the rewrite is exact and the text holds none of its ambiguous class
    bytes (an ASCII text holds none), else its ``re`` confirms it.
    """

    patterns: PatternSet
    rules: list[Rule]
    # The header names (normalised, see _header_key), a frame each, by tag number...
    keys: list[str]
    # ...and each rule's name by its index.
    key_of: list[int]
    # Kept rules hit where their pattern is not found (!~), by index.
    negated: list[tuple[int, Rule]]
    # Per name: what can hit when the header is absent (negations, [if-unset: TEXT]).
    if_absent: list[list[Rule]]
    # Per name: the bytes its frame starts with (the frame byte and its tag).
    heads: list[bytes] = field(default_factory=list)
    # The names that are one header field (lowered field name -> number), and the others
    # (ALL, ToCc, MESSAGEID, :addr/:name: read by _read_header).
    field_numbers: dict[str, int] = field(default_factory=dict)
    derived: list[int] = field(default_factory=list)
    # The names with rules that can hit when their header is absent, with those rules.
    if_absent_of: list[tuple[int, list[Rule]]] = field(default_factory=list)

    @classmethod
    def build(cls, rules: list[Rule], cache: Path | None, compile_now: bool) -> _HeaderScan:
        keys: dict[str, int] = {}
        key_of = [keys.setdefault(_header_key(r.header), len(keys)) for r in rules]
        tags = [frame_tag(n) for n in range(len(keys))]
        patterns = PatternSet(
            [r.pattern for r in rules if r.pattern],
            cache,
            compile_now,
            rewriter=lambda i, pattern, alphabet: framed_rewrites(
                pattern, tags[key_of[i]], alphabet
            ),
            reserve=FRAME_RESERVE,
        )
        kept = [(i, r) for i, r in enumerate(rules) if i not in patterns.rejected]
        if_absent: list[list[Rule]] = [[] for _ in keys]
        for i, rule in kept:
            if rule.negate or rule.if_unset is not None:
                if_absent[key_of[i]].append(rule)
        negated = [(i, r) for i, r in kept if r.negate]
        heads = [bytes((FRAME_START,)) + tag for tag in tags]
        plain = {k: n for k, n in keys.items() if _NAME_ONLY.fullmatch(k) and k not in _PSEUDO}
        derived = [n for n in keys.values() if n not in plain.values()]
        absent = [(n, rules) for n, rules in enumerate(if_absent) if rules]
        return cls(
            patterns, rules, list(keys), key_of, negated, if_absent, heads, plain, derived, absent
        )

    def match(self, targets: RuleTargets, hits: set[str]) -> None:
        texts: list[str | None] = [None] * len(self.keys)
        encoded: list[bytes] = [b""] * len(self.keys)
        # Each frame as its three pieces (head, text, end), joined once.
        pieces: list[bytes] = []
        heads, encode = self.heads, self.patterns.encode
        # Only the names the message has: a dozen header fields, not the rules' 56 names.
        numbers = self.field_numbers
        for field_name, values in targets.headers.items():
            number = numbers.get(field_name)
            if number is not None and values:
                text = texts[number] = values[0] if len(values) == 1 else "\n".join(values)
                data = encoded[number] = text.encode("ascii") if text.isascii() else encode(text)
                pieces += (heads[number], data, _FRAME_END)
        for number in self.derived:  # ALL, ToCc, MESSAGEID, :addr/:name
            read = _values_of(self.keys[number], targets)
            if read is not None:
                text = texts[number] = read[0] if len(read) == 1 else "\n".join(read)
                data = encoded[number] = text.encode("ascii") if text.isascii() else encode(text)
                pieces += (heads[number], data, _FRAME_END)
        for number, absent in self.if_absent_of:
            if texts[number] is None:
                for rule in absent:
                    if _header_hit(rule, targets):
                        hits.add(rule.name)  # if-unset text or a negation: re, on no text
        patterns, rules, key_of = self.patterns, self.rules, self.key_of
        exact, ambiguous, holds = patterns.exact, patterns.ambiguous, patterns.holds
        found: set[int] = set()
        # Per name, the class bytes its text holds (none in an ASCII text): where a rule's
        # ambiguous bytes are absent, an exact rewrite's report is final (PatternSet.final).
        present: dict[int, frozenset[int]] = {}
        for index in patterns.scan(b"".join(pieces)):
            number = key_of[index]
            searched = texts[number]
            if searched is None:  # cannot be: a rewrite matches in its own frame only
                continue
            if exact[index]:
                held = present.get(number)
                if held is None:
                    held = present[number] = (
                        _NONE if searched.isascii() else high_bytes(encoded[number])
                    )
                if not held or ambiguous[index].isdisjoint(held):
                    found.add(index)
                    continue
            if holds(index, searched):
                found.add(index)
        hits.update(rules[i].name for i in found if not rules[i].negate)
        for index, rule in self.negated:
            if index not in found and texts[key_of[index]] is not None:
                hits.add(rule.name)


_FRAME_END = bytes((FRAME_END,))
# Up to this many rules with a literal (of one target, on the re path) are searched without
# the literal prefilter.
_SEARCH_ALL = 4
_NONE: frozenset[int] = frozenset()


def _prefilters(
    by_kind: dict[str, list[Rule]],
) -> dict[str, tuple[Matcher | None, list[Rule], list[Rule]]]:
    out: dict[str, tuple[Matcher | None, list[Rule], list[Rule]]] = {}
    for kind, rules in by_kind.items():
        with_literal = [r for r in rules if len(r.literal) >= 3]
        always = [r for r in rules if len(r.literal) < 3]
        matcher = None
        if with_literal:
            matcher = Matcher([r.literal.encode("utf-8") for r in with_literal])
        out[kind] = (matcher, with_literal, always)
    return out


def _fast_matching(
    by_kind: dict[str, list[Rule]], cache: Path | None, compile_now: bool
) -> _Matching | None:
    """The hyperscan databases (the rules they cannot take on the re path); None when
    ``compile_now`` is false and the cache does not hold them all."""
    fast: dict[str, tuple[PatternSet, list[Rule]]] = {}
    slow: dict[str, list[Rule]] = {k: [] for k in KINDS}
    sets: list[PatternSet] = []
    for kind in ("body", "rawbody", "full", "uri"):
        rules = [r for r in by_kind[kind] if r.pattern is not None]
        patterns = PatternSet([r.pattern for r in rules if r.pattern], cache, compile_now)
        fast[kind] = (patterns, rules)
        sets.append(patterns)
        slow[kind] = [r for i, r in enumerate(rules) if i in patterns.rejected]
    framed: list[Rule] = []
    slow_headers: list[Rule] = []
    exists: dict[str, list[str]] = {}
    for rule in by_kind["header"]:
        if rule.pattern is not None and not rule.exists:
            framed.append(rule)
        elif rule.exists and _NAME_ONLY.fullmatch(rule.header) and rule.header not in _PSEUDO:
            exists.setdefault(rule.header.lower(), []).append(rule.name)
        else:
            slow_headers.append(rule)
    headers = None
    if framed:
        headers = _HeaderScan.build(framed, cache, compile_now)
        sets.append(headers.patterns)
        rejected = headers.patterns.rejected
        slow_headers.extend(r for i, r in enumerate(framed) if i in rejected)
    if any(p.pending for p in sets):
        return None
    return _Matching(_prefilters(slow), fast, headers, slow_headers, exists)


@contextmanager
def _compile_lock(cache: Path | None) -> Iterator[None]:
    """Held while compiling into ``cache``: workers sharing it compile one at a time, so a
    set is compiled once and the others load it."""
    if cache is None:
        yield
        return
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle = open(cache / "compile.lock", "a+b")
    except OSError as exc:
        log.debug("hyperscan compile lock not taken: %s", exc)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# A meta as a function of the names that hit: each name is ``name in hits`` (True/False are
# 1/0 in the sums and comparisons metas make), one call instead of an eval whose every name
# is a look-up in a defaulting mapping.
_Meta = Callable[[set[str]], Any]


def _meta_function(rule: Rule) -> _Meta:
    source = f"lambda hits: ({_meta_python(rule.meta or '').strip()})"
    function: _Meta = eval(compile(source, rule.name, "eval"), {"__builtins__": {}})
    # Names joined by && alone (half the stock set's metas) or by || alone, however
    # parenthesised: a subset test or an intersection of the hit set, one C call with no
    # Python frame (a message evaluates ~85 metas, each a cold function otherwise).
    tokens = [t for t in _meta_tokens(rule.meta or "") if t not in ("(", ")")]
    names, operators = tokens[0::2], set(tokens[1::2])
    if len(tokens) % 2 and all(t[0].isalpha() or t[0] == "_" for t in names):
        if operators <= {"&&"}:
            return functools.partial(frozenset.issubset, frozenset(names))
        if operators == {"||"}:
            # Truthy (non-empty) exactly when one of the names hit.
            return functools.partial(frozenset.intersection, frozenset(names))
    return function


_BINARY_OPS: dict[type, int] = {
    ast.Add: OP.ADD,
    ast.Sub: OP.SUB,
    ast.Mult: OP.MUL,
    ast.Div: OP.DIV,
}
_COMPARE_OPS: dict[type, int] = {
    ast.Lt: OP.LT,
    ast.LtE: OP.LE,
    ast.Gt: OP.GT,
    ast.GtE: OP.GE,
    ast.Eq: OP.EQ,
    ast.NotEq: OP.NE,
}
_UNARY_OPS: dict[type, int] = {ast.Not: OP.NOT, ast.USub: OP.NEG, ast.UAdd: OP.POS}


def _program_of(node: ast.expr, flag_of: dict[str, int]) -> list[float]:
    """A meta's Python expression (:func:`_meta_python`) as a :class:`FlagExpressions`
    program, names numbered in ``flag_of`` (from 1); ValueError for anything else."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.In):
        name = node.left
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            return [OP.HIT, flag_of.setdefault(name.value, len(flag_of) + 1)]
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return [OP.CONST, float(node.value)]  # exact: the metas' numbers are small
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return [*_program_of(node.operand, flag_of), _UNARY_OPS[type(node.op)]]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _program_of(node.left, flag_of), _program_of(node.right, flag_of)
        return [*left, *right, _BINARY_OPS[type(node.op)]]
    if isinstance(node, ast.BoolOp):
        joined = OP.AND if isinstance(node.op, ast.And) else OP.OR
        out = _program_of(node.values[0], flag_of)
        for value in node.values[1:]:
            out += [*_program_of(value, flag_of), joined]
        return out
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE_OPS for op in node.ops):
        # a < b < c is (a < b) and (b < c), b evaluated once: no side effects, so twice here.
        items = [node.left, *node.comparators]
        out = []
        for at, op in enumerate(node.ops):
            pair = [*_program_of(items[at], flag_of), *_program_of(items[at + 1], flag_of)]
            out += [*pair, _COMPARE_OPS[type(op)]]
            if at:
                out.append(OP.AND)
        return out
    raise ValueError(f"not a meta expression: {ast.dump(node)[:60]}")


def _meta_tokens(expr: str) -> list[str]:
    out: list[str] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _META_TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"bad meta expression near {expr[pos : pos + 20]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _meta_python(expr: str) -> str:
    """A meta expression as Python over a whitelist of tokens (names, numbers, operators)."""
    out: list[str] = []
    for tok in _meta_tokens(expr):
        if tok == "&&":
            out.append(" and ")
        elif tok == "||":
            out.append(" or ")
        elif tok == "!":
            out.append(" not ")
        elif tok[0].isalpha() or tok[0] == "_":
            out.append(f" ({tok!r} in hits) ")
        else:
            out.append(f" {tok} ")
    return "".join(out) or "0"


def _header_values(rule: Rule, targets: RuleTargets) -> list[str] | None:
    return _values_of(_header_key(rule.header), targets)


def _values_of(key: str, targets: RuleTargets) -> list[str] | None:
    # A look-up, not try/except: the first read of each name in a message (a dozen) would
    # raise KeyError, about a microsecond each.
    values = targets.values.get(key, _UNREAD)
    if values is _UNREAD:
        values = targets.values[key] = _read_header(key, targets)
    return values


_UNREAD: list[str] = []  # a marker no read returns (an absent header reads as None)


@lru_cache(maxsize=4096)
def _header_key(name: str) -> str:
    """One spelling per header name as rules read it ("Message-Id", "Message-ID": one):
    field names fold case, SpamAssassin's pseudo-headers and the modifiers do not."""
    base, colon, modifier = name.partition(":")
    return (base if base in _PSEUDO else base.lower()) + colon + modifier


def _read_header(name: str, targets: RuleTargets) -> list[str] | None:
    base, _, modifier = name.partition(":")
    key = base.lower()
    # SpamAssassin's pseudo-headers are case-sensitive: "MessageID" is a (malformed) real
    # header field name, "MESSAGEID" the pseudo-header.
    if base == "ALL":
        return [targets.all_headers] if targets.all_headers else None
    if base == "ToCc":
        values = targets.headers.get("to", []) + targets.headers.get("cc", [])
    elif base == "MESSAGEID":
        values = targets.headers.get("message-id", []) + targets.headers.get(
            "resent-message-id", []
        )
    else:
        values = targets.headers.get(key, [])
    if not values:
        return None
    if modifier not in ("addr", "name"):
        return values
    # One parse serves both modifiers (the stock rules read From:addr and From:name).
    pairs = targets.parsed.get(base)
    if pairs is None:
        pairs = targets.parsed[base] = _addresses(values)
    if modifier == "addr":
        return [a for _n, a in pairs if a] or [""]
    return [n for n, _a in pairs] or [""]


# One address in the forms most headers hold ("a@b", "<a@b>", "Joe Bloggs <a@b>",
# "\"Joe B.\" <a@b>"), with nothing email.utils would unquote, fold or decode: read here as
# getaddresses reads it (tests/unit/test_antispam_fastmatch.py compares), at a tenth the cost.
_ATOMS = r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*"
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*(?:(?P<bare>{_ATOMS}@{_ATOMS})"
    r"|(?:(?P<words>[A-Za-z0-9_+=-]+(?: [A-Za-z0-9_+=-]+)*)[ \t]*"
    r'|"(?P<quoted>[A-Za-z0-9_+=. -]*)"[ \t]*)?'
    rf"<(?P<angle>{_ATOMS}@{_ATOMS})>)[ \t]*"
)


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    """``email.utils.getaddresses(values)``, the common one-address forms read directly."""
    if len(values) == 1:
        simple = _SIMPLE_ADDRESS.fullmatch(values[0])
        if simple is not None:
            if simple["bare"]:
                return [("", simple["bare"])]
            return [(simple["words"] or simple["quoted"] or "", simple["angle"])]
    return email.utils.getaddresses(values)


def _confirmed(patterns: PatternSet, rules: list[Rule], text: str) -> list[Rule]:
    """The rules among ``rules`` (hyperscan's, not its rejected) whose pattern is in ``text``."""
    return [rules[i] for i in patterns.confirmed(text)]


def _header_hit(rule: Rule, targets: RuleTargets) -> bool:
    values = _header_values(rule, targets)
    if rule.exists:
        return values is not None
    if rule.pattern is None:
        return False
    if values is None:
        if rule.if_unset is None:
            return rule.negate
        values = [rule.if_unset]
    text = "\n".join(values)
    found = rule.pattern.search(text) is not None
    return found != rule.negate


# ---------------------------------------------------------------- parsing

_REGEX = re.compile(
    r"^(?:/(?P<a>.*)/|m\{(?P<b>.*)\}|m\((?P<c>.*)\)|m(?P<q>[^\w\s{(])(?P<d>.*)(?P=q))(?P<f>[a-z]*)$"
)


def perl_regex(text: str, multiline: bool = False) -> tuple[re.Pattern[str], str, bool]:
    """Compile a Perl ``/.../flags`` regex as Python; returns (pattern, literal, nocase)."""
    m = _REGEX.match(text.strip())
    if not m:
        raise ValueError(f"not a /regex/: {text[:40]!r}")
    body = next(
        g for g in (m.group("a"), m.group("b"), m.group("c"), m.group("d")) if g is not None
    )
    flags_text = m.group("f")
    flags = re.MULTILINE if multiline else 0
    for ch in flags_text:
        flags |= {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE}.get(ch, 0)
    py = _perl_to_python(body)
    with warnings.catch_warnings():
        # Perl character classes such as [[] are fine; Python warns about future semantics.
        warnings.simplefilter("ignore", FutureWarning)
        pattern = re.compile(py, flags)
    literal = "" if "x" in flags_text else _required_literal(body)
    return pattern, literal.lower(), "i" in flags_text


def _perl_to_python(body: str) -> str:
    out = []
    i = 0
    in_class = False
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "z":
                out.append(r"\Z")
            elif nxt == "Z":
                out.append(r"(?=\n?\Z)")
            elif nxt == "h":
                # Inside a class a class of its own would nest: only its members there.
                out.append(r" \t" if in_class else r"[ \t]")
            elif nxt == "x" and i + 2 < len(body) and body[i + 2] == "{":
                end = body.index("}", i)
                code = int(body[i + 3 : end], 16)
                out.append(f"\\U{code:08x}" if code > 0xFFFF else f"\\u{code:04x}")
                i = end + 1
                continue
            elif nxt == "/":
                out.append("/")
            elif nxt in "@%'\"!#&,:;<=>`~-":
                out.append(re.escape(nxt))
            else:
                out.append(ch + nxt)
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
            elif ch == "[" and body.startswith(":", i + 1):
                # A POSIX class ([:xdigit:]) inside a bracket expression: Python's re has
                # none and would read "[[:xdigit:]]" as the set "[:xdigt" then a literal "]".
                end = body.find(":]", i + 2)
                members = _POSIX_CLASSES.get(body[i + 2 : end]) if end > 0 else None
                if members is None:
                    raise ValueError(f"unsupported POSIX class {body[i : end + 2]!r}")
                out.append(members)
                i = end + 2
                continue
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            # A "]" first (after an optional "^") is a member, not the end.
            start = i + 1 + body.startswith("^", i + 1)
            start += body.startswith("]", start)
            out.append(body[i:start].replace("]", r"\]"))
            i = start
            continue
        if ch == "$" and i + 1 < len(body) and body[i + 1] not in ")|":
            out.append(r"\$")  # a Perl variable-looking "$" mid-pattern is a literal dollar
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


# Perl's POSIX classes as they match ASCII text (no /u, no locale), as members of a Python
# character class. "^" negated forms are refused at load rather than misread.
_POSIX_CLASSES = {
    "alpha": "A-Za-z",
    "digit": "0-9",
    "alnum": "A-Za-z0-9",
    "xdigit": "0-9A-Fa-f",
    "upper": "A-Z",
    "lower": "a-z",
    "word": "A-Za-z0-9_",
    "space": r" \t\n\r\f\v",
    "blank": r" \t",
    "cntrl": r"\x00-\x1f\x7f",
    "punct": r"!-/:-@\[-`{-~",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
}


_SPECIAL = set(".^$*+?{}[]()|")


def _required_literal(body: str) -> str:
    """The longest literal every match must contain (top level only), or ""."""
    runs: list[str] = []
    current: list[str] = []
    depth = 0
    i = 0

    def close() -> None:
        if current:
            runs.append("".join(current))
            current.clear()

    while i < len(body):
        ch = body[i]
        if depth:
            if ch == "\\":
                i += 2
                continue
            if ch == "[":
                end = _class_end(body, i)
                i = end + 1
                continue
            depth += ch == "("
            depth -= ch == ")"
            i += 1
            if depth == 0 and i < len(body) and body[i] in "*?{":
                pass
            continue
        if ch == "|":
            return ""
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt.isalnum():
                close()
                i += 2
                continue
            lit = nxt
            i += 2
        elif ch in _SPECIAL:
            close()
            if ch == "(":
                depth = 1
            elif ch == "[":
                i = _class_end(body, i)
            elif ch == "{":
                end = body.find("}", i)
                i = end if end > 0 else i
            i += 1
            continue
        else:
            lit = ch
            i += 1
        if i < len(body) and body[i] in "*?{":
            close()  # the quantified character is optional or repeated: not part of a run
            continue
        if i < len(body) and body[i] == "+":
            current.append(lit)
            close()
            continue
        current.append(lit)
    close()
    return max(runs, key=len) if runs else ""


def _class_end(body: str, start: int) -> int:
    i = start + 1
    if i < len(body) and body[i] == "^":
        i += 1
    if i < len(body) and body[i] == "]":
        i += 1
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body.startswith("[:", i):
            # A POSIX class inside ([[:xdigit:]]): its ":]" does not end the bracket.
            end = body.find(":]", i + 2)
            if end > 0:
                i = end + 2
                continue
        if body[i] == "]":
            return i
        i += 1
    return len(body) - 1


def _condition(line: str) -> bool:
    """Whether an ``if``/``ifplugin`` block of a stock rule file applies here."""
    words = line.split(None, 1)
    arg = words[1].strip() if len(words) > 1 else ""
    if words[0] == "ifplugin":
        return arg not in _MISSING_PLUGINS
    m = re.match(r"^(!?)\s*plugin\((.*)\)$", arg)
    if m:
        present = m.group(2).strip() not in _MISSING_PLUGINS
        return present != bool(m.group(1))
    if arg.startswith("!"):
        return False  # "!can(feature)": we behave as the current SpamAssassin
    return True  # version checks and can(feature)


def load_rules(
    paths: Iterable[Path],
    caps: Mapping[str, float] | None = None,
    engine: str = "hyperscan",
    cache: Path | None = None,
    background: bool = False,
    unscored: bool = False,
) -> RuleSet:
    """Load rule files (directories are read in name order, ``*.cf``) into a compiled set.

    ``engine`` "re" keeps every regex on the ``re`` path; ``cache`` is where compiled
    hyperscan databases are kept between starts (by default the user's cache directory).
    ``background``: databases the cache does not hold are compiled in a thread (one process
    at a time per cache) while the rules answer on the ``re`` path; :meth:`RuleSet.wait_ready`.
    A rule scored 0 that no meta names is not run (:attr:`RuleSet.disabled`), as in
    SpamAssassin, unless ``unscored``.
    """
    ruleset = RuleSet(
        engine=engine,
        cache=cache if cache is not None else default_cache_dir(),
        background=background,
        unscored=unscored,
    )
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.cf")))
        elif path.is_file():
            files.append(path)
    replace_tags: dict[str, str] = {}
    replace_rules: set[str] = set()
    start, end = "<", ">"
    pending_meta: list[tuple[str, str, str]] = []
    raw_patterns: dict[str, tuple[str, bool]] = {}
    for file in files:
        group = file.stem
        stack: list[bool] = []
        for lineno, line in enumerate(file.read_text("utf-8", "replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = _split_name(line)
            rest = rest.strip()
            if word in ("if", "ifplugin"):
                stack.append(_condition(line))
                continue
            if word == "else":
                if stack:
                    stack[-1] = not stack[-1]
                continue
            if word == "endif":
                if stack:
                    stack.pop()
                continue
            if not all(stack):
                continue
            where = f"{file.name}:{lineno}"
            try:
                _directive(ruleset, word, rest, group, where, pending_meta, raw_patterns)
            except (ValueError, re.error, IndexError) as exc:
                ruleset.skipped["invalid"] = ruleset.skipped.get("invalid", 0) + 1
                log.debug("rule skipped at %s: %s", where, exc)
            if word == "replace_tag":
                tag, _, value = rest.partition(" ")
                replace_tags[tag] = value.strip()
            elif word == "replace_rules":
                # replace_rules lists names separated by spaces or commas
                replace_rules.update(rest.split())
            elif word == "replace_start":
                start = rest
            elif word == "replace_end":
                end = rest
            elif word == "group_cap":
                ruleset.group_caps[group] = float(rest)
    for name in replace_rules & raw_patterns.keys():
        text, multiline = raw_patterns[name]
        rule = ruleset.rules[name]
        for _ in range(4):  # tags may contain tags
            for tag, value in replace_tags.items():
                text = text.replace(f"{start}{tag}{end}", value)
        try:
            rule.pattern, rule.literal, rule.nocase = perl_regex(text, multiline)
        except (ValueError, re.error):
            rule.pattern = None
    for name, expr, group in pending_meta:
        try:
            _meta_python(expr)
        except ValueError:
            continue
        rule = ruleset.rules.setdefault(name, Rule(name, "meta", group))
        # A score line may have made the rule first: the meta's own file is its group.
        rule.kind, rule.meta, rule.group = "meta", expr, group
        rule.description = rule.description or ruleset.descriptions.get(name, "")
    for name, flags in ruleset.tflags.items():
        if name in ruleset.rules:
            ruleset.rules[name].tflags = flags
    for group, cap in (caps or {}).items():
        ruleset.group_caps[group] = cap
    # Rules that lost their pattern (untranslatable regex) are dropped rather than half-run.
    for name in [n for n, r in ruleset.rules.items() if r.kind in KINDS and r.pattern is None]:
        if not ruleset.rules[name].exists:
            del ruleset.rules[name]
    return ruleset.compile()


def _directive(
    ruleset: RuleSet,
    word: str,
    rest: str,
    group: str,
    where: str,
    pending_meta: list[tuple[str, str, str]],
    raw_patterns: dict[str, tuple[str, bool]],
) -> None:
    if word in KINDS:
        name, _, spec = _split_name(rest)
        name, spec = name.strip(), spec.strip()
        if spec.startswith("eval:") or name.startswith("eval:"):
            call = _EVAL.match(spec)
            if call is None or call.group(1) not in EVALS:
                ruleset.skipped["eval"] = ruleset.skipped.get("eval", 0) + 1
                return
            args = tuple(a.strip().strip("'\"") for a in call.group(2).split(",") if a.strip())
            rule = ruleset.rules.get(name) or Rule(name, "eval", group, source=where)
            rule.kind, rule.group, rule.source = "eval", group, where
            rule.header, rule.eval_args = call.group(1), args
            ruleset.rules[name] = rule
            return
        rule = ruleset.rules.get(name) or Rule(name, word, group, source=where)
        rule.kind, rule.group, rule.source = word, group, where
        if word == "header":
            _parse_header(rule, spec, raw_patterns)
        else:
            multiline = word in ("body", "rawbody")
            raw_patterns[name] = (spec, multiline)
            rule.pattern, rule.literal, rule.nocase = perl_regex(spec, multiline)
        ruleset.rules[name] = rule
    elif word == "meta":
        name, _, expr = _split_name(rest)
        pending_meta.append((name.strip(), expr.strip(), group))
    elif word == "score":
        parts = rest.split()
        rule = ruleset.rules.setdefault(parts[0], Rule(parts[0], "meta", group))
        # Several scores are SpamAssassin's score sets; set 0 (no network, no Bayes) is ours,
        # as our own network and Bayes checks carry their own scores.
        rule.score = float(parts[1])
    elif word == "describe":
        name, _, text = _split_name(rest)
        described = ruleset.rules.get(name.strip())
        if described is not None:
            described.description = text.strip()
        else:  # a meta: built after loading
            ruleset.descriptions[name.strip()] = text.strip()
    elif word == "tflags":
        name, _, flags = _split_name(rest)
        # Applied after loading: a meta's tflags may come before the meta is built.
        ruleset.tflags[name.strip()] = frozenset(flags.split())
    elif word == "replaced_by":
        _replaced_by(ruleset, rest.split())


def _replaced_by(ruleset: RuleSet, names: list[str]) -> None:
    if len(names) < 2:
        raise ValueError("replaced_by needs a rule name and at least one rule replacing it")
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"replaced_by: not a rule name: {bad[0]!r}")
    code, others = names[0], names[1:]
    for other in others:
        # A cycle would leave none of its rules scored when they all hit.
        if code == other or code in _replacers(ruleset, other):
            raise ValueError(f"replaced_by: {code} and {other} would replace each other")
    ruleset.replaced_by.setdefault(code, set()).update(others)


def _replacers(ruleset: RuleSet, code: str) -> set[str]:
    """Every rule that replaces ``code``, directly or through others."""
    found: set[str] = set()
    todo = [code]
    while todo:
        for other in ruleset.replaced_by.get(todo.pop(), ()):
            if other not in found:
                found.add(other)
                todo.append(other)
    return found


def _split_name(rest: str) -> tuple[str, str, str]:
    parts = rest.split(None, 1)
    return parts[0], " ", parts[1] if len(parts) > 1 else ""


def _parse_header(rule: Rule, spec: str, raw_patterns: dict[str, tuple[str, bool]]) -> None:
    if spec.startswith("exists:"):
        rule.exists, rule.header = True, spec[7:].strip()
        return
    m = re.match(r"^(\S+)\s*(=~|!~)\s*(.+?)(?:\s*\[if-unset:\s*(.*)\])?$", spec)
    if not m:
        raise ValueError(f"bad header rule: {spec[:60]!r}")
    rule.header, rule.negate = m.group(1), m.group(2) == "!~"
    rule.if_unset = m.group(4)
    raw_patterns[rule.name] = (m.group(3), False)
    rule.pattern, rule.literal, rule.nocase = perl_regex(m.group(3))
    if rule.header.lower().endswith(":raw"):
        rule.header = rule.header[:-4]
