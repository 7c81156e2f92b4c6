"""Built-in plugins are written as third parties write theirs: they never import the core."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_plugin_module_imports_the_core() -> None:
    modules = sorted((ROOT / "plugins").rglob("*.py"))
    assert len(modules) >= 4
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules
        for name in _imported_modules(path)
        if name == "mailwarden" or name.startswith("mailwarden.")
    ]
    assert offenders == []


def test_sdk_never_imports_the_core() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "sdk").rglob("*.py"))
        for name in _imported_modules(path)
        if name == "mailwarden" or name.startswith("mailwarden.")
    ]
    assert offenders == []


def test_the_guard_catches_a_core_import(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import os\nfrom mailwarden.pipeline import Gateway\nimport mailwarden_sdk\n")
    assert "mailwarden.pipeline" in _imported_modules(sneaky)
