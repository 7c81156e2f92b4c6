"""What a plugin author gets from mailwarden_sdk and mailwarden.testing."""

from __future__ import annotations

import asyncio
import os
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mailwarden.errors import PluginError
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner, expect_action, expect_finding, no_finding, scan
from mailwarden_sdk import (
    INLINE_MAX_BYTES,
    SDK_VERSION,
    Category,
    IncompatibleSdk,
    ScanContext,
    SpamStatus,
    Stash,
    StashKey,
    check_compatible,
    findings,
    hookimpl,
    run_cpu_bound,
)
from tests.conftest import EICAR, ROOT, install_fake_distribution, make_message
from tests.thirdparty.detectors import MARKER, MarkerDetector


class FutureDetector:
    """Built for an SDK that does not exist yet."""

    requires_sdk = ">=2.0"

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> None:
        return None


def test_plugin_for_an_incompatible_sdk_is_refused_with_a_clear_message() -> None:
    with pytest.raises(PluginError) as info:
        build_plugin_manager(entry_points=False, extra={"future": FutureDetector})
    message = str(info.value)
    assert "'future' requires mailwarden_sdk >=2.0" in message
    assert f"provides mailwarden_sdk {SDK_VERSION}" in message


def test_installed_incompatible_plugin_stops_the_command_with_the_reason(tmp_path: Path) -> None:
    site = install_fake_distribution(
        tmp_path / "site", "acme-future", "9.0", {"future": "tests.unit.test_sdk:FutureDetector"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "plugins"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])},
    )
    assert result.returncode == 2
    assert "requires mailwarden_sdk >=2.0" in result.stderr


def test_version_specifiers() -> None:
    check_compatible("ok", ">=1.0,<2")
    check_compatible("unpinned", None)
    with pytest.raises(IncompatibleSdk, match="not a valid version specifier"):
        check_compatible("typo", "version one")
    with pytest.raises(IncompatibleSdk):
        check_compatible("old", "<1.0")


def test_stash_is_typed_and_keyed_by_identity() -> None:
    scores = StashKey[dict[str, float]]("scores")
    other = StashKey[dict[str, float]]("scores")
    stash = Stash()
    stash.setdefault(scores, {})["rule"] = 1.5
    assert stash[scores] == {"rule": 1.5}
    assert other not in stash and stash.get(other, None) is None
    del stash[scores]
    assert len(stash) == 0


def test_finding_helpers_feed_the_verdict_like_handwritten_findings() -> None:
    class Helpers:
        @hookimpl
        def mailwarden_scan(self, ctx: ScanContext) -> list[object]:
            return [
                findings.spam_rule("helpers", "HELPER_RULE", 2.0, rule="test"),
                findings.malicious("helpers", "HELPER_BAD_URL", score=4.0, url="http://x.test/"),
                findings.not_scanned("helpers", "max_size", object="big.iso"),
            ]

    decision = scan(make_message(), plugins={"helpers": Helpers}, builtins=True)
    assert decision.verdict.spam_score == 6.0
    assert decision.verdict.spam is SpamStatus.PROBABLE_SPAM
    assert decision.verdict.reputation == "malicious"
    assert decision.verdict.antivirus.value == "not_scanned"
    expect_action(decision, "reject")  # malicious -> the default rule rejects
    assert findings.total_score(decision.verdict.findings) == 6.0
    assert expect_finding(decision, "HELPER_RULE").category is Category.ANTISPAM


def test_assertions_explain_what_was_found_instead() -> None:
    decision = scan(make_message(attachment=EICAR), builtins=True)
    with pytest.raises(
        AssertionError, match=r"expected finding GTUBE; got AV_INFECTED \(antivirus"
    ):
        expect_finding(decision, "GTUBE")
    with pytest.raises(AssertionError, match="expected no AV_INFECTED finding"):
        no_finding(decision, "AV_INFECTED")
    with pytest.raises(AssertionError, match="expected action 'deliver', got 'reject'"):
        expect_action(decision, "deliver")


def test_scan_takes_a_path_and_a_plugin_list(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(make_message(body=f"{MARKER.decode()}\n"))
    expect_finding(scan(path, plugins=[MarkerDetector]), "TEST_MARKER")
    expect_finding(scan(str(path), plugins=[MarkerDetector]), "TEST_MARKER")


def test_fixture_scan_and_message_builder(mailwarden_scan, mailwarden_message) -> None:
    raw = mailwarden_message("hello", attachments=[("eicar.com", EICAR)])
    expect_finding(mailwarden_scan(raw, builtins=True), "AV_INFECTED")


@pytest.mark.mailwarden(plugins=[MarkerDetector], config="[marker]\nscore = 1.0\n")
def test_fixture_gateway_processes_and_records(
    mailwarden_gateway: GatewayRunner, mailwarden_message
) -> None:
    outcome = mailwarden_gateway.process(mailwarden_message("one", f"{MARKER.decode()}\n"))
    assert outcome.reply_code == 250
    assert [e.subject for e in mailwarden_gateway.events()] == ["one"]
    assert b"X-Mailwarden-Spam: no, status=clean, score=1.00" in mailwarden_gateway.delivered()[0]


def test_fixture_smtp_controller(mailwarden_smtp: GatewayRunner, mailwarden_message) -> None:
    assert mailwarden_smtp.smtp_port is not None
    with smtplib.SMTP("127.0.0.1", mailwarden_smtp.smtp_port, timeout=30) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], mailwarden_message("via smtp"))
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail(
                "alice@example.org",
                ["bob@example.net"],
                mailwarden_message("bad", attachments=[("e.com", EICAR)]),
            )
    assert [e.action.value for e in mailwarden_smtp.events()] == ["reject", "deliver"]


def test_command_host_works_only_inside_the_mailwarden_command() -> None:
    import pytest as _pytest

    from mailwarden_sdk import command_host

    with _pytest.raises(RuntimeError, match="inside the mailwarden command line"):
        command_host()


def test_cpu_bound_work_runs_inline_when_small_and_in_a_thread_when_large() -> None:
    def where(tag: str) -> tuple[str, str]:
        return tag, threading.current_thread().name

    def boom() -> None:
        raise ValueError("bad input")

    async def main() -> None:
        loop_thread = threading.current_thread().name
        assert await run_cpu_bound(1024, where, "small") == ("small", loop_thread)
        assert await run_cpu_bound(INLINE_MAX_BYTES, where, "edge") == ("edge", loop_thread)
        tag, thread = await run_cpu_bound(INLINE_MAX_BYTES + 1, where, "large")
        assert tag == "large" and thread != loop_thread
        for size in (1, INLINE_MAX_BYTES * 2):
            with pytest.raises(ValueError, match="bad input"):
                await run_cpu_bound(size, boom)

    asyncio.run(main())
