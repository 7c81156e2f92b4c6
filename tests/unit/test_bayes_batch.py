"""Autolearn's batches write what the same lessons learned one by one write: the token
counts of a run of new messages are summed before they are stored (one write per distinct
token), which must change nothing, moves between classes and clamped counts included."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_antispam import bayes as bayes_module
from mailwarden_antispam.bayes import Bayes

WORDS = st.sampled_from(["cheap", "meds", "hello", "meeting", "w\u00e9lt", "x" * 130])
LESSONS = st.lists(
    st.tuples(st.integers(0, 7), st.sampled_from(["spam", "ham"]), st.sets(WORDS, max_size=5)),
    max_size=25,
)


def _state(store: Bayes) -> tuple[dict[bytes, bytes], dict[bytes, bytes], tuple[int, int], list]:
    with store.env.begin() as txn:
        tokens = {bytes(k): bytes(v) for k, v in txn.cursor(db=store._tokens)}
        learned = {bytes(k): bytes(v) for k, v in txn.cursor(db=store._learned)}
    journal = [(r.action, r.label, r.digest) for r in store.journal()]
    return tokens, learned, store.counts(), journal


def _lessons(spec: list[tuple[int, str, set[str]]]) -> list[bayes_module._Lesson]:
    # A message's tokens are its own: the same digest always carries the same tokens.
    return [
        bayes_module._Lesson(f"{n:064x}", label, frozenset(words) | {f"id{n}"}, "autolearn", None)
        for n, label, words in spec
    ]


@settings(max_examples=50, deadline=None)
@given(before=LESSONS, batch=LESSONS, forget=st.sets(WORDS))
def test_a_batch_writes_what_its_lessons_one_by_one_write(
    before: list[tuple[int, str, set[str]]],
    batch: list[tuple[int, str, set[str]]],
    forget: set[str],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        one, summed = Bayes(Path(tmp) / "one"), Bayes(Path(tmp) / "summed")
        try:
            for store in (one, summed):
                with store._committing() as txn:
                    for lesson in _lessons(before):
                        store._learn_in(txn, lesson)
                    # Tokens gone (expired) while their messages stay learned: a later move
                    # subtracts from nothing, and the counts must clamp at zero alike.
                    for word in forget:
                        txn.delete(word.encode()[:500], db=store._tokens)
            with one._committing() as txn:
                for lesson in _lessons(batch):
                    one._learn_in(txn, lesson)
            with summed._committing() as txn:
                summed._learn_batch_in(txn, _lessons(batch))
            assert _state(one) == _state(summed)
            # The in-process count cache took the same writes.
            assert one._cache == summed._cache
        finally:
            one.close()
            summed.close()
