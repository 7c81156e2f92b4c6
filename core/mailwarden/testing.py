"""A harness that runs plugins on messages through the real pipeline, for plugin tests.

In three lines::

    from mailwarden.testing import scan_message
    decision = scan_message(raw, plugins={"mydetector": MyDetector})
    assert decision.verdict.findings[0].code == "MY_CODE"

Installed as a pytest plugin too: the ``mailwarden_scan_message`` fixture is ``scan_message``
with a fresh home directory per test. The harness lives in the core (not the SDK) because it
needs the engine; plugin code itself still imports only ``mailwarden_sdk``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

__all__ = ["mailwarden_scan_message", "scan_message"]


def scan_message(
    raw: bytes,
    *,
    plugins: Mapping[str, Any] | None = None,
    builtins: bool = False,
    config: str = "",
    envelope: Any = None,
    home: Path | None = None,
) -> Any:
    """Scan ``raw`` with ``plugins`` (name -> class or object) and return the Decision.

    ``builtins=True`` also loads the installed plugins (entry points); ``config`` is TOML text
    for the gateway and the plugins' sections. Nothing is delivered or recorded.
    """
    from .config import parse_config
    from .pipeline import Gateway
    from .plugins import build_plugin_manager

    plugin_set = build_plugin_manager(entry_points=builtins, extra=plugins)
    cfg = parse_config(config, plugin_set.config_schemas())

    async def run(directory: Path) -> Any:
        cfg.gateway.home = str(directory)
        async with Gateway(cfg, plugins=plugin_set) as gateway:
            return await gateway.scan(raw, envelope)

    if home is not None:
        return asyncio.run(run(home))
    with tempfile.TemporaryDirectory(prefix="mailwarden-test-") as directory:
        return asyncio.run(run(Path(directory)))


@pytest.fixture
def mailwarden_scan_message(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``scan_message`` bound to this test's temporary home directory."""

    def bound(raw: bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("home", tmp_path)
        return scan_message(raw, **kwargs)

    yield bound
