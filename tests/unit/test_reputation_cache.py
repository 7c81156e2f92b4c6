"""The reputation cache: LRU order, exact cap under two writing processes, TTLs, restarts."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from mailwarden_reputation.cache import Answer, ReputationCache, count_entries

BAD = Answer(verdict="malicious", name="Lab.Test", source="http")
CLEAN = Answer(verdict="clean", source="http")


def test_the_least_recently_used_entry_goes_first_and_a_hit_counts_as_use(tmp_path: Path) -> None:
    cache = ReputationCache(tmp_path / "cache", cap=3)
    try:
        for key in ("sha256:a", "sha256:b", "sha256:c"):
            cache.put(key, BAD, 60)
        assert cache.get("sha256:a") == BAD  # a is now the most recently used
        assert cache.put("sha256:d", BAD, 60) == 1
        assert cache.keys_in_lru_order() == ["sha256:c", "sha256:a", "sha256:d"]
        assert cache.get("sha256:b") is None
        cache.put_many({"ip:1": (BAD, 60), "ip:2": (CLEAN, 60)})
        assert cache.keys_in_lru_order() == ["sha256:d", "ip:1", "ip:2"]
        assert len(cache) == 3
    finally:
        cache.close()


def test_an_expired_answer_is_a_miss_and_other_ttls_are_kept(tmp_path: Path) -> None:
    cache = ReputationCache(tmp_path / "cache", cap=10)
    try:
        cache.put_many({"url:short": (CLEAN, 0.2), "url:long": (BAD, 60)})
        assert set(cache.get_many(["url:short", "url:long"])) == {"url:short", "url:long"}
        time.sleep(0.3)
        assert cache.get_many(["url:short", "url:long"]) == {"url:long": BAD}
        cache.put("url:short", BAD, 60)  # a fresh answer replaces the expired one
        assert cache.get("url:short") == BAD
        assert len(cache) == 2
    finally:
        cache.close()


def test_the_cache_survives_a_restart_in_lru_order(tmp_path: Path) -> None:
    cache = ReputationCache(tmp_path / "cache", cap=100)
    cache.put_many({f"md5:{i}": (BAD, 3600) for i in range(5)})
    cache.get("md5:0")
    cache.close()
    assert count_entries(tmp_path / "cache") == 5
    again = ReputationCache(tmp_path / "cache", cap=100)
    try:
        assert again.keys_in_lru_order() == ["md5:1", "md5:2", "md5:3", "md5:4", "md5:0"]
        assert again.get("md5:3") == BAD
    finally:
        again.close()


def test_lowering_the_cap_evicts_down_to_it_at_the_next_insert(tmp_path: Path) -> None:
    big = ReputationCache(tmp_path / "cache", cap=50)
    big.put_many({f"ip:{i}": (BAD, 3600) for i in range(50)})
    big.close()
    small = ReputationCache(tmp_path / "cache", cap=10)
    try:
        assert small.put("ip:new", BAD, 3600) == 41
        assert small.keys_in_lru_order() == [*(f"ip:{i}" for i in range(41, 50)), "ip:new"]
    finally:
        small.close()


def _insert(path: str, cap: int, prefix: str, count: int, start: multiprocessing.Event) -> None:
    cache = ReputationCache(Path(path), cap=cap)
    start.wait(10)
    try:
        # One transaction per insert, as a gateway inserting one message's answers, so the
        # two writers interleave as finely as LMDB allows.
        for i in range(count):
            cache.put(f"{prefix}:{i:06d}", BAD, 3600)
    finally:
        cache.close()


def test_two_processes_inserting_at_once_leave_exactly_the_cap(tmp_path: Path) -> None:
    # The 400,000 into 360,000, scaled down tenfold for speed; the full size runs in
    # benchmarks/reputation/bench_cache.py.
    cap, per_process = 36_000, 20_000
    path = tmp_path / "cache"
    ReputationCache(path, cap=cap).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [
        ctx.Process(target=_insert, args=(str(path), cap, name, per_process, start))
        for name in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    cache = ReputationCache(path, cap=cap)
    try:
        assert len(cache) == cap
        order = cache.keys_in_lru_order()
        assert len(order) == cap
        for name in ("a", "b"):
            mine = [int(key.split(":")[1]) for key in order if key.startswith(f"{name}:")]
            # Each writer inserted its keys in order, so what survives of them is the tail:
            # its oldest keys were the least recently used ones, and they are the ones gone.
            assert mine == list(range(per_process - len(mine), per_process))
            assert cache.get(f"{name}:{per_process - 1:06d}") == BAD
        inserted = {f"{n}:{i:06d}" for n in ("a", "b") for i in range(per_process)}
        assert set(order) <= inserted
        assert len(inserted - set(order)) == 2 * per_process - cap
        # How the two writers interleaved is the scheduler's business (on a loaded machine one
        # may finish before the other starts); the cap and each writer's LRU order must hold
        # either way, which is what is asserted above.
    finally:
        cache.close()
