"""Prometheus metrics of a real `mailwarden serve` with ``[smtp] workers = 2``: the counters
cover the mail of both workers whichever one answers the scrape, and a killed worker's counts
survive its replacement while it leaves the live-worker gauge."""

from __future__ import annotations

import os
import signal
import smtplib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, make_message
from tests.integration.test_gateway_relay import Serve, serve_factory, wait_until
from tests.integration.test_gateway_tls import _listeners

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

__all__ = ["serve_factory"]  # the fixture, imported for use here


def _scrape(port: int) -> dict[str, float]:
    """``/metrics`` as ``{'name{label="v",...}': value}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def _send(port: int, count: int, tag: str) -> None:
    # One connection per message: the kernel spreads connections (not messages) over the
    # workers by their source port.
    for i in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(
                "alice@example.org", ["bob@example.net"], make_message(subject=f"{tag} {i}")
            )


def _per_worker(directory: Path, pids: set[int]) -> dict[int, float]:
    """Messages each worker counted, from its own file in the shared directory."""
    counted: dict[int, float] = {}
    for pid in pids:
        path = directory / f"counter_{pid}.db"
        total = 0.0
        if path.exists():
            for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
                if metric.name == "mailwarden_messages":
                    total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        counted[pid] = total
    return counted


def _gateway(serve_factory: Callable[..., Serve], metrics_port: int) -> tuple[Serve, set[int]]:
    server = serve_factory(
        f'workers = 2\n[metrics]\nlisten = "127.0.0.1"\nport = {metrics_port}\n'
    ).start()
    workers: set[int] = set()

    def both_listen() -> bool:
        nonlocal workers
        workers = _listeners(server.port)
        return len(workers) == 2 and _listeners(metrics_port) == workers

    wait_until(both_listen, 30, "two workers on the SMTP and metrics ports")
    assert server.process is not None and server.process.pid not in workers
    return server, workers


def test_two_workers_count_every_message_and_a_replaced_one_keeps_its_counts(
    serve_factory: Callable[..., Serve],
) -> None:
    metrics_port = free_port()
    server, workers = _gateway(serve_factory, metrics_port)
    directory = server.home / "run" / "metrics"

    _send(server.port, 20, "before")
    per_worker = _per_worker(directory, workers)
    assert sum(per_worker.values()) == 20, per_worker
    assert all(count > 0 for count in per_worker.values()), f"one worker got all: {per_worker}"

    # A worker's events reach the event log in its writer's next batch (within about 20 ms):
    # a scrape by the other worker sees them once committed.
    records = 'mailwarden_store_records{store="message event log"}'
    wait_until(lambda: _scrape(metrics_port)[records] == 20, 10, "20 events committed")
    # Whichever worker the kernel hands the scrape to, it answers for both.
    for _ in range(6):
        figures = _scrape(metrics_port)
        assert figures['mailwarden_messages_total{action="deliver"}'] == 20
        assert figures['mailwarden_verdicts_total{kind="antivirus",status="clean"}'] == 20
        assert figures['mailwarden_detector_seconds_count{detector="antivirus"}'] == 20
        assert figures["mailwarden_workers"] == 2
        assert figures[records] == 20
        assert figures['mailwarden_store_evictions_total{store="backup"}'] == 0

    # The worker that counted more dies; the parent starts another in its place.
    victim = max(per_worker, key=lambda pid: per_worker[pid])
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = _listeners(server.port)
        return victim not in now and len(now) == 2 and _listeners(metrics_port) == now

    wait_until(replaced, 30, "a replacement worker on both ports")
    # Its counts stay; its share of the live-worker gauge goes (3 if it were left in).
    wait_until(lambda: _scrape(metrics_port)["mailwarden_workers"] == 2, 10, "2 live workers")
    figures = _scrape(metrics_port)
    assert figures['mailwarden_messages_total{action="deliver"}'] == 20
    assert figures['mailwarden_detector_seconds_count{detector="antivirus"}'] == 20

    _send(server.port, 4, "after")
    for _ in range(4):
        assert _scrape(metrics_port)['mailwarden_messages_total{action="deliver"}'] == 24
    assert server.stop() == 0


def test_a_restart_starts_the_counts_again(serve_factory: Callable[..., Serve]) -> None:
    metrics_port = free_port()
    server, _ = _gateway(serve_factory, metrics_port)
    _send(server.port, 3, "first run")
    assert _scrape(metrics_port)['mailwarden_messages_total{action="deliver"}'] == 3
    assert server.stop() == 0
    # A counter starts from 0 with its process, as Prometheus expects; the files of the last
    # run are not added to the new one's.
    server.start()
    wait_until(lambda: len(_listeners(metrics_port)) == 2, 30, "two workers on the metrics port")
    _send(server.port, 2, "second run")
    assert _scrape(metrics_port)['mailwarden_messages_total{action="deliver"}'] == 2
    assert server.stop() == 0
