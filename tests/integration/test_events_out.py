"""Events out and metrics through a real `mailwarden serve`: JSON lines to a file, syslog
RFC 5424 and CEF to a UDP socket on 127.0.0.1, Prometheus metrics at /metrics; statistics and
the application log filled by the same run; temp files removed at start."""

from __future__ import annotations

import json
import os
import re
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mailwarden.stores.applog import ApplicationLog
from mailwarden.stores.statistics import Statistics, bucket_of
from mailwarden.telemetry.eventsout import SyslogSink, cef_line
from tests.conftest import EICAR, free_port, make_message
from tests.integration.test_smtp_serve import _wait_for_port
from tests.unit.test_events import event

pytestmark = pytest.mark.integration

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>\S+) "
    rb"mailwarden (?P<pid>\d+) message-event - \xef\xbb\xbf(?P<msg>.*)$",
    re.S,
)


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


def test_syslog_rfc5424_and_cef_reach_a_udp_socket() -> None:
    receiver = _udp()
    port = receiver.getsockname()[1]
    infected = event(1_700_000_000.25, "bad | subject = x", infected=True)
    infected.verdict.virus_names.append("Eicar-Test-Signature")
    try:
        plain = SyslogSink(f"127.0.0.1:{port}", facility=16, hostname="gw.example")
        plain.send(infected)
        match = RFC5424.match(receiver.recv(65536))
        assert match, "not RFC 5424"
        assert int(match["pri"]) == 16 * 8 + 4  # local0, warning: something was found
        assert match["ts"] == b"2023-11-14T22:13:20.250000Z"
        assert match["host"] == b"gw.example"
        assert json.loads(match["msg"])["subject"] == "bad | subject = x"
        plain.close()

        cef = SyslogSink(f"127.0.0.1:{port}", format="cef", hostname="gw.example")
        cef.send(infected)
        match = RFC5424.match(receiver.recv(65536))
        assert match
        line = match["msg"].decode()
        assert line == cef_line(infected)
        assert line.startswith("CEF:0|mailwarden|mailwarden|")
        assert "|reject|reject av=infected spam=clean|8|" in line
        assert "suser=a@example.org" in line and "src=192.0.2.1" in line
        assert "msg=bad | subject \\= x" in line  # '=' escaped in extensions
        assert "cs2=Eicar-Test-Signature" in line
        cef.close()
    finally:
        receiver.close()


def test_serve_sends_events_out_serves_metrics_and_counts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    smtp_port, metrics_port = free_port(), free_port()
    receiver = _udp()
    home.mkdir()
    (home / "tmp").mkdir()
    (home / "tmp" / "left-by-a-crash").write_bytes(b"x")
    (home / "mailwarden.toml").write_text(
        f"[smtp]\nport = {smtp_port}\n"
        f'[events]\njson = "{home / "out" / "events.jsonl"}"\n'
        f'syslog = "127.0.0.1:{receiver.getsockname()[1]}"\n'
        f'[metrics]\nlisten = "127.0.0.1"\nport = {metrics_port}\n'
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MAILWARDEN_HOME": str(home)},
        )
    try:
        _wait_for_port(smtp_port, process, log)
        _wait_for_port(metrics_port, process, log)
        assert list((home / "tmp").iterdir()) == []  # temp files removed at start
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], make_message(subject="ok"))
            with pytest.raises(smtplib.SMTPDataError):
                client.sendmail(
                    "mallory@example.com",
                    ["bob@example.net"],
                    make_message(subject="bad", attachment=EICAR, filename="eicar.com"),
                )
        datagrams = [RFC5424.match(receiver.recv(65536)) for _ in range(2)]
        assert [json.loads(m["msg"])["subject"] for m in datagrams if m] == ["ok", "bad"]
        lines = (home / "out" / "events.jsonl").read_text().splitlines()
        assert [json.loads(line)["action"] for line in lines] == ["deliver", "reject"]

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'mailwarden_messages_total{action="deliver"} 1.0' in metrics
        assert 'mailwarden_messages_total{action="reject"} 1.0' in metrics
        assert 'mailwarden_verdicts_total{kind="antivirus",status="infected"} 1.0' in metrics
        assert 'mailwarden_detector_seconds_count{detector="antivirus"} 2.0' in metrics
        assert 'mailwarden_store_records{store="message event log"} 2.0' in metrics
        assert 'mailwarden_store_evictions_total{store="backup"} 0.0' in metrics
        assert "mailwarden_errors_total" in metrics or "mailwarden_errors" in metrics
        # One process: its figures in memory, no directory of per-worker files.
        assert "mailwarden_workers 1.0" in metrics
        assert not (home / "run" / "metrics").exists()
        assert "metrics  http://127.0.0.1:" in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        receiver.close()
    assert process.returncode == 0, log.read_text()

    stats = Statistics(home / "statistics")
    day = stats.counters("d", bucket_of("d", time.time()))
    assert day["messages"] == {"": 2}
    assert day["antivirus"] == {"clean": 1, "infected": 1}
    assert stats.top("d", bucket_of("d", time.time()), "sender")[0][1] == 1
    # Antispam rule hits are detections too (the shipped rules score these test messages).
    detections = dict(stats.top("d", bucket_of("d", time.time()), "detection"))
    assert detections["Eicar-Test-Signature"] == 1
    actions = [e.action for e in ApplicationLog(home / "app-log").search()]
    # The home was made 0755 (umask 022): narrowed at start, and said so.
    assert actions == ["gateway stopped", "gateway started", "store permissions narrowed"]
