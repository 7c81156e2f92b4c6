"""Run plugins on messages through the real pipeline: the harness for plugin tests.

In three lines::

    from mailwarden.testing import scan, expect_finding
    decision = scan("sample.eml", plugins=[MyDetector])
    expect_finding(decision, "MY_CODE")

Also a pytest plugin (registered through the ``pytest11`` entry point), with fixtures:

- ``mailwarden_scan``: :func:`scan` with a fresh home directory per test;
- ``mailwarden_gateway``: a started :class:`GatewayRunner` (sync face over a real gateway);
- ``mailwarden_smtp``: the same plus the SMTP listener on a free 127.0.0.1 port;
- ``mailwarden_message``: :func:`build_message`, a message builder.

The harness lives in the core (not the SDK) because it needs the engine; plugin code itself
still imports only ``mailwarden_sdk``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailwarden_sdk import Envelope, Finding

__all__ = [
    "GatewayRunner",
    "build_message",
    "expect_action",
    "expect_finding",
    "no_finding",
    "scan",
]

T = TypeVar("T")
Plugins = Mapping[str, Any] | Sequence[Any] | None


def _named(plugins: Plugins) -> dict[str, Any]:
    if plugins is None:
        return {}
    if isinstance(plugins, Mapping):
        return dict(plugins)
    named: dict[str, Any] = {}
    for plugin in plugins:
        name = getattr(plugin, "name", None)
        if not isinstance(name, str):
            name = getattr(plugin, "__name__", type(plugin).__name__).lower()
        named[name] = plugin
    return named


def _read(message: bytes | str | os.PathLike[str]) -> bytes:
    if isinstance(message, bytes):
        return message
    return Path(message).read_bytes()


def _gateway(plugins: Plugins, builtins: bool, config: str, home: Path) -> Any:
    from .config import parse_config
    from .pipeline import Gateway
    from .plugins import build_plugin_manager

    plugin_set = build_plugin_manager(entry_points=builtins, extra=_named(plugins))
    cfg = parse_config(config, plugin_set.config_schemas())
    cfg.gateway.home = str(home)
    return Gateway(cfg, plugins=plugin_set)


def scan(
    message: bytes | str | os.PathLike[str],
    *,
    plugins: Plugins = None,
    builtins: bool = False,
    config: str = "",
    envelope: Envelope | None = None,
    home: Path | None = None,
    live: bool = False,
) -> Any:
    """Scan a message (bytes or a file path) and return the :class:`~mailwarden.Decision`.

    ``plugins`` are plugin classes or objects (a list, named by their ``name`` attribute or
    class name, or a mapping name -> plugin); ``builtins=True`` also loads the installed
    plugins; ``config`` is TOML for the gateway and the plugins' sections. Nothing is
    delivered or recorded. ``live=True`` scans it as real mail (``ScanContext.live``):
    plugins learn from it (Bayes autolearn), as they do from what a scan service answers.
    """
    raw = _read(message)

    async def run(directory: Path) -> Any:
        async with _gateway(plugins, builtins, config, directory) as gateway:
            return await gateway.scan(raw, envelope, live=live)

    if home is not None:
        return asyncio.run(run(home))
    with tempfile.TemporaryDirectory(prefix="mailwarden-test-") as directory:
        return asyncio.run(run(Path(directory)))


def _describe(findings: Sequence[Finding]) -> str:
    if not findings:
        return "no findings"
    return ", ".join(f"{f.code} ({f.detector}, {f.status})" for f in findings)


def expect_finding(decision: Any, code: str, **details: str) -> Finding:
    """The finding with ``code`` (and these ``details``); fails the test listing what was found."""
    findings: list[Finding] = decision.verdict.findings
    for finding in findings:
        if finding.code == code and all(finding.details.get(k) == v for k, v in details.items()):
            return finding
    wanted = code + (f" with {details}" if details else "")
    raise AssertionError(f"expected finding {wanted}; got {_describe(findings)}")


def no_finding(decision: Any, code: str) -> None:
    """Fail the test if a finding with ``code`` is present."""
    hits = [f for f in decision.verdict.findings if f.code == code]
    if hits:
        raise AssertionError(f"expected no {code} finding; got {_describe(hits)}")


def expect_action(decision: Any, kind: str) -> None:
    """Fail the test unless the decided action is ``kind`` (deliver, reject, tempfail, ...)."""
    actual = decision.action.kind.value
    if actual != kind:
        raise AssertionError(
            f"expected action {kind!r}, got {actual!r} ({decision.action.smtp_code} "
            f"{decision.action.smtp_text}); findings: {_describe(decision.verdict.findings)}"
        )


def build_message(
    subject: str = "test",
    body: str = "A test message.\n",
    *,
    sender: str = "alice@example.org",
    recipient: str = "bob@example.net",
    attachments: Sequence[tuple[str, bytes]] = (),
    html: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A well-formed message with CRLF line endings, as it travels over SMTP.

    ``attachments`` are (filename, bytes) pairs, sent base64-encoded; ``html`` adds an HTML
    alternative.
    """
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = subject
    extra = dict(headers or {})
    # Date and Message-ID as every real message has them (RFC 5322), so spam heuristics for
    # missing ones stay out of tests about something else; fixed for reproducible bytes.
    lowered = {name.lower() for name in extra}
    if "date" not in lowered:
        msg["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    if "message-id" not in lowered:
        digest = hashlib.sha256(f"{subject}\0{body}\0{sender}".encode()).hexdigest()[:24]
        msg["Message-ID"] = f"<{digest}@example.org>"
    for name, value in extra.items():
        msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


class GatewayRunner:
    """A real gateway on an event loop in a background thread, driven synchronously.

    For tests that need the gateway beyond one scan: several messages, the Maildir, the event
    log, the SMTP listener (:meth:`start_smtp`).
    """

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []
        self.smtp_port: int | None = None

    def _call(self, coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrap(), self._loop)
        return future.result(timeout=120)

    def start(self) -> GatewayRunner:
        """Start the loop thread and the gateway's plugins."""
        self._thread.start()
        self._call(self.gateway.start())
        return self

    def start_smtp(self) -> int:
        """Listen for SMTP on a free 127.0.0.1 port and return the port."""
        from .ingress.smtp import start_smtp_server

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        self.gateway.config.smtp.listen = "127.0.0.1"
        self.gateway.config.smtp.port = port
        self._servers.append(self._call(start_smtp_server(self.gateway)))
        self.smtp_port = port
        return port

    def scan(self, raw: bytes, envelope: Envelope | None = None, *, live: bool = False) -> Any:
        """Scan without acting; returns the Decision. ``live``: as :func:`scan`."""
        return self._call(self.gateway.scan(raw, envelope, live=live))

    def process(self, raw: bytes, envelope: Envelope | None = None) -> Any:
        """Scan, act (deliver to the Maildir, quarantine, ...) and record; returns the Outcome."""
        return self._call(self.gateway.process(raw, envelope or Envelope(), ingress="test"))

    def events(self) -> list[Any]:
        """The recorded message events, newest first."""
        return list(self.gateway.events.search())

    def delivered(self) -> list[bytes]:
        """The messages in the Maildir, oldest first."""
        return [path.read_bytes() for path in self.gateway.maildir.messages()]

    def stop(self) -> None:
        """Close listeners, stop the gateway and the loop thread."""

        async def close() -> None:
            for server in self._servers:
                server.close()
                await server.wait_closed()
            await self.gateway.stop()

        try:
            self._call(close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@pytest.fixture
def mailwarden_scan(tmp_path: Path) -> Callable[..., Any]:
    """:func:`scan` bound to this test's temporary home directory."""

    def bound(message: bytes | str | os.PathLike[str], **kwargs: Any) -> Any:
        kwargs.setdefault("home", tmp_path)
        return scan(message, **kwargs)

    return bound


@pytest.fixture
def mailwarden_message() -> Callable[..., bytes]:
    """:func:`build_message`."""
    return build_message


def _runner_from_marker(request: pytest.FixtureRequest, home: Path) -> GatewayRunner:
    marker = request.node.get_closest_marker("mailwarden")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    gateway = _gateway(
        options.get("plugins"), options.get("builtins", True), options.get("config", ""), home
    )
    return GatewayRunner(gateway).start()


@pytest.fixture
def mailwarden_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayRunner]:
    """A started gateway with the installed plugins in a temporary home.

    Configure it with ``@pytest.mark.mailwarden(plugins=[...], builtins=False, config="...")``.
    """
    runner = _runner_from_marker(request, tmp_path)
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture
def mailwarden_smtp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayRunner]:
    """:func:`mailwarden_gateway` plus its SMTP listener; ``.smtp_port`` says where."""
    runner = _runner_from_marker(request, tmp_path)
    try:
        runner.start_smtp()
        yield runner
    finally:
        runner.stop()


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``mailwarden`` marker the fixtures read."""
    config.addinivalue_line(
        "markers",
        "mailwarden(plugins, builtins, config): how the mailwarden fixtures build the gateway",
    )
