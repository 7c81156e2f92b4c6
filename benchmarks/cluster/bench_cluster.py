"""Throughput of 1, 2 and 3 mailwarden nodes behind HAProxy sharing one Redis, and the Redis
round trips per message.

Each node is ``mailwarden serve`` (one worker, relay mode to Postfix's ``smtp-sink``) on a
port of its own on 127.0.0.1 with the PROXY protocol, greylisting, rate limits and the
antispam plugin (Bayes and fuzzy sketches in Redis, no DNS), as docs/cluster.md sets a cluster
up; HAProxy balances round robin over the nodes; Postfix's ``smtp-source`` sends the load
through HAProxy. Before each measured run one message passes greylisting (first attempt
deferred, retry after the delay), so the measured messages exercise a passed triplet, as mail
from known senders does.

Reported per node count: messages/s accepted (``smtp-source`` finished, every message got its
250) and end to end (the sink holds every message), the ratio to one node, and per message the
Redis round trips the nodes made (``mailwarden_shared_state_round_trips_total``) and the
commands Redis executed (``INFO``). Every process shares this machine's cores (nodes, HAProxy,
Redis, smtp-source, smtp-sink), so the ratio says how much a node adds here, not on separate
machines.

    .venv/bin/python benchmarks/cluster/bench_cluster.py --messages 300 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.integration.test_gateway_relay import Sink, wait_until  # noqa: E402
from tests.services.haproxy import running_haproxy  # noqa: E402
from tests.services.redis import Redis  # noqa: E402
from tests.serving import start_serve  # noqa: E402


def node_config(port: int, metrics: int, sink: Sink, redis: Redis) -> str:
    return f"""
[gateway]
local_domains = ["example.net"]
[smtp]
listen = "127.0.0.1"
port = {port}
trusted_networks = []
proxy_protocol = true
proxy_trusted = ["127.0.0.1/32"]
max_connections_per_ip = 1000
[delivery]
mode = "relay"
next_hop = "127.0.0.1:{sink.port}"
[metrics]
port = {metrics}
[redis]
enabled = true
url = "{redis.url}"
[greylisting]
enabled = true
delay = 1.0
[ratelimit]
enabled = true
[ratelimit.sender]
messages = 1000000
window = 3600.0
[antispam]
authentication = false
dns_servers = ["127.0.0.1"]
"""


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def redis_commands(redis: Redis) -> int:
    import redis as client

    info: dict[str, Any] = client.Redis(port=redis.port).info("stats")
    return int(info["total_commands_processed"])


def pass_greylisting(port: int) -> None:
    body = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: warm\r\n\r\nhello\r\n"
    for attempt in range(2):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            try:
                client.sendmail("alice@example.org", ["bob@example.net"], body)
                return
            except smtplib.SMTPRecipientsRefused:
                if attempt:
                    raise
        time.sleep(1.2)


def run(nodes: int, messages: int, sessions: int, work: Path, redis: Redis) -> dict[str, Any]:
    import redis as client

    client.Redis(port=redis.port).flushall()
    sink = Sink(work / f"sink{nodes}", free_port()).start()
    processes = []
    try:
        ports = [(free_port(), free_port()) for _ in range(nodes)]
        for i, (port, metrics) in enumerate(ports):
            home = work / f"n{nodes}-{i}"
            home.mkdir(parents=True)
            (home / "mailwarden.toml").write_text(node_config(port, metrics, sink, redis))
            processes.append(start_serve(home, home / "serve.log", [port]))
        with running_haproxy([port for port, _ in ports]) as proxy:
            pass_greylisting(proxy.port)
            wait_until(lambda: len(sink.messages()) == 1, 30, "the warm-up message")
            trips = sum(metric(m, "mailwarden_shared_state_round_trips_total") for _, m in ports)
            commands = redis_commands(redis)
            started = time.monotonic()
            subprocess.run(
                ["smtp-source", "-c", "-m", str(messages), "-s", str(sessions), "-l", "2000",
                 "-f", "alice@example.org", "-t", "bob@example.net", f"127.0.0.1:{proxy.port}"],
                check=True, capture_output=True, timeout=600,
            )  # fmt: skip
            accepted = time.monotonic() - started
            wait_until(lambda: len(sink.messages()) == messages + 1, 300, "every message")
            delivered = time.monotonic() - started
            after = sum(metric(m, "mailwarden_shared_state_round_trips_total") for _, m in ports)
            return {
                "nodes": nodes,
                "accepted_per_s": messages / accepted,
                "delivered_per_s": messages / delivered,
                "round_trips_per_message": (after - trips) / messages,
                "redis_commands_per_message": (redis_commands(redis) - commands) / messages,
            }
    finally:
        for process in processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        sink.stop(remove=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-cluster-"))
    redis = Redis().start()
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: []}
    try:
        # Interleaved rounds: the machine's drift falls on every node count alike.
        for round_ in range(args.rounds):
            for nodes in (1, 2, 3):
                result = run(nodes, args.messages, args.sessions, work / f"r{round_}", redis)
                results[nodes].append(result)
                print(json.dumps(result), flush=True)
    finally:
        redis.stop()
        shutil.rmtree(redis.directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(r["delivered_per_s"] for r in results[1])
    print(
        "\n| nodes | accepted msg/s | delivered msg/s | vs 1 node | Redis round trips/msg", end=""
    )
    print(" | Redis commands/msg |")
    print("|---:|---:|---:|---:|---:|---:|")
    summary = []
    for nodes, rows in results.items():
        row = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "nodes"}
        row["ratio"] = row["delivered_per_s"] / base
        summary.append({"nodes": nodes, **row})
        print(
            f"| {nodes} | {row['accepted_per_s']:.0f} | {row['delivered_per_s']:.0f} | "
            f"{row['ratio']:.2f}x | {row['round_trips_per_message']:.2f} | "
            f"{row['redis_commands_per_message']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "median": summary}, indent=1))


if __name__ == "__main__":
    main()
