"""SMTP gateway throughput in relay mode: clients -> ``mailwarden serve`` -> Postfix smtp-sink.

Measures, for each worker count, the rate of 250 replies seen by the clients (every message
fsynced in the spool and scanned by the installed detectors) and the end-to-end rate until the
sink holds every message. Bounded: ``--messages`` per run (default 1000), ``--clients``
concurrent SMTP sessions (default 4).

    .venv/bin/python benchmarks/gateway/bench_relay.py --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

from mailwarden.bench.run import OFFLINE_ANTISPAM


def _port() -> int:
    # Below 32768, outside the kernel's ephemeral range (see the services notes).
    for port in range(24000, 32000, 7):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _wait_port(port: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "bob@example.net"
    msg["Subject"] = f"bench {n}"
    msg["Message-ID"] = f"<bench-{n}@example.org>"
    msg.set_content("A clean benchmark message.\n" * 40)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def run(workers: int, messages: int, clients: int) -> tuple[float, float]:
    """One run; returns (accepted messages/s, delivered messages/s)."""
    work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-"))
    work.chmod(0o755)
    captures = work / "sink"
    captures.mkdir()
    captures.chmod(0o777)
    sink_port, smtp_port = _port(), 0
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", "-d", f"{captures}/%H%M%S.", f"127.0.0.1:{sink_port}", "256"]
    )
    server = None
    try:
        _wait_port(sink_port)
        smtp_port = _port()
        home = work / "home"
        home.mkdir()
        (home / "mailwarden.toml").write_text(
            f"[smtp]\nport = {smtp_port}\nworkers = {workers}\n"
            f'[delivery]\nmode = "relay"\nnext_hop = "127.0.0.1:{sink_port}"\n'
            "queue_scan_interval = 1.0\n[events]\nenabled = false\n" + OFFLINE_ANTISPAM
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "serve"],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "MAILWARDEN_HOME": str(home)},
        )
        _wait_port(smtp_port)
        time.sleep(1.0 if workers > 1 else 0.2)  # let every worker start
        bodies = [_message(n) for n in range(messages)]

        def client(part: int) -> None:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as smtp:
                for n in range(part, messages, clients):
                    smtp.sendmail("alice@example.org", ["bob@example.net"], bodies[n])

        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = time.perf_counter() - began
        deadline = time.monotonic() + 120
        while len(list(captures.iterdir())) < messages and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = time.perf_counter() - began
        return messages / accepted, len(list(captures.iterdir())) / delivered
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        sink.terminate()
        sink.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Run the benchmark for each worker count and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"{args.messages} messages, {args.clients} clients, cores: {os.cpu_count()}")
    print("| workers | accepted msg/s (250 after fsync) | delivered msg/s (at smtp-sink) |")
    print("|---|---|---|")
    for workers in args.workers:
        accepted, delivered = run(workers, args.messages, args.clients)
        print(f"| {workers} | {accepted:.0f} | {delivered:.0f} |", flush=True)


if __name__ == "__main__":
    main()
