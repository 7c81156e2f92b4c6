"""Regex rules through hyperscan answer exactly as through Python's re.

The rewrite (plugins/mailwarden_antispam/fastmatch.py) must never lose a match (a superset of
re's), and the rule engine on top must give re's answers: checked on generated patterns and
texts, and on the shipped rules plus SpamAssassin's stock rules over the shared corpus.
"""

from __future__ import annotations

import email.utils
import fcntl
import os
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden_antispam import BUILTIN_RULES, AntispamConfig, AntispamPlugin, fastmatch
from mailwarden_antispam.content import message_urls
from mailwarden_antispam.fastmatch import (
    Alphabet,
    PatternSet,
    Untranslatable,
    rewrites,
    text_bytes,
    to_bytes_pattern,
    trim_cache,
)
from mailwarden_antispam.rules import (
    _SIMPLE_ADDRESS,
    Rule,
    RuleSet,
    RuleTargets,
    _addresses,
    load_rules,
)
from mailwarden_sdk import parse
from tests.conftest import need
from tests.services import ensure_packages

STOCK = Path("/usr/share/spamassassin")

# Characters that exercise the rewrite: ASCII letters of both cases, the ones Python's
# IGNORECASE equates with non-ASCII letters (k, s, i), digits, spaces of both kinds
# (\x1c is \s to Python, not to PCRE), punctuation, newlines, and non-ASCII letters.
_ALPHABET = "abkKsSiI19 _-.?\n\t\x1c\u212a\u017f\u0131\xe9\xc9\u2014\u4e2d"
_ATOMS = [
    "a",
    "k",
    "s",
    "I",
    ".",
    r"\w",
    r"\W",
    r"\s",
    r"\S",
    r"\d",
    r"\b",
    r"\B",
    "[a-k]",
    r"\?",
    "[^a]",
    r"[\w-]",
    "\xe9",
    "\u212a",
    "^",
    "$",
    r"\A",
    r"\Z",
    "(?=a)",
    "(?!b)",
    "(?<=a)",
]


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        atom = draw(st.sampled_from(_ATOMS))
        if atom not in ("^", "$", r"\A", r"\Z", r"\b", r"\B") and not atom.startswith("(?"):
            atom += draw(st.sampled_from(["", "", "?", "*", "+", "{2}", "{1,3}", "{0,12}"]))
        parts.append(atom)
    body = "".join(parts)
    if draw(st.booleans()):
        body = f"(?:{body}|{draw(st.sampled_from(_ATOMS[:12]))}x)"
    return body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _patterns(),
    st.sampled_from([0, re.I, re.M, re.S, re.I | re.M]),
    st.lists(st.text(_ALPHABET, max_size=24), min_size=1, max_size=6),
)
def test_the_rewrite_never_loses_a_match_and_is_exact_where_it_says(
    source: str, flags: int, texts: list[str]
) -> None:
    pattern = re.compile(source, flags)
    try:
        rewrite = to_bytes_pattern(pattern)
    except Untranslatable:
        return
    patterns = PatternSet([pattern])
    if not patterns.active:
        return  # hyperscan refused it: the rule engine keeps it on the re path
    for text in texts:
        python = pattern.search(text) is not None
        data = patterns.encode(text)
        ours = 0 in patterns.scan(data)
        assert ours or not python, (source, flags, text, rewrite.expression)
        if patterns.exact[0] and patterns.ambiguous[0].isdisjoint(data):
            assert ours == python, (source, flags, text, rewrite.expression)


def test_each_character_is_one_byte_and_ascii_stays_as_it_is() -> None:
    data = text_bytes("a?\xe9?\u4e2d\U0001f600b\u3000")
    assert len(data) == 8 and data[:2] + data[3:4] + data[6:7] == b"a??b"
    # A letter is a letter wherever it comes from; an emoji is not one; a space is a space.
    assert data[2] == data[4] != data[5] != data[7] != data[2]
    assert text_bytes("plain ascii?") == b"plain ascii?"


def test_a_character_python_folds_to_ascii_is_found_case_insensitively() -> None:
    # The Kelvin sign is "k" to re.IGNORECASE; byte-wise it is three non-ASCII bytes.
    patterns = PatternSet([re.compile(r"\bok\b", re.I), re.compile("caf\xe9")])
    assert patterns.scan(patterns.encode("it is O\u212a now")) == {0}
    assert patterns.scan(patterns.encode("un caf\xe9 noir")) == {1}
    assert patterns.scan(patterns.encode("a cafe")) == set()


def test_full_set_is_compiled_once_and_loaded_from_the_cache(tmp_path: Path) -> None:
    rules = [re.compile(r"\bviagra\b", re.I), re.compile(r"(a)\1"), re.compile("x*")]
    first = PatternSet(rules, tmp_path)
    # A back-reference and an empty match have no hyperscan form: left to re.
    assert first.rejected == {1, 2}
    assert len(list(tmp_path.glob("*.hsdb"))) == 1
    again = PatternSet(rules, tmp_path)
    assert again.rejected == {1, 2}
    assert again.scan(again.encode("Buy VIAGRA now")) == {0}


def test_threads_scan_one_database_at_once() -> None:
    # Rules run in worker threads (run_cpu_bound); hyperscan's scratch space is per scan.
    patterns = PatternSet([re.compile(r"\bfree\b", re.I), re.compile(r"money{1,3}")])
    text = patterns.encode("Free moneyyy here. " * 2000)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _n: patterns.scan(text), range(400)))
    assert answers == [{0, 1}] * 400


def _corpus_messages(corpus: Path) -> list[Path]:
    files = sorted((corpus / "spam").rglob("*.eml"))
    public = corpus / "spam-public"
    for folder in ("spam-2", "easy-ham-1", "hard-ham-1"):
        files += sorted((public / folder).glob("*"))[:40]
    return files


def _once_per_targets(regex_hits: Callable[[RuleTargets], set[str]]) -> Callable[..., set[str]]:
    """``regex_hits`` run once for the same targets object (a copy of that answer again):
    it is a function of the targets, and the re engine's pass over the stock set is most of
    the engine comparison's time."""
    last: list[tuple[RuleTargets, set[str]]] = []

    def once(targets: RuleTargets) -> set[str]:
        if not last or last[0][0] is not targets:
            last[:] = [(targets, regex_hits(targets))]
        return set(last[0][1])

    return once


# Compiling the stock set's databases takes minutes on 2 cores the first time (then cached).
@pytest.mark.timeout(900)
def test_hyperscan_and_re_give_the_same_hits_on_the_corpus(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_packages("spamassassin")
    need(STOCK.is_dir(), f"the spamassassin package left no rules in {STOCK}")
    files = _corpus_messages(corpus)
    need(len(files) > 100, "the shared corpus's spam sets")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fast = load_rules([STOCK, BUILTIN_RULES])
        slow = load_rules([STOCK, BUILTIN_RULES], engine="re")
    assert fast._matching.fast, "hyperscan databases were built"
    # The rules a score of 0 turns off are not in those databases (nor in the gateway's):
    # compared in a set of their own, as an admin who scores one runs them. Theirs compile
    # in seconds; the whole set again with them would be another cold compile in CI.
    assert len(fast.disabled) > 100
    off_rules = {name: fast.rules[name] for name in fast.disabled}
    off_fast = RuleSet(rules=off_rules, unscored=True).compile()
    off_slow = RuleSet(rules=dict(off_rules), engine="re", unscored=True).compile()
    assert off_fast._matching.fast, "hyperscan databases of the rules scored 0 were built"
    # match() below reuses the reference's regex pass over the same targets.
    monkeypatch.setattr(slow, "regex_hits", _once_per_targets(slow.regex_hits))
    plugin = AntispamPlugin()
    plugin.configure(AntispamConfig(rule_files=[str(STOCK)]))
    compared = total = metas = off_hits = 0
    for path in files:
        message = parse(path.read_bytes())
        targets = plugin._targets_of(message, "", message_urls(message))
        ours, reference = fast.regex_hits(targets), slow.regex_hits(targets)
        assert ours == reference, (path.name, ours ^ reference)
        off = off_slow.regex_hits(targets)
        assert off_fast.regex_hits(targets) == off, (path.name, off)
        off_hits += len(off)
        compared += 1
        total += len(reference)
        assert fast.match(targets) == slow.match(targets)
        # Only the metas downstream of the hits are evaluated: the same as evaluating all.
        downstream, everywhere = set(reference), set(reference)
        fast._resolve_metas(downstream)
        fast._resolve_metas_everywhere(everywhere)
        assert downstream == everywhere, (path.name, downstream ^ everywhere)
        metas += len(everywhere - reference)
    assert compared == len(files) and total > compared and metas > compared  # rules did hit
    assert off_hits > 0


@pytest.mark.parametrize("engine", ["hyperscan", "re"])
def test_shipped_rules_catch_a_spam_sample_with_either_engine(engine: str, corpus: Path) -> None:
    rules = load_rules([BUILTIN_RULES], engine=engine)
    plugin = AntispamPlugin()
    plugin.configure(AntispamConfig())
    plugin.rules = rules
    sample = next((corpus / "spam-public" / "spam-2").glob("*"))
    message = parse(sample.read_bytes())
    hits = plugin.local_hits(message)
    assert any(h.startswith("MW_") for h in hits)


def test_the_compiled_cache_keeps_the_recently_used_and_stays_under_its_cap(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "hyperscan"
    used = PatternSet([re.compile(r"viagra\w+"), re.compile(r"free\s+money")], cache=cache)
    assert used.active and len(list(cache.glob("*.hsdb"))) == 1
    # Entries of rule sets edited since: older than the one in use, 1 MB each.
    for n in range(5):
        (cache / f"old{n}.hsdb").write_bytes(b"x" * 1_000_000)
        (cache / f"old{n}.rejected").write_text("\n")
        os.utime(cache / f"old{n}.hsdb", (1000 + n, 1000 + n))
    # Written long ago (older than every stale entry); loading it again marks it used now.
    for entry in cache.glob("*.hsdb"):
        if not entry.name.startswith("old"):
            os.utime(entry, (500, 500))
    again = PatternSet([re.compile(r"viagra\w+"), re.compile(r"free\s+money")], cache=cache)
    assert again.active
    trim_cache(cache, max_bytes=2_500_000)
    left = sorted(p.name for p in cache.glob("*.hsdb"))
    # The two oldest stale entries stay only if the cap allows: 2.5 MB keeps the set in use
    # and the two most recent stale ones, never an older one before a newer one.
    assert [name for name in left if name.startswith("old")] == ["old3.hsdb", "old4.hsdb"]
    assert len(left) == 3
    assert not (cache / "old0.rejected").exists()


def test_a_cold_cache_answers_at_once_and_the_same_after_the_compiled_swap(
    tmp_path: Path, corpus: Path
) -> None:
    cache = tmp_path / "hyperscan"
    cache.mkdir()
    plugin = AntispamPlugin()
    plugin.configure(AntispamConfig())
    targets = []
    for path in _corpus_messages(corpus)[::8]:
        message = parse(path.read_bytes())
        targets.append(plugin._targets_of(message, "", message_urls(message)))
    need(len(targets) > 10, "the shared corpus's spam sets")
    with (cache / "compile.lock").open("a+b") as held:
        # Another worker is compiling into this cache: this start must not wait for it.
        fcntl.flock(held, fcntl.LOCK_EX)
        rules = load_rules([BUILTIN_RULES], cache=cache, background=True)
        assert not rules.ready and not rules._matching.fast
        before = [[r.name for r in rules.match(t)] for t in targets]
        fcntl.flock(held, fcntl.LOCK_UN)
    assert rules.wait_ready(600)
    assert rules._matching.fast, "switched to the hyperscan databases"
    assert [[r.name for r in rules.match(t)] for t in targets] == before
    assert any(before)
    # The next worker finds them in the cache: on hyperscan from its first message.
    again = load_rules([BUILTIN_RULES], cache=cache, background=True)
    assert again.ready and again._matching.fast
    assert [[r.name for r in again.match(t)] for t in targets] == before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _patterns(),
    st.sampled_from([0, re.I, re.M, re.S]),
    st.lists(st.text(_ALPHABET, max_size=24), min_size=1, max_size=6),
)
def test_a_counted_repeat_is_tried_at_every_offset_where_its_copy_can_start(
    source: str, flags: int, texts: list[str]
) -> None:
    # X{m} that hyperscan refuses whole is scanned as X, and re then tries a match only
    # where X's reversed rewrite, over the reversed text, says a copy can start.
    pattern = re.compile(f"(?:{source}){{2,3}}", flags)
    copy = re.compile(source, flags)
    alphabet = Alphabet.for_patterns([pattern])
    try:
        counted = [r for r in rewrites(pattern, alphabet) if r.starts]
    except Untranslatable:
        return
    hs = pytest.importorskip("hyperscan")
    for rewrite in counted:
        db = hs.Database(mode=hs.HS_MODE_BLOCK)
        try:
            db.compile(expressions=[rewrite.starts], flags=[0])
        except hs.error:
            continue  # refused: that pattern is searched in the whole text
        for text in texts:
            found = _reversed_ends(db, alphabet.encode(text)[::-1])
            # Where a copy of X matches (not empty), and so where the whole pattern can.
            copies = {at for at in range(len(text)) if (m := copy.match(text, at)) and m.end() > at}
            assert copies <= found, (source, flags, text, rewrite.starts)
            whole = {at for at in range(len(text)) if pattern.match(text, at)}
            assert whole <= found, (source, flags, text, rewrite.starts)


def _reversed_ends(db: object, data: bytes) -> set[int]:
    """The forward offsets of the ends a database reports over reversed ``data``."""
    found: set[int] = set()
    if data:

        def on_match(_i: int, _s: int, end: int, _f: int, _c: object) -> None:
            found.add(len(data) - end)

        db.scan(data, match_event_handler=on_match)  # type: ignore[attr-defined]
    return found


@given(
    st.lists(
        st.sampled_from(["From: Joe Bloggs <a@b>", "xFrom: Joe Bloggs", "Joe Bloggs", "From:", ""]),
        max_size=6,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
@settings(max_examples=200, deadline=None)
def test_a_line_anchored_pattern_tried_only_at_its_lines_answers_as_re(
    lines: list[str], newline: str
) -> None:
    # SpamAssassin's __FROM_NAME_IN_MSG (a back-reference, so always confirmed by re): re
    # tries it only at the lines that start with "From:" instead of at every offset.
    pattern = re.compile(r"^From:\s+([^<]\S+\s\S+)\s(?=.{1,2048}^\1\r?$)", re.S | re.M)
    patterns = PatternSet([pattern], cache=None)
    text = newline.join(lines)
    assert (patterns.confirmed(text) == [0]) == (pattern.search(text) is not None), text


# ".{a,b}^" under DOTALL and MULTILINE (SpamAssassin's __FROM_NAME_IN_MSG), which re runs
# as ".{a-1,b-1}\n" (fastmatch._faster_form), greedy, lazy, nested, beside a back-reference.
_NEWLINE_REPEATS = [
    r"^From:\s+(\S+)\s(?=.{1,40}^\1\r?$)",
    r"a.{2,6}^b",
    r"a.{1,}?^b",
    r"(?:x|a.+^b)c",
    r"(?=.{1,3}^)\S",
    r"(a(?:.{1,4}^From:)+)",
]


@given(st.lists(st.sampled_from(["a", "b", "c", "x", "\n", "\r", " ", "From: ", "From: ab"])))
@settings(max_examples=300, deadline=None)
def test_a_repeat_of_any_character_before_a_caret_is_run_as_one_before_a_newline(
    pieces: list[str],
) -> None:
    text = "".join(pieces)
    for source in _NEWLINE_REPEATS:
        pattern = re.compile(source, re.S | re.M)
        faster = fastmatch._faster_form(pattern)
        assert faster is not None, source
        expected, found = pattern.search(text), faster.search(text)
        assert (found and (found.span(), found.groups())) == (
            expected and (expected.span(), expected.groups())
        ), (source, text)
    # Without DOTALL (or MULTILINE) "." or "^" mean something else: left as they are.
    assert fastmatch._faster_form(re.compile(r"a.{2,6}^b", re.M)) is None
    assert fastmatch._faster_form(re.compile(r"a(?-s:.{2,6})^b", re.S | re.M)) is None


# Multiline patterns whose every match starts a line, as SpamAssassin's ALL rules
# (__RAND_HEADER's /^(?!...)/ism): case folded, or with no literal after the ^.
_CARET_PATTERNS = [
    re.compile(
        r"^(?!Content-|MIME-)(?:[a-z]{4,}-[a-z]{3,}|[a-z]{3,}-[a-z]{4,}):\s+\d(?=\S{6,}\s*$)"
        r"[\da-f]*\s*$",
        re.I | re.M | re.S,
    ),
    re.compile(r"^to:\s+<?[^@]+@([^.]+)\.(?:[^\n]+\n+)*^subject: \1", re.I | re.M | re.S),
    re.compile(r"^(?!.*\b1\.0\b).+", re.M),
    re.compile(r"^T(?=o:)", re.M),
]


@given(
    st.lists(
        st.sampled_from(
            [
                "Content-Length: 12345678",
                "X-Trace-Id: 1abcdef0",
                "x-trace-id: 1ab",
                "MIME-Version: 1.0",
                "To: <joe@example.org>",
                "Subject: example offer",
                "subject: EXAMPLE",
                " folded",
                "",
            ]
        ),
        max_size=8,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
@settings(max_examples=200, deadline=None)
def test_a_multiline_caret_pattern_tried_only_at_line_starts_answers_as_re(
    lines: list[str], newline: str
) -> None:
    patterns = PatternSet(_CARET_PATTERNS, cache=None)
    # Tried at the line starts only (the literal where one is certain), not at every offset.
    assert patterns._line_starts == {0: "", 1: "", 2: "", 3: "T"}
    text = newline.join(lines)
    expected = {i for i, p in enumerate(_CARET_PATTERNS) if p.search(text)}
    # (confirmed() answers for what hyperscan took; the framed header scan takes the
    # back-reference too and asks holds() for it.)
    assert set(patterns.confirmed(text)) == expected - patterns.rejected, text
    assert {i for i in range(len(_CARET_PATTERNS)) if patterns.holds(i, text)} == expected
    # The re path's searches (rules hyperscan refused) walk the lines too.
    assert {i for i, p in enumerate(_CARET_PATTERNS) if fastmatch.found_in(p, text)} == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(
            st.sampled_from(["name", "city", "zip", ": ", "___ ", "and ", "your ", "x", "\n"]),
            max_size=14,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_repeat_scanned_as_one_copy_is_skipped_only_where_no_copies_join(
    texts: list[list[str]],
) -> None:
    # SpamAssassin's __FILL_THIS_FORM_* (X{5} of a 12 KB X) are too large for hyperscan
    # whole: X is scanned, and re runs only when m - 1 offsets end one copy and start another.
    pattern = re.compile(r"(?:(?:your\s)?(?:name|city|zip)[:\s]+(?:_+\s*|and\s)){3}", re.I)
    real = fastmatch._compile

    def refuse_the_whole(chosen: dict[int, tuple[object, bool]]) -> object:
        if any(b"{3}" in r.expression for r, _loose in chosen.values()):  # type: ignore[attr-defined]
            return None
        return real(chosen)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastmatch, "_compile", refuse_the_whole)
        patterns = PatternSet([pattern])
    assert patterns._copies == {0: 3}
    field = ["name", ": ", "___ "]
    texts = [
        *texts,
        field * 3,
        ["your ", "name", ": ", "and ", "city", ": ", "___ ", "zip", " ", "and "],
    ]
    texts.append([*field, "x", *field, *field])  # three copies, not all joined
    for words in texts:
        text = "".join(words)
        assert patterns.confirmed(text) == ([0] if pattern.search(text) else []), text


# Header rules: one hyperscan scan over a block of framed texts, one frame per header name.
_HEADER_NAMES = ["Subject", "subject", "From", "From:addr", "From:name", "To", "ToCc"]
_HEADER_NAMES += ["MESSAGEID", "Message-Id", "ALL", "X-Mailer"]
_FIELDS = ["Subject", "From", "To", "Cc", "Message-Id", "Resent-Message-Id", "X-Mailer"]
# Back-references: hyperscan takes each as its group's pattern again, re decides.
_BACKREFS = [r"(\w)\1", r"^(a|k)\s*\1", r"(?i:(s)\w*\1)$", r"(\w+) <\1@", r"(?:(a)|b)\1"]
# Short anchored literals over a small alphabet: hits in one frame and not another are common.
_SMALL = st.builds(
    lambda start, text, end: start + text + end,
    st.sampled_from(["", "^", r"\A"]),
    st.text("ak \n", min_size=1, max_size=3),
    st.sampled_from(["", "$", r"\Z"]),
)
_VALUES = st.one_of(
    st.text(_ALPHABET, max_size=16),
    st.text("ak \n", max_size=5),
    st.text("ak ", min_size=1, max_size=3).map(lambda text: text + "\n"),  # Python's $
    st.sampled_from(['"Joe K" <joe@a.b>', "a@b, Kim <k@s.i>", "<>", "", " \n ", "<a@b>"]),
)


@st.composite
def _header_rule(draw: st.DrawFn, number: int, present: list[str]) -> Rule:
    source = draw(st.one_of(_patterns(), st.sampled_from(_BACKREFS), _SMALL))
    flags = draw(st.sampled_from([0, re.I, re.M, re.S, re.I | re.M]))
    # Mostly on headers the message has (hits and misses in neighbouring frames).
    header = draw(st.sampled_from(present + _HEADER_NAMES if present else _HEADER_NAMES))
    return Rule(
        f"R{number}",
        "header",
        "test",
        pattern=re.compile(source, flags),
        header=header,
        negate=draw(st.sampled_from([False, False, True])),
        if_unset=draw(st.sampled_from([None, None, None, "", "a k"])),
    )


def _header_targets(fields: list[tuple[str, str]]) -> RuleTargets:
    headers: dict[str, list[str]] = {}
    for name, value in fields:
        headers.setdefault(name.lower(), []).append(value)
    text = "\n".join(f"{name}: {value}" for name, value in fields)
    return RuleTargets(headers=headers, body="", rawbody="", uris=[], full="", all_headers=text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_FIELDS), _VALUES), max_size=7), st.data())
def test_header_rules_in_one_framed_scan_hit_as_re(
    fields: list[tuple[str, str]], data: st.DataObject
) -> None:
    # Every header name's text in a frame of its own: ^ and $ are the frame's ends, a rule
    # matches in its own name's frame only, several headers of a name are one text (joined
    # by newlines), pseudo-headers and :addr/:name as re reads them, negations and
    # [if-unset] where the header is absent.
    pytest.importorskip("hyperscan")
    present = sorted({name for name, _value in fields} | {"From:addr", "ToCc", "ALL"})
    count = data.draw(st.integers(1, 6))
    rules = [data.draw(_header_rule(i, present)) for i in range(count)]
    fast = RuleSet(rules={r.name: r for r in rules}, cache=None).compile()
    slow = RuleSet(rules={r.name: r for r in rules}, cache=None, engine="re").compile()
    assert fast._matching.headers is not None
    assert fast.regex_hits(_header_targets(fields)) == slow.regex_hits(_header_targets(fields))


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Calls of PatternSet.``name`` from now on (it still runs)."""
    calls: list[int] = []
    real = getattr(PatternSet, name)

    def counted(self: PatternSet, *args: object) -> object:
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(PatternSet, name, counted)
    return calls


def test_header_rules_on_many_names_are_answered_by_one_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hyperscan")
    rules = tmp_path / "headers.cf"
    rules.write_text(
        "header SUBJ_FREE Subject =~ /^free\\b/i\n"
        "header FROM_BIZ From:addr =~ /\\.biz$/\n"
        "header TO_LIST ToCc =~ /list@/\n"
        "header NO_MAILER X-Mailer !~ /./\n"
        "header MID_SHORT MESSAGEID =~ /^.{1,15}$|<.{0,4}\\@/\n"
        "header ALL_PRECEDENCE ALL =~ /^Precedence: bulk$/m\n"
    )
    ruleset = load_rules([rules], cache=tmp_path / "cache")
    message = (
        b"From: Joe <joe@shop.biz>\r\nTo: a@b.example\r\nCc: list@b.example\r\n"
        b"Subject: Free gift\r\nMessage-Id: <1@b>\r\nX-Mailer: \r\nPrecedence: bulk\r\n\r\nhi\r\n"
    )
    plugin = AntispamPlugin()
    plugin.configure(AntispamConfig())
    targets = plugin._targets_of(parse(message), "", [])
    scans = _counting(monkeypatch, "_scan")
    hits = ruleset.regex_hits(targets)
    assert hits == {"SUBJ_FREE", "FROM_BIZ", "TO_LIST", "NO_MAILER", "MID_SHORT", "ALL_PRECEDENCE"}
    assert len(scans) == 1, "one hyperscan scan for the header rules of six names"
    reference = load_rules([rules], engine="re")
    assert reference.regex_hits(plugin._targets_of(parse(message), "", [])) == hits


def test_a_back_reference_header_rule_runs_re_only_where_hyperscan_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SpamAssassin's __0_TZ_* rules: hyperscan takes "\1" as "\w" again (a superset), so a
    # From: with no quoted name is told it cannot match without running the regex.
    pytest.importorskip("hyperscan")
    rules = tmp_path / "backref.cf"
    rules.write_text('header NAME_IS_USER From =~ /^"(\\w+)" <\\1@/\n')
    ruleset = load_rules([rules], cache=tmp_path / "cache")
    reference = load_rules([rules], engine="re")
    plugin = AntispamPlugin()
    plugin.configure(AntispamConfig())
    confirmations = _counting(monkeypatch, "holds")
    for sender, hit, confirmed in (
        ('"joe" <joe@example.com>', True, 1),
        ('"joe" <ann@example.com>', False, 1),
        ("Joe <joe@example.com>", False, 0),
    ):
        raw = f"From: {sender}\r\nTo: a@b\r\nSubject: x\r\n\r\nbody\r\n".encode()
        before = len(confirmations)
        hits = ruleset.regex_hits(plugin._targets_of(parse(raw), "", []))
        assert ("NAME_IS_USER" in hits) == hit, sender
        assert hits == reference.regex_hits(plugin._targets_of(parse(raw), "", []))
        assert len(confirmations) - before == confirmed, sender


# 500 examples: drawing from the regex is nearly all of the time (7 ms an example), and
# planted bugs in _SIMPLE_ADDRESS that 1,500 examples caught were caught by 300 as well.
@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.from_regex(_SIMPLE_ADDRESS, fullmatch=True),
        st.text(' \t"<>@.,;:()\\[]aZ9_+=-\xe9', max_size=30),
        st.sampled_from(['"Joe" <a@b>', 'Joe "B" <a@b>', "a@b (Joe)", "<a@b>, c@d", "Joe <a@b"]),
    )
)
def test_the_common_address_forms_read_as_email_utils_reads_them(value: str) -> None:
    # From:addr and From:name are read directly in the common forms: as getaddresses would.
    assert _addresses([value]) == email.utils.getaddresses([value])


@pytest.mark.parametrize("source", [r"(?s)a.*b", r"a[^x]*b", r"a\W*b", r"a\S*b", r"a\D+b"])
def test_a_header_rule_never_matches_across_two_headers(source: str) -> None:
    # "a" ends the Subject and "b" starts X-Mailer: in the scanned block only the frame
    # bytes between them, which no rewritten class may take (whatever "any character" is).
    pytest.importorskip("hyperscan")
    rules = [
        Rule("SUBJ", "header", "test", pattern=re.compile(source), header="Subject"),
        Rule("MAILER", "header", "test", pattern=re.compile("zz"), header="X-Mailer"),
    ]
    fast = RuleSet(rules={r.name: r for r in rules}, cache=None).compile()
    targets = _header_targets([("Subject", "xa"), ("X-Mailer", "b\xe9")])
    assert fast._matching.headers is not None
    assert fast._matching.headers.patterns.exact[0], "hyperscan's answer is final here"
    assert fast.regex_hits(targets) == set()
    assert fast.regex_hits(_header_targets([("Subject", "xa-b"), ("X-Mailer", "b")])) == {"SUBJ"}


# 240 letters named one by one: the header set's alphabet runs out of class bytes, so class
# bytes reach the tag bytes (0xc0 up), which must never be read as a letter before a text.
_MANY_LETTERS = "".join(chr(c) for c in range(0x100, 0x1E0))


@pytest.mark.parametrize(
    "subject", ["foo", "-foo", "x-foo", "\u0101foo", "\u0101-foo", "b\xe9 foo"]
)
def test_header_rules_over_a_full_alphabet_hit_as_re(subject: str) -> None:
    pytest.importorskip("hyperscan")
    rules = [
        Rule("SUBJ_FOO", "header", "test", pattern=re.compile(r"\bfoo"), header="Subject"),
        Rule("SUBJ_DASH", "header", "test", pattern=re.compile(r"\b-foo"), header="Subject"),
        Rule("SUBJ_AB", "header", "test", pattern=re.compile(r"(?s)o.*b"), header="Subject"),
        Rule("ANY", "header", "test", pattern=re.compile(f"[{_MANY_LETTERS}]z"), header="To"),
    ]
    rules += [
        Rule(f"L{i}", "header", "test", pattern=re.compile(f"{c}q"), header="X-Mailer")
        for i, c in enumerate(_MANY_LETTERS)
    ]
    fast = RuleSet(rules={r.name: r for r in rules}, cache=None).compile()
    slow = RuleSet(rules={r.name: r for r in rules}, cache=None, engine="re").compile()
    headers = fast._matching.headers
    assert headers is not None and headers.patterns.alphabet is not None
    classes = headers.patterns.alphabet.bytes
    assert max(classes) < fastmatch.FRAME_START, "the frame bytes are left to the frames"
    assert headers.heads[0][-1] in headers.patterns.alphabet.word_bytes, "a letter's byte"
    assert not headers.patterns.rejected, "every rule is answered by the one scan"
    for fields in (
        [("Subject", subject), ("To", "\u0102z")],
        [("Subject", subject), ("X-Mailer", "b\u01a0q")],
        [("Subject", subject + "o"), ("To", "b")],
    ):
        targets = _header_targets(fields)
        assert fast.regex_hits(targets) == slow.regex_hits(targets), fields
