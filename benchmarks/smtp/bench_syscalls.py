"""System calls and context switches per message of the SMTP gateway, by name (issue 24).

Runs ``mailwarden serve`` (relay mode to Postfix's ``smtp-sink``) under ``perf stat`` on the
kernel's syscall tracepoints, twice: once for ``--messages`` and once for a tenth of them,
each with a fresh process, and prints the difference per message, so start-up and shutdown
cancel out. ``perf stat -p`` cannot attach to a running process on every machine (on the
shared VM it counts nothing), which is why the server is started under it. Needs root (the
tracepoints) and ``perf``; ``PYTHONPATH=OTHER/core`` measures another checkout.

    .venv/bin/python benchmarks/smtp/bench_syscalls.py --messages 1000 [--detectors]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mailwarden.bench.run import OFFLINE_ANTISPAM  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.test_gateway_relay import Sink, port_open, wait_until  # noqa: E402

SYSCALLS = (
    "write sendto recvfrom read openat close fsync fdatasync rename unlink flock pwrite64 "
    "pread64 newfstat epoll_wait epoll_pwait epoll_ctl futex accept4 getpid getsockname ftruncate"
).split()
_ALL_DETECTORS_OFF = '[detectors]\ndisabled = ["antivirus", "antispam", "reputation", "sandbox"]\n'


def _run(home: Path, port: int, sink: Sink, messages: int, out: Path) -> dict[str, float]:
    events = ["raw_syscalls:sys_enter", "context-switches", "task-clock"]
    events += [f"syscalls:sys_enter_{name}" for name in SYSCALLS]
    serve = [sys.executable, "-m", "mailwarden", "serve"]
    perf = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-o", str(out), "-e", ",".join(events), "--", *serve],
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port), 60, "mailwarden serve to listen")
        time.sleep(1.0)
        before = sum(1 for _ in sink.directory.iterdir())
        load = ["-m", str(messages), "-s", "10", "-l", "1024", "-f", "alice@example.org"]
        subprocess.run(
            ["smtp-source", "-c", *load, "-t", "bob@example.net", f"127.0.0.1:{port}"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=1800,
        )
        wait_until(
            lambda: sum(1 for _ in sink.directory.iterdir()) - before >= messages,
            600,
            "every message at the sink",
        )
    finally:
        children = Path(f"/proc/{perf.pid}/task/{perf.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        perf.wait(timeout=60)
    counts = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            name = fields[2].rsplit(":", 1)[-1].removeprefix("sys_enter_")
            counts[name] = float(fields[0])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--detectors", action="store_true", help="the four detectors on")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-syscalls-"))
    sink = Sink(work / "sink", free_port()).start()
    port = free_port()
    home = work / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text(
        f'[smtp]\nport = {port}\n[delivery]\nmode = "relay"\nnext_hop = "127.0.0.1:{sink.port}"\n'
        "queue_scan_interval = 1.0\n[events]\nenabled = false\n"
        + OFFLINE_ANTISPAM
        + ("" if args.detectors else _ALL_DETECTORS_OFF)
    )
    few, many = max(1, args.messages // 10), args.messages
    try:
        small = _run(home, port, sink, few, work / "few.txt")
        large = _run(home, port, sink, many, work / "many.txt")
    finally:
        sink.stop(remove=True)
    print(
        f"mailwarden serve per message, {'four detectors' if args.detectors else 'no detectors'}"
        f" ({many} messages less {few}; task-clock in ms):"
    )
    for name, value in large.items():
        per = (value - small.get(name, 0.0)) / (many - few)
        if abs(per) >= 0.05:
            print(f"  {name:18} {per:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
