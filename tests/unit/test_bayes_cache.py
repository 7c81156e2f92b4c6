"""Bayes answers from its in-memory token counts exactly as from the store: after this
process's lessons (explicit, autolearn's batches, unlearning, expiry) and after another
process's, which the cache cannot see being written."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden_antispam import bayes as bayes_module
from mailwarden_antispam.bayes import Bayes, _combine, _unpack, tokens
from mailwarden_sdk import parse
from tests.conftest import make_message

WORDS = ["casino", "pills", "winner", "agenda", "minutes", "budget", "review", "lunch", "offer"]


def _message(i: int, words: list[str]) -> bytes:
    return make_message(subject=f"note {i}", body=" ".join(words) + f" tag{i}\n")


def _from_store(store: Bayes, raw: bytes) -> float | None:
    """The probability read straight from the store, one token at a time (no cache)."""
    with store.env.begin() as txn:
        found = txn.get(b"n", db=store._meta)
        nspam, nham = bayes_module._PAIR.unpack(found) if found else (0, 0)
        if nspam < 2 or nham < 2:
            return None
        pairs = []
        for token in tokens(parse(raw)):
            s, h, _day = _unpack(txn.get(token.encode("utf-8")[:500], db=store._tokens))
            pairs.append((s, h))
    return _combine(pairs, nspam, nham)


_STEP = st.tuples(
    st.sampled_from(["spam", "ham", "later-spam", "later-ham", "forget", "ask"]),
    st.integers(0, 11),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_STEP, min_size=4, max_size=30))
def test_probabilities_from_the_cache_equal_the_stores_after_every_lesson(
    steps: list[tuple[str, int, list[str]]],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # A cap low enough that lessons expire tokens (which empties the cache) now and then.
        store = Bayes(Path(tmp) / "bayes", max_tokens=100)
        try:
            for i in range(2):
                store.learn(_message(100 + i, ["casino", "winner", "offer"]), "spam", "t")
                store.learn(_message(200 + i, ["agenda", "budget", "lunch"]), "ham", "t")
            for action, i, words in steps:
                raw = _message(i, words)
                if action in ("spam", "ham"):
                    store.learn(raw, action, "t")
                elif action.startswith("later-"):
                    toks = tokens(parse(raw))
                    store.learn_later(raw, action[6:], "autolearn", toks, None)
                elif action == "forget":
                    store.unlearn(raw, "t")
                store.flush()
                # Asked twice: the second answer comes from what the first put in the cache.
                for _ in range(2):
                    assert store.probability(parse(raw), 2) == _from_store(store, raw)
        finally:
            store.close()


_OTHER_PROCESS = """
import sys
from pathlib import Path
from typing import Any
from mailwarden_antispam.bayes import Bayes
from tests.conftest import make_message
store = Bayes(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    store.learn(make_message(subject=f"other {i}", body="casino winner lunch\\n"), "spam", "other")
store.close()
"""


def test_another_process_lesson_is_seen_by_the_next_probability(tmp_path: Path) -> None:
    path = tmp_path / "bayes"
    store = Bayes(path)
    try:
        for i in range(10):
            store.learn(_message(i, ["casino", "winner", "pills"]), "spam", "t")
            store.learn(_message(50 + i, ["agenda", "budget", "lunch"]), "ham", "t")
        asked = parse(make_message(subject="lunch", body="lunch agenda\n"))
        before = store.probability(asked)
        assert before is not None and before < 0.5  # "lunch" was only ever ham
        assert store.probability(asked) == before  # the cache answers now
        # Another gateway process teaches the same store: "lunch" is now mostly spam.
        subprocess.run(
            [sys.executable, "-c", _OTHER_PROCESS, str(path), "30"],
            check=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
        after = store.probability(asked)
        assert after is not None and after > before
        assert after == _from_store(store, make_message(subject="lunch", body="lunch agenda\n"))
        assert store.counts() == (40, 10)
    finally:
        store.close()
    # A process started now, with nothing cached, agrees.
    fresh = Bayes(path)
    try:
        assert fresh.probability(asked) == after
    finally:
        fresh.close()


def test_autolearn_batches_move_the_probability_the_cache_gives(tmp_path: Path) -> None:
    store = Bayes(tmp_path / "bayes")
    try:
        for i in range(10):
            store.learn(_message(i, ["casino", "winner"]), "spam", "t")
            store.learn(_message(50 + i, ["agenda", "budget"]), "ham", "t")
        asked = make_message(subject="budget", body="budget review\n")
        first = store.probability(parse(asked))
        for i in range(40):
            raw = _message(300 + i, ["budget", "review", "casino"])
            store.learn_later(raw, "spam", "autolearn", tokens(parse(raw)), None)
        deadline = time.monotonic() + 30
        while store.counts() != (50, 10) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.counts() == (50, 10)
        after = store.probability(parse(asked))
        assert after is not None and first is not None and after > first
        assert after == _from_store(store, asked)
    finally:
        store.close()


def _combine_one_by_one(pairs: list[tuple[int, int]], nspam: int, nham: int) -> float:
    """Robinson/Fisher as first written here: every token's clue computed in turn."""
    clues: list[float] = []
    for s, h in pairs:
        if not s and not h:
            continue
        spam_ratio, ham_ratio = s / nspam, h / nham
        p = spam_ratio / (spam_ratio + ham_ratio) if spam_ratio + ham_ratio else 0.5
        n = s + h
        f = (0.5 + n * p) / (1 + n)
        if abs(f - 0.5) > 0.1:
            clues.append(min(max(f, 0.01), 0.99))
    if not clues:
        return 0.5
    clues = sorted(clues, key=lambda f: (-abs(f - 0.5), f))[:150]
    ln_s = sum(math.log(1 - f) for f in clues)
    ln_h = sum(math.log(f) for f in clues)
    s_val = 1 - bayes_module._chi2q(-2 * ln_s, 2 * len(clues))
    h_val = 1 - bayes_module._chi2q(-2 * ln_h, 2 * len(clues))
    return (1 + s_val - h_val) / 2


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=400),
    st.integers(1, 500),
    st.integers(1, 500),
)
def test_clues_computed_once_per_count_give_the_same_probability_to_the_last_bit(
    pairs: list[tuple[int, int]], nspam: int, nham: int
) -> None:
    # Many tokens share counts, and more than 150 clues are cut to the strongest 150.
    expected = _combine_one_by_one(pairs, nspam, nham)
    memo: dict[tuple[int, int], Any] = {}
    assert _combine(pairs, nspam, nham, memo) == expected
    assert _combine(list(reversed(pairs)), nspam, nham, memo) == expected  # memo filled
