"""Settings forms generated from config schemas (the core's sections and each plugin's
``mailwarden_config_schema`` Struct), and the submitted form turned back into a section.

A field's input follows its type: a yes/no choice for booleans, a list of choices for
literals, numbers and text as text, lists one item per line, anything else as JSON. Secrets
(passwords, tokens, keys) are never put in a page: their input stays empty and an empty
submission keeps the stored value. Only the keys whose value changed are written, so the file
keeps its shape; the whole config is then validated as a file would be, and a refusal names
the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi

__all__ = ["Field", "FormError", "changed_values", "form_fields", "is_secret", "masked", "unmasked"]

_SECRET_NAME = re.compile(r"(password|passwd|secret|token|private_key|api_key|credential)", re.I)
_MASK = "********"


def is_secret(name: str, value: Any = None) -> bool:
    """Whether the key ``name`` (or its ``value``) must never be shown."""
    if _SECRET_NAME.search(name) and not name.endswith(("_file", "_path")):
        return True
    return isinstance(value, str) and "PRIVATE KEY" in value


def masked(value: Any) -> Any:
    """``value`` with every secret replaced by asterisks (nested dicts and lists too)."""
    if isinstance(value, dict):
        return {k: (_MASK if v and is_secret(str(k), v) else masked(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str) and "PRIVATE KEY" in value:
        return _MASK
    return value


def unmasked(value: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``value`` as sent back after a GET: every masked secret (asterisks, as :func:`masked`
    shows them) replaced by what ``current`` holds, or left out when it holds nothing."""
    kept: dict[str, Any] = {}
    for key, item in value.items():
        now = current.get(key)
        if item == _MASK:
            if now is not None:
                kept[key] = now
        elif isinstance(item, dict) and isinstance(now, dict):
            kept[key] = unmasked(item, now)
        else:
            kept[key] = item
    return kept


class FormError(ValueError):
    """A submitted value that cannot even be read; names the key."""


@dataclass(frozen=True)
class Field:
    """One input of a section's form."""

    name: str
    kind: str  # bool, int, float, str, choice, lines, int-lines, json
    text: str  # the current value as the input shows it ("" for secrets)
    choices: tuple[str, ...] = ()
    secret: bool = False
    is_set: bool = False  # secrets: whether a value is stored
    optional: bool = False  # empty input means "none"


def _unwrap(t: mi.Type) -> tuple[mi.Type, bool]:
    optional = False
    while True:
        if isinstance(t, mi.Metadata):
            t = t.type
        elif isinstance(t, mi.UnionType):
            rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
            if len(rest) != 1:
                return t, optional
            optional = True
            t = rest[0]
        else:
            return t, optional


def _kind(t: mi.Type) -> tuple[str, tuple[str, ...]]:
    if isinstance(t, mi.BoolType):
        return "bool", ()
    if isinstance(t, mi.IntType):
        return "int", ()
    if isinstance(t, mi.FloatType):
        return "float", ()
    if isinstance(t, mi.StrType):
        return "str", ()
    if isinstance(t, mi.LiteralType) and all(isinstance(v, str) for v in t.values):
        return "choice", tuple(str(v) for v in t.values)
    if isinstance(t, mi.EnumType):
        return "choice", tuple(str(m.value) for m in t.cls)
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType):
        item, _ = _unwrap(t.item_type)
        if isinstance(item, mi.StrType) or (
            isinstance(item, mi.LiteralType) and all(isinstance(v, str) for v in item.values)
        ):
            return "lines", ()
        if isinstance(item, mi.IntType):
            return "int-lines", ()
    return "json", ()


def _text(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if kind in ("lines", "int-lines"):
        return "\n".join(str(v) for v in value)
    if kind == "json":
        return json.dumps(masked(value), indent=1, sort_keys=True)
    return str(value)


def _schema_fields(schema: type[msgspec.Struct]) -> list[tuple[str, mi.Type]]:
    info = mi.type_info(schema)
    assert isinstance(info, mi.StructType)
    return [(f.name, f.type) for f in info.fields]


def form_fields(schema: type[msgspec.Struct], current: msgspec.Struct) -> list[Field]:
    """The inputs of the form for ``schema`` showing ``current``'s values."""
    values = msgspec.to_builtins(current)
    fields = []
    for name, typ in _schema_fields(schema):
        inner, optional = _unwrap(typ)
        kind, choices = _kind(inner)
        value = values.get(name)
        secret = is_secret(name, value) and kind in ("str", "json")
        fields.append(
            Field(
                name=name,
                kind=kind,
                text="" if secret else _text(kind, value),
                choices=choices,
                secret=secret,
                is_set=bool(value),
                optional=optional,
            )
        )
    return fields


def _parse(field: Field, section: str, raw: str) -> Any:
    raw = raw.replace("\r\n", "\n")
    if field.optional and raw.strip() == "" and field.kind not in ("str", "lines", "int-lines"):
        return None
    if field.kind == "bool":
        return raw == "true"
    if field.kind in ("int", "float"):
        try:
            return int(raw) if field.kind == "int" else float(raw)
        except ValueError:
            pass
        # A size or a duration with its unit ("10 MiB", "12h"), as the page shows them.
        from .ui import parse_number

        number = parse_number(field.name, field.kind, raw)
        if number is not None:
            return round(number) if field.kind == "int" else number
        # Handed on as text: validation then says which key wanted a number.
        return raw.strip()
    if field.kind in ("lines", "int-lines"):
        items: list[Any] = [line.strip() for line in raw.split("\n") if line.strip()]
        if field.kind == "int-lines":
            # Not a number: handed on as text, and validation names the key.
            items = [int(i) if i.lstrip("-").isdigit() else i for i in items]
        return items
    if field.kind == "json":
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise FormError(f"{section}.{field.name}: not valid JSON ({exc})") from exc
    return raw


def changed_values(
    section: str,
    schema: type[msgspec.Struct],
    current: msgspec.Struct,
    form: dict[str, str],
) -> dict[str, Any]:
    """The keys of ``section`` whose submitted value (inputs named ``f.<key>``) differs from
    ``current``; ``None`` means "remove the key" (back to its default)."""
    values = msgspec.to_builtins(current)
    changed: dict[str, Any] = {}
    for field in form_fields(schema, current):
        key = f"f.{field.name}"
        if key not in form:
            continue
        raw = form[key]
        if field.secret and raw == "":
            continue  # an empty secret input keeps what is stored
        value = _parse(field, section, raw)
        old = values.get(field.name)
        if field.kind == "lines" and isinstance(old, list) and value == [str(v) for v in old]:
            continue
        if field.kind == "json" and value == masked(old):
            continue  # shown masked and sent back unchanged
        if value != old:
            changed[field.name] = value
    return changed


def section_default(schema: type[msgspec.Struct]) -> msgspec.Struct:
    """The section as its defaults make it."""
    return msgspec.convert({}, schema)
