"""Milter and content-filter throughput against Postfix alone and the SMTP gateway, in one run.

Postfix's ``smtp-source`` sends the same load (``--messages`` of ``--size`` bytes over
``--sessions`` sessions) to each of:

  (a) Postfix alone            -> smtp-sink
  (b) Postfix + mailwarden milter (``smtpd_milters``)   -> smtp-sink
  (c) mailwarden SMTP gateway (relay mode, spool fsynced before each 250) -> smtp-sink
  (d) Postfix + mailwarden after-queue content filter (re-injection with XFORWARD) -> smtp-sink

For each it reports the accept rate (smtp-source finished: every message got its 250) and
the end-to-end rate (the sink holds every message), and both as ratios to (a). The detectors
are the installed ones (antivirus and antispam on; antispam without DNS, as ``mailwarden
bench`` runs it, so the machine's resolver is neither asked nor waited on). Everything
shares the machine's cores, so the figures are only comparable within one run.

    .venv/bin/python benchmarks/milter/bench_milter.py --messages 1000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mailwarden.bench.run import OFFLINE_ANTISPAM  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.test_gateway_relay import Serve, Sink, port_open, wait_until  # noqa: E402
from tests.services.postfix import Postfix  # noqa: E402


def _count(sink: Sink) -> int:
    return sum(1 for p in sink.directory.iterdir() if p.is_file())


def _phase(sink: Sink, port: int, messages: int, sessions: int, size: int) -> tuple[float, float]:
    before = _count(sink)
    began = time.perf_counter()
    subprocess.run(
        [
            "smtp-source",
            "-c",
            "-m",
            str(messages),
            "-s",
            str(sessions),
            "-l",
            str(size),
            "-f",
            "alice@example.org",
            "-t",
            "bob@example.net",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=1800,
    )
    accepted = time.perf_counter() - began
    wait_until(lambda: _count(sink) - before >= messages, 600, "every message at the sink")
    delivered = time.perf_counter() - began
    return messages / accepted, messages / delivered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="message body bytes")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-milter-"))
    sink = Sink(work / "sink", free_port()).start()
    milter, content_filter, reinject, smtp = free_port(), free_port(), free_port(), free_port()
    config = (
        f'[delivery]\nmode = "relay"\nnext_hop = "127.0.0.1:{sink.port}"\n'
        "queue_scan_interval = 1.0\n"
        f"[milter]\nenabled = true\nport = {milter}\n"
        f"[content_filter]\nenabled = true\nport = {content_filter}\n"
        f'reinject = "127.0.0.1:{reinject}"\n'
        "[events]\nenabled = false\n" + OFFLINE_ANTISPAM
    )
    serve = Serve(work / "home", smtp, config)
    postfix = Postfix(sink.port)
    ports = {"plain": free_port(), "milter": free_port(), "cf": free_port()}
    results: dict[str, tuple[float, float]] = {}
    try:
        serve.start(wait_port=milter)
        wait_until(lambda: port_open(content_filter), 30, "the content filter")
        postfix.add_smtpd(ports["plain"], "plain")
        postfix.add_smtpd(ports["milter"], "mw", smtpd_milters=f"inet:127.0.0.1:{milter}")
        postfix.add_content_filter(ports["cf"], content_filter, reinject)
        # smtp-source's load is all from one client: lift the per-client limits.
        postfix.main["smtpd_client_connection_count_limit"] = "0"
        postfix.main["default_process_limit"] = "100"
        postfix.start([*ports.values(), reinject])
        n, s, size = args.messages, args.sessions, args.size
        # A short warm-up so that first-use costs (process spawns, imports) are not measured.
        for port in (ports["plain"], ports["milter"], smtp, ports["cf"]):
            _phase(sink, port, min(50, n), s, size)
        results["(a) postfix alone"] = _phase(sink, ports["plain"], n, s, size)
        results["(b) postfix + milter"] = _phase(sink, ports["milter"], n, s, size)
        results["(c) smtp gateway"] = _phase(sink, smtp, n, s, size)
        results["(d) postfix + content filter"] = _phase(sink, ports["cf"], n, s, size)
    finally:
        postfix.stop()
        serve.stop()
        sink.stop(remove=True)
    base_accept, base_e2e = results["(a) postfix alone"]
    print(f"{n} messages of {size} bytes, {s} sessions, {os.cpu_count()} cores")
    print(f"{'mode':32} {'accept/s':>9} {'ratio':>6} {'end-to-end/s':>13} {'ratio':>6}")
    for name, (accept, e2e) in results.items():
        print(
            f"{name:32} {accept:9.0f} {accept / base_accept:6.2f} {e2e:13.0f} {e2e / base_e2e:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
