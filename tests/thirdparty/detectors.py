"""Detectors written as a third party would write them: against mailwarden_sdk only."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Generator
from pathlib import Path

import click
import msgspec

from mailwarden_sdk import (
    Category,
    Finding,
    Host,
    MessageEvent,
    ScanContext,
    SpamStatus,
    StoreDescriptor,
    Verdict,
    WhenFull,
    hookimpl,
    plugin_data_dir,
)

MARKER = b"MAILWARDEN-TEST-MARKER"


class MarkerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[marker]``: the score a marker hit adds."""

    score: float = 3.0


class MarkerDetector:
    """Finds a marker string in any decoded part; scores it as spam evidence."""

    def __init__(self) -> None:
        self.config = MarkerConfig()
        self.started = False

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return "marker", MarkerConfig

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.config = host.config_for("marker")
        self.started = True

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        return [
            Finding(
                code="TEST_MARKER",
                detector="marker",
                category=Category.ANTISPAM,
                status="hit",
                score=self.config.score,
                part=part.index,
            )
            for part in ctx.message.leaves()
            if MARKER in part.decoded()
        ]


class AsyncMarkerDetector:
    """The same check as an async hook, the way a network detector is written."""

    @hookimpl
    async def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        await asyncio.sleep(0)
        if not any(MARKER in part.decoded() for part in ctx.message.leaves()):
            return []
        return [
            Finding(
                code="ASYNC_MARKER", detector="asyncmarker", category=Category.OTHER, status="hit"
            )
        ]


class RaisingDetector:
    """A detector with a bug."""

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        raise RuntimeError("detector bug")


class SlowSyncDetector:
    """A detector stuck on a blocking call (sleeps past any sane budget)."""

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        time.sleep(3)
        return []


class SlowAsyncDetector:
    """A network detector whose server never answers."""

    @hookimpl
    async def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        await asyncio.sleep(30)
        return []


class WrongTypeDetector:
    """Returns something that is not a Finding."""

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> object:
        return ["not a finding"]


class MarkerTools:
    """Adds a command to the ``mailwarden`` command line."""

    @hookimpl
    def mailwarden_cli_commands(self) -> list[click.Command]:
        @click.command("marker-info")
        def marker_info() -> None:
            """Print the marker this plugin looks for."""
            click.echo(f"marker={MARKER.decode()}")

        return [marker_info]


class Observer:
    """Collects every processed message's event, as a statistics plugin would."""

    def __init__(self) -> None:
        self.events: list[MessageEvent] = []

    @hookimpl
    def mailwarden_message_processed(self, event: MessageEvent) -> None:
        self.events.append(event)


class AllowListWrapper:
    """Overrides every other verdict hook for one sender: a wrapper around the others."""

    @hookimpl(wrapper=True)
    def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> Generator[None, None, None]:
        yield
        if ctx.envelope.mail_from == "trusted@example.org":
            verdict.spam = SpamStatus.ALLOWED


class CrashingDetector:
    """Takes the whole interpreter down on some input, as a buggy C extension would."""

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        if any(b"please crash" in part.decoded() for part in ctx.message.leaves()):
            os._exit(70)
        return [Finding(code="CRASHY_OK", detector="crashy", category=Category.OTHER, status="hit")]


class MarkerStore:
    """Keeps a file of seen markers and declares it, as a plugin with user data must."""

    def __init__(self) -> None:
        self.path: Path | None = None

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.path = plugin_data_dir(host, "markerstore") / "seen.txt"

    @hookimpl
    def mailwarden_data_stores(self) -> list[StoreDescriptor]:
        return [
            StoreDescriptor(
                name="marker sightings",
                path=str(Path(os.environ.get("MAILWARDEN_HOME", "var")) / "markerstore"),
                holds="sender addresses of messages that carried the marker",
                retention_days=7,
                max_entries=1000,
                when_full=WhenFull.REMOVE_OLDEST,
                read_permission="events.messages.view",
            )
        ]
