"""The sandbox's stores keep their caps: the quarantine refuses, the cache trims."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from mailwarden.config import parse_config
from mailwarden.inventory import inventory
from mailwarden.plugins import build_plugin_manager
from mailwarden_sandbox import SandboxPlugin
from mailwarden_sandbox.backends import ObjectVerdict
from mailwarden_sandbox.store import HeldMessage, HoldStore, ReleasePending, VerdictCache
from mailwarden_sdk import Envelope, WhenFull


def _meta(n: int) -> HeldMessage:
    return HeldMessage(
        id=f"{n:020x}",
        envelope=Envelope(mail_from="a@example.org", rcpt_to=["b@example.net"]),
        rule="default",
        size=100,
        held_at=time.time(),
        deadline=time.time() + 600,
        objects=[],
    )


def test_quarantine_refuses_new_messages_past_either_cap(tmp_path: Path) -> None:
    by_count = HoldStore(tmp_path / "count", max_bytes=10_000, max_messages=2)
    assert [by_count.admit(b"x" * 100, _meta(n)) for n in range(3)] == [True, True, False]
    assert by_count.usage() == (2, 200) and len(by_count.ids()) == 2
    by_size = HoldStore(tmp_path / "size", max_bytes=250, max_messages=100)
    assert [by_size.admit(b"x" * 100, _meta(n)) for n in range(3)] == [True, True, False]
    by_size.remove(_meta(0).id)
    assert by_size.admit(b"x" * 100, _meta(5))


def test_verdict_cache_keeps_the_newest_within_its_cap_and_ttl(tmp_path: Path) -> None:
    cache = VerdictCache(tmp_path / "cache", ttl=3600, max_entries=10)
    try:
        cache.put(f"{0:064x}", ObjectVerdict(status="clean"))
        for n in range(1, 25):
            cache.put(f"{n:064x}", ObjectVerdict(status="clean"))
            time.sleep(0.002)
            assert cache.get(f"{0:064x}") is not None  # used all along: never evicted
        with cache.env.begin() as txn:
            assert txn.stat()["entries"] <= 10
        assert cache.get(f"{24:064x}") is not None
        assert cache.get(f"{1:064x}") is None  # the least recently used went
    finally:
        cache.close()
    stale = VerdictCache(tmp_path / "stale", ttl=0, max_entries=10)
    try:
        stale.put("ab" * 32, ObjectVerdict(status="malicious"))
        time.sleep(0.01)
        assert stale.get("ab" * 32) is None
    finally:
        stale.close()


def test_data_inventory_lists_the_sandbox_stores(tmp_path: Path) -> None:
    plugins = build_plugin_manager(entry_points=False, extra={"sandbox": SandboxPlugin})
    config = parse_config(
        "[sandbox]\nquarantine_max_messages = 3\n", plugins.config_schemas(), source=None
    )
    config.gateway.home = str(tmp_path)
    stores = {s.store.name: s.store for s in inventory(config, plugins) if s.owner == "sandbox"}
    assert set(stores) == {"sandbox quarantine", "sandbox verdict cache"}
    quarantine = stores["sandbox quarantine"]
    assert (quarantine.max_entries, quarantine.max_bytes) == (3, 1 << 30)
    assert quarantine.when_full is WhenFull.REFUSE_NEW
    assert quarantine.path == str(tmp_path / "quarantine" / "sandbox")


def test_a_release_is_requested_once_however_many_ask_at_the_same_moment(
    tmp_path: Path,
) -> None:
    store = HoldStore(tmp_path / "q")
    assert store.admit(b"x" * 100, _meta(1))
    start = threading.Barrier(8)
    answers: list[str] = []

    def request() -> None:
        start.wait()
        try:
            answers.append(str(store.mark(_meta(1).id, "release")))
        except ReleasePending as exc:
            answers.append(str(exc))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers.count("True") == 1
    assert all(
        a.startswith(f"a release of {_meta(1).id} was requested already at ")
        for a in answers
        if a != "True"
    )
    assert store.marked(_meta(1).id, "release")
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]
    # Deleting may be asked again; once removed, a new release finds nothing to release.
    assert store.mark(_meta(1).id, "delete") and store.mark(_meta(1).id, "delete")
    store.remove(_meta(1).id)
    assert store.mark(_meta(1).id, "release") is False


def test_a_release_asked_while_the_gateway_removes_the_message_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gateway carries out the first release and removes the message's files between the
    # second caller's existence check and its link: that caller must hear "no such message",
    # not "requested", and no marker may be left behind for a message that is gone.
    store = HoldStore(tmp_path / "q")
    assert store.admit(b"y" * 100, _meta(2))
    held = _meta(2).id
    real_link = os.link

    def link_after_the_gateway_removed_it(src: str, dst: str) -> None:
        store.remove(held)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_the_gateway_removed_it)
    assert store.mark(held, "release") is False
    assert not store.marked(held, "release")
    assert not list(store.root.glob(f"{held}*"))
    assert not list((tmp_path / "q" / "quarantine" / "sandbox").glob(f"{held}*"))
