"""An RFC 8601 Authentication-Results reader for the tests: methods, results, properties."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Method", "parse_authentication_results"]


@dataclass
class Method:
    method: str
    result: str
    reason: str | None = None
    comments: list[str] = field(default_factory=list)
    props: dict[str, str] = field(default_factory=dict)


def _tokens(text: str) -> list[tuple[str, str]]:
    """("word" | "quoted" | "comment" | ";" | "=", text) in order; comments may nest."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in ";=":
            out.append((c, c))
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(("quoted", "".join(buf)))
            i = j + 1
        elif c == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            out.append(("comment", text[i + 1 : j - 1]))
            i = j
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in ';="(':
                j += 1
            out.append(("word", text[i:j]))
            i = j
    return out


def parse_authentication_results(value: str) -> list[Method]:
    """The methods of a header value (with or without the ``Authentication-Results:`` name).

    Strict about the grammar: a property without a value or a stray token fails the parse,
    so a test also proves the header is well-formed.
    """
    if value.lower().startswith("authentication-results:"):
        value = value.split(":", 1)[1]
    tokens = [t for t in _tokens(value)]
    groups: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token[0] == ";":
            groups.append([])
        else:
            groups[-1].append(token)
    methods: list[Method] = []
    for group in groups[1:]:
        comments = [t[1] for t in group if t[0] == "comment"]
        rest = [t for t in group if t[0] != "comment"]
        if [t[1] for t in rest] == ["none"]:
            continue
        assert len(rest) >= 3 and rest[1][0] == "=", f"bad resinfo: {group}"
        method = Method(rest[0][1], rest[2][1], comments=comments)
        i = 3
        while i < len(rest):
            name, eq, val = rest[i : i + 3]
            assert eq[0] == "=" and val[0] in ("word", "quoted"), f"bad property: {rest[i:]}"
            if name[1] == "reason":
                method.reason = val[1]
            else:
                assert "." in name[1], f"bad property name: {name[1]}"
                method.props[name[1]] = val[1]
            i += 3
        methods.append(method)
    return methods
