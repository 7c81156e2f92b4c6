"""Detectors in their own process: same findings, and a crash costs one message, not the gateway."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.errors import ConfigError
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner, expect_action, expect_finding, scan
from mailwarden_sdk import Envelope
from tests.conftest import EICAR, make_message
from tests.thirdparty.detectors import MARKER, AsyncMarkerDetector, CrashingDetector, MarkerDetector


def test_isolated_detector_gives_the_same_findings_with_its_config() -> None:
    raw = make_message(body=f"{MARKER.decode()}\n")
    config = '[marker]\nscore = 4.5\n[detectors]\nisolated = ["marker", "asyncmarker"]\n'
    plugins = {"marker": MarkerDetector, "asyncmarker": AsyncMarkerDetector}
    decision = scan(raw, plugins=plugins, config=config)
    assert expect_finding(decision, "TEST_MARKER").score == 4.5
    expect_finding(decision, "ASYNC_MARKER")


def test_crashing_worker_becomes_an_error_finding_and_is_restarted(tmp_path: Path) -> None:
    plugins = build_plugin_manager(extra={"crashy": CrashingDetector})
    config = parse_config('[detectors]\nisolated = ["crashy"]\n', plugins.config_schemas())
    config.gateway.home = str(tmp_path)
    runner = GatewayRunner(Gateway(config, plugins=plugins)).start()
    try:
        crash = runner.scan(make_message(body="please crash\n", attachment=EICAR))
        error = expect_finding(crash, "DETECTOR_ERROR")
        assert error.detector == "crashy" and "died" in error.details["error"]
        # The gateway itself lives on and the built-in detectors still decided.
        expect_action(crash, "reject")
        calm = runner.scan(make_message(body="all calm\n"), Envelope(rcpt_to=["bob@example.net"]))
        expect_action(calm, "deliver")
        expect_finding(calm, "CRASHY_OK")
        proxy = plugins.plugins["crashy"].obj
        assert proxy.pid is not None and proxy.pid != os.getpid()
        os.kill(proxy.pid, signal.SIGKILL)  # killed from outside between messages
        again = runner.scan(make_message(body="all calm\n"))
        assert [f.code for f in again.verdict.findings if f.detector == "crashy"] in (
            ["CRASHY_OK"],
            ["DETECTOR_ERROR"],
        )
        expect_finding(runner.scan(make_message(body="all calm\n")), "CRASHY_OK")
    finally:
        runner.stop()


def test_isolating_an_unknown_plugin_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot isolate 'nosuch'"):
        scan(make_message(), config='[detectors]\nisolated = ["nosuch"]\n')
