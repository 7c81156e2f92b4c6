"""Meta rules over every operator, as a message's hits resolve them: only the metas an input
changed for are evaluated (rules.py), and the result must be SpamAssassin's, every meta
evaluated once after the metas it names, on generated rule sets and hits."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden_antispam.rules import RuleSet, RuleTargets, load_rules

# Body rules (one word each), a name no rule has and a code another check gives.
LEAVES = {"L0": "w0", "__L1": "w1", "L2": "w2", "__L3": "w3"}
OTHER = ["NOPE", "X0"]

Tree = tuple[Any, ...]
_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _trees(names: list[str]) -> st.SearchStrategy[Tree]:
    leaf = st.one_of(
        st.sampled_from(names).map(lambda n: ("name", n)),
        st.integers(0, 3).map(lambda k: ("num", k)),
    )
    return st.recursive(
        leaf,
        lambda sub: st.one_of(
            sub.map(lambda e: ("not", e)),
            st.tuples(st.sampled_from(["and", "or"]), sub, sub),
            st.tuples(st.just("arith"), st.sampled_from(sorted(_ARITH)), sub, sub),
            st.tuples(st.just("cmp"), st.sampled_from(sorted(_COMPARE)), sub, sub),
        ),
        max_leaves=6,
    )


def _render(tree: Tree) -> str:
    kind = tree[0]
    if kind in ("name", "num"):
        return str(tree[1])
    if kind == "not":
        return f"(!{_render(tree[1])})"
    if kind in ("and", "or"):
        op = "&&" if kind == "and" else "||"
        return f"({_render(tree[1])} {op} {_render(tree[2])})"
    return f"({_render(tree[2])} {tree[1]} {_render(tree[3])})"


def _evaluate(tree: Tree, value: Callable[[str], bool]) -> Any:
    kind = tree[0]
    if kind == "name":
        return value(tree[1])
    if kind == "num":
        return tree[1]
    if kind == "not":
        return not _evaluate(tree[1], value)
    if kind == "and":
        return _evaluate(tree[1], value) and _evaluate(tree[2], value)
    if kind == "or":
        return _evaluate(tree[1], value) or _evaluate(tree[2], value)
    table = _ARITH if kind == "arith" else _COMPARE
    return table[tree[1]](_evaluate(tree[2], value), _evaluate(tree[3], value))


def _meta_name(i: int, scored: bool) -> str:
    return f"M{i}" if scored else f"__M{i}"


@st.composite
def _acyclic(draw: st.DrawFn) -> tuple[dict[str, Tree], list[str]]:
    """Metas that each name only leaves and metas made before it, declared in any order."""
    metas: dict[str, Tree] = {}
    for i in range(draw(st.integers(1, 10))):
        names = [*LEAVES, *OTHER, *metas]
        metas[_meta_name(i, draw(st.booleans()))] = draw(_trees(names))
    order = draw(st.permutations(list(metas)))
    return metas, order


def _load(metas: dict[str, Tree], order: list[str]) -> RuleSet:
    lines = [f"body {name} /\\b{word}\\b/" for name, word in LEAVES.items()]
    lines += [f"meta {name} {_render(metas[name])}" for name in order]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "50_metas.cf"
        path.write_text("\n".join(lines) + "\n")
        rules = load_rules([path], engine="re", cache=Path(tmp))
    # A few metas are left to Python (the C call costs more): the C program, as a large set
    # gets it, is what these tests hold to SpamAssassin's evaluation.
    rules._compile_program(least=1)
    return rules


def _targets(words: list[str]) -> RuleTargets:
    return RuleTargets(headers={}, body=" ".join(words), rawbody="", uris=[], full="")


def _spamassassin(
    metas: dict[str, Tree], words: list[str], extra: set[str]
) -> tuple[set[str], list[str]]:
    """Every name that hits, each meta evaluated once from its inputs' final values (a
    division by zero leaves it not hit), and what match() reports: the scored ones hit."""
    memo: dict[str, bool] = {}

    def value(name: str) -> bool:
        if name in extra:
            return True
        if name not in metas:
            return LEAVES.get(name) in words
        if name not in memo:
            try:
                memo[name] = bool(_evaluate(metas[name], value))
            except ZeroDivisionError:
                memo[name] = False
        return memo[name]

    hit = extra | {n for n in [*LEAVES, *OTHER, *metas] if value(n)}
    reported = sorted(n for n in hit - extra if not n.startswith("__") and n in [*LEAVES, *metas])
    return hit, reported


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _acyclic(),
    st.lists(st.sampled_from(sorted(LEAVES.values())), unique=True),
    st.sets(st.sampled_from([*OTHER, "M0", "__M1", "M2"])),
)
def test_metas_resolve_as_each_evaluated_after_its_inputs(
    generated: tuple[dict[str, Tree], list[str]], words: list[str], extra: set[str]
) -> None:
    metas, order = generated
    rules = _load(metas, order)
    assert set(metas) <= rules.rules.keys()
    assert rules._program is not None
    hit, reported = _spamassassin(metas, words, extra)
    found = [r.name for r in rules.match(_targets(words), extra)]
    assert found == reported, {n: _render(metas[n]) for n in order}
    # The metas' full resolution too (sub-rules included), from the rules and codes that hit.
    resolved = rules.regex_hits(_targets(words)) | extra
    rules._resolve_metas(resolved)
    assert resolved == hit


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(2, 8).flatmap(
        lambda n: st.lists(
            _trees([*LEAVES, *OTHER, *(_meta_name(i, i % 2 == 0) for i in range(n))]),
            min_size=n,
            max_size=n,
        )
    ),
    st.lists(st.sampled_from(sorted(LEAVES.values())), unique=True),
    st.sets(st.sampled_from(OTHER)),
)
def test_metas_on_cycles_reach_the_fixpoint_of_evaluating_every_meta(
    trees: list[Tree], words: list[str], extra: set[str]
) -> None:
    # Metas may name any meta, themselves included: cycles go to the fixpoint, as before.
    metas = {_meta_name(i, i % 2 == 0): tree for i, tree in enumerate(trees)}
    rules = _load(metas, list(metas))
    hits = rules.regex_hits(_targets(words)) | extra
    downstream, everywhere = set(hits), set(hits)
    rules._resolve_metas(downstream)
    rules._resolve_metas_everywhere(everywhere)
    assert downstream == everywhere, {n: _render(t) for n, t in metas.items()}


def test_a_meta_negating_a_rule_that_hit_is_withdrawn_and_its_readers_follow(
    tmp_path: Path,
) -> None:
    # NOT_W0 hits on a message without w0 and reads as hit in ALSO; with w0 both drop.
    (tmp_path / "50_metas.cf").write_text(
        "body __W0 /\\bw0\\b/\nbody __W1 /\\bw1\\b/\n"
        "meta NOT_W0 !__W0\nmeta ALSO NOT_W0 && !__W1\nmeta BOTH __W0 && __W1\n"
    )
    rules = load_rules([tmp_path / "50_metas.cf"], engine="re", cache=tmp_path)
    rules._compile_program(least=1)
    assert [r.name for r in rules.match(_targets(["x"]))] == ["ALSO", "NOT_W0"]
    assert [r.name for r in rules.match(_targets(["w0"]))] == []
    assert [r.name for r in rules.match(_targets(["w1"]))] == ["NOT_W0"]
    assert [r.name for r in rules.match(_targets(["w0", "w1"]))] == ["BOTH"]


def _flat(tree: Tree, draw: st.DrawFn) -> str:
    """``tree`` as a meta, parentheses left out where the draw says: Perl's precedence is not
    Python's, but the C program and the Python functions read the same Python expression, so
    they must agree however it parses (chained comparisons included)."""
    kind = tree[0]
    if kind == "name":
        return str(tree[1])
    if kind == "num":
        return draw(st.sampled_from([str(tree[1]), f"-{tree[1]}", f"{tree[1]}.5"]))
    if kind == "not":
        return f"(!{_flat(tree[1], draw)})"  # Python takes no "not" as an operand unbracketed
    if kind in ("and", "or"):
        text = f"{_flat(tree[1], draw)} {'&&' if kind == 'and' else '||'} {_flat(tree[2], draw)}"
    else:
        text = f"{_flat(tree[2], draw)} {tree[1]} {_flat(tree[3], draw)}"
    return f"({text})" if draw(st.booleans()) else text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_c_program_resolves_metas_as_their_python_functions(data: st.DataObject) -> None:
    metas: dict[str, str] = {}
    for i in range(data.draw(st.integers(1, 10))):
        tree = data.draw(_trees([*LEAVES, *OTHER, *metas]))
        metas[_meta_name(i, data.draw(st.booleans()))] = _flat(tree, data.draw)
    lines = [f"body {name} /\\b{word}\\b/" for name, word in LEAVES.items()]
    lines += [f"meta {name} {expr}" for name, expr in metas.items()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "50_metas.cf"
        path.write_text("\n".join(lines) + "\n")
        rules = load_rules([path], engine="re", cache=Path(tmp))
    assert rules._program is None  # so few metas: the Python functions run
    rules._compile_program(least=1)
    assert rules._program is not None, metas
    for _ in range(5):
        hits = data.draw(st.sets(st.sampled_from([*LEAVES, *OTHER, *metas])))
        in_c, in_python = set(hits), set(hits)
        rules._resolve_metas(in_c)
        rules._resolve_metas_python(in_python)
        assert in_c == in_python, (metas, hits)


def test_flag_expressions_refuse_a_malformed_program() -> None:
    from mailwarden_sdk import OP, FlagExpressions

    good = FlagExpressions([[OP.HIT, 0, OP.CONST, 2.0, OP.DIV]], [1], 2)
    assert good.base == (False,) and good.changed([0]) == [0]
    for programs, flags in (
        ([[OP.HIT, 0, OP.AND]], [1]),  # AND without its second operand
        ([[OP.HIT, 0, OP.HIT, 0]], [1]),  # two values left
        ([[OP.HIT, 5]], [1]),  # no such flag
        ([[OP.HIT, 1]], [1]),  # reads its own flag
        ([[OP.HIT, 0], [OP.HIT, 0]], [1, 1]),  # two programs setting one flag
        ([[99]], [1]),  # no such opcode
        ([[OP.CONST, 1.0] * 65 + [OP.ADD] * 64], [1]),  # a stack deeper than 64
    ):
        try:
            FlagExpressions(programs, flags, 2)
        except ValueError:
            continue
        raise AssertionError(f"accepted {programs}")
