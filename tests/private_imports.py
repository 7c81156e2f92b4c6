"""No module imports another's private names: the check `make lint` runs.

import-linter sees modules, not names, so this walks the sources itself. A name that starts
with one underscore is its module's own: ``from .smtp import _Limits`` or ``smtp._Limits``
from another module is refused, and so is ``from pkg._impl import x`` from outside ``pkg``
(a private module is its package's own). A module of a package may import that package's
private submodules (``from . import _core``). Run as ``python -m tests.private_imports``:
each offence is printed as ``file:line: importer -> module.name`` and the exit status is 1.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The source roots: each holds top-level packages (core/mailwarden, plugins/mailwarden_*...).
ROOTS = ("core", "sdk", "plugins", "native")

# (importer, imported module, name) imports that stay, each with the reason and what removes it.
# None today: a name two modules share is public in the module that owns it.
ALLOWED: frozenset[tuple[str, str, str]] = frozenset()


@dataclass(frozen=True)
class Offence:
    path: Path
    line: int
    importer: str
    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} -> {self.module}.{self.name}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules(roots: list[Path]) -> dict[str, Path]:
    """Every module under ``roots`` by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for root in roots:
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and all(part.isidentifier() for part in parts):
                found[".".join(parts)] = path
    return found


def _owner(module: str) -> str:
    """The package a private module or name belongs to: ``a.b._c`` -> ``a.b``."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if _private(part):
            return ".".join(parts[:index])
    return module


def _inside(importer: str, package: str) -> bool:
    return importer == package or importer.startswith(package + ".")


def _offences(module: str, path: Path, known: dict[str, Path]) -> Iterator[Offence]:
    tree = ast.parse(path.read_bytes(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tops = {name.split(".")[0] for name in known}
    bound: dict[str, str] = {}  # local name -> project module it is bound to

    def check(target: str, line: int) -> Iterator[Offence]:
        # ``target`` is a module or module.name reached from ``module``.
        owner = _owner(target)
        if owner != target and not _inside(module, owner):
            parent, _, name = target.rpartition(".")
            yield Offence(path, line, module, parent, name)

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source.split(".")[0] not in tops:
                continue
            yield from check(source, node.lineno)
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in known:
                    bound[alias.asname or alias.name] = target
                if _private(alias.name) and not (target in known and _inside(module, source)):
                    yield Offence(path, node.lineno, module, source, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in tops:
                    yield from check(alias.name, node.lineno)
                    bound[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
        ):
            yield Offence(path, node.lineno, module, bound[node.value.id], node.attr)


def offences(
    roots: list[Path], allowed: frozenset[tuple[str, str, str]] = ALLOWED
) -> list[Offence]:
    """Every import of another module's private name under ``roots``, less ``allowed``."""
    known = _modules(roots)
    found = []
    for module, path in sorted(known.items()):
        for offence in _offences(module, path, known):
            if (offence.importer, offence.module, offence.name) not in allowed:
                found.append(offence)
    return found


def main() -> int:
    found = offences([REPO / root for root in ROOTS])
    for offence in found:
        print(offence.__str__().replace(f"{REPO}/", ""))
    if found:
        print(f"{len(found)} imports of another module's private names (tests/private_imports.py)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
