"""Prometheus metrics: store evictions as a counter, in one process and summed over forked
worker processes sharing a multiprocess directory (each in a process of its own here, since
the multiprocess mode is for the whole process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import generate_latest

from mailwarden.stores import FileStore, enforce
from mailwarden.telemetry.metrics import GatewayMetrics
from mailwarden_sdk import StoreDescriptor, WhenFull
from tests.unit.test_stores import _files


def _capped(root: Path) -> FileStore:
    return FileStore(
        StoreDescriptor(
            name="q", path=str(root), holds="x", max_entries=2, when_full=WhenFull.REMOVE_OLDEST
        )
    )


def test_evictions_become_a_counter_that_only_grows(tmp_path: Path) -> None:
    _files(tmp_path / "q", 5)
    stores = [_capped(tmp_path / "q")]
    metrics = GatewayMetrics(lambda: stores)

    def evicted() -> float | None:
        return metrics.registry.get_sample_value("mailwarden_store_evictions_total", {"store": "q"})

    assert evicted() == 0  # every store shows before it evicts anything
    assert enforce(stores[0]) == 3
    assert evicted() == 3  # a scrape takes the store's count over
    metrics.sync_evictions()
    assert evicted() == 3  # once
    # The store made anew (its count from 0) evicts one more: the counter goes on from 3.
    stores[0] = _capped(tmp_path / "q")
    (tmp_path / "q" / "new").write_bytes(b"x")
    assert enforce(stores[0]) == 1
    assert evicted() == 4
    assert b"mailwarden_workers 0.0" in generate_latest(metrics.registry)
    metrics.running()
    assert b"mailwarden_workers 1.0" in generate_latest(metrics.registry)


WORKERS = textwrap.dedent(
    """
    import os, sys, urllib.request
    from pathlib import Path
    from mailwarden.stores import FileStore, enforce
    from mailwarden.telemetry.metrics import GatewayMetrics, share_between_processes, worker_exited
    from mailwarden_sdk import StoreDescriptor, WhenFull
    from tests.unit.test_stores import _files

    base, shared = Path(sys.argv[1]), Path(sys.argv[2])
    shared.mkdir(parents=True)
    (shared / "counter_1.db").write_bytes(b"left by an earlier run")
    share_between_processes(shared)
    assert not (shared / "counter_1.db").exists()

    def store(root):
        return FileStore(StoreDescriptor(
            name="q", path=str(root), holds="x", max_entries=2,
            when_full=WhenFull.REMOVE_OLDEST))

    pids = []
    for n, count in enumerate((5, 4)):
        pid = os.fork()
        if pid == 0:
            root = base / f"w{n}"
            _files(root, count)
            s = store(root)
            metrics = GatewayMetrics(lambda: [s])
            metrics.running()
            enforce(s)
            metrics.sync_evictions()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    serving = GatewayMetrics(lambda: [])
    port = serving.serve("127.0.0.1", 0, shared=shared)
    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()
    print(scrape())
    worker_exited(pids[0], shared)
    print("AFTER ONE EXITED")
    print(scrape())
    serving.close()
    """
)


def test_forked_workers_evictions_add_up_and_an_exited_one_leaves_the_live_gauge(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WORKERS, str(tmp_path / "stores"), str(tmp_path / "shared")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split("AFTER ONE EXITED")
    # 3 + 2 evicted in two processes; the serving one counted none.
    assert 'mailwarden_store_evictions_total{store="q"} 5.0' in before
    assert "mailwarden_workers 2.0" in before
    assert 'mailwarden_store_evictions_total{store="q"} 5.0' in after
    assert "mailwarden_workers 1.0" in after
