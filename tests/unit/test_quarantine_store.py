"""The one quarantine store: kinds with their own caps, one place on disk, and the stores of
before (the core's Maildir, the spam quarantine's own folder and index) moved into it when an
upgraded gateway opens it, nothing lost."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import lmdb
import msgspec

from mailwarden import Gateway
from mailwarden.config import load_config
from mailwarden_antispam.quarantine import SpamQuarantine
from mailwarden_sandbox.store import HeldMessage, HeldObject, HoldStore
from mailwarden_sdk import Envelope, WhenFull
from mailwarden_sdk.quarantine_store import KindLimits, open_store
from tests.conftest import make_message

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net", "carol@x.test"])


def _gateway(home: Path) -> Gateway:
    home.mkdir(exist_ok=True)
    (home / "mailwarden.toml").write_text("")
    return Gateway(load_config(home / "mailwarden.toml", {}), entry_points=False)


def test_held_messages_and_spam_are_kinds_of_one_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    gateway = _gateway(home)
    held = gateway.quarantine.hold(
        make_message(subject="virus"), ENVELOPE, decision="d1", rule="strict", reason="infected"
    )
    spam = SpamQuarantine(home, max_bytes=1 << 20)
    kept = spam.put(
        make_message(subject="pills"), "s@x.test", ["bob@example.net"], "pills", 9, "spam"
    )
    assert kept is not None
    # One place: one index, a folder per kind.
    assert sorted(p.name for p in (home / "quarantine").iterdir()) == ["held", "index", "spam"]
    assert [p.name for p in (home / "quarantine" / "held").iterdir()] == [f"{held}.eml"]
    assert [p.name for p in (home / "quarantine" / "spam").iterdir()] == [f"{kept}.eml"]
    # Each sees its own kind only.
    assert [h.id for h in gateway.quarantine.held()] == [held]
    assert [e.id for e in spam.search()] == [kept]
    assert spam.store is gateway.quarantine.store
    [entry] = spam.store.entries("held")
    assert (entry.kind, entry.reason, entry.details["rule"]) == ("held", "infected", "strict")


def test_each_kind_keeps_its_own_cap(tmp_path: Path) -> None:
    store = open_store(tmp_path / "quarantine")
    store.set_limits("spam", KindLimits(max_bytes=2500))
    store.set_limits(
        "sandbox", KindLimits(max_bytes=10_000, max_messages=2, when_full=WhenFull.REFUSE_NEW)
    )
    env = Envelope(mail_from="a@x.test", rcpt_to=["b@x.test"])
    boxed = [store.put("sandbox", b"s" * 100, env) for _ in range(3)]
    # Refused when full: nothing placed for the third, the two held stay.
    assert boxed[2] is None and None not in boxed[:2]
    assert len(list((tmp_path / "quarantine" / "sandbox").iterdir())) == 2
    assert store.usage("sandbox") == (2, 200)
    assert not store.has_room("sandbox", 1)
    spam = [store.put("spam", bytes([65 + n]) * 1000, env) for n in range(4)]
    # The oldest spam goes, and only spam: the sandbox's messages are another kind's.
    assert [e.id for e in store.entries("spam")] == spam[2:]
    assert [e.id for e in store.entries("sandbox")] == boxed[:2]
    assert store.usage("spam") == (2, 2000)


def _old_maildir_message(folder: Path, name: str, body: bytes, at: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    trace = (
        b"X-Mailwarden-Quarantine-From: alice@example.org\r\n"
        b"X-Mailwarden-Quarantine-To: bob@example.net, carol@x.test\r\n"
        b"X-Mailwarden-Quarantine-Decision: 0123abcd\r\n"
        b"X-Mailwarden-Quarantine-Rule: strict\r\n"
        b"X-Mailwarden-Quarantine-Reason: infected\r\n"
    )
    (folder / name).write_bytes(trace + body)
    os.utime(folder / name, (at, at))


def test_held_messages_of_the_old_maildir_are_moved_in_and_released(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = home / "quarantine"
    first = make_message(subject="first held")
    second = make_message(subject="second held")
    mid_release = make_message(subject="left mid-release")
    now = time.time()
    _old_maildir_message(old / "new", "1700000000.M1P2Q3.host", first, now - 300)
    _old_maildir_message(old / "cur", "1700000001.M1P2Q4.host:2,S", second, now - 200)
    _old_maildir_message(old / "releasing", "1700000002.M1P2Q5.host", mid_release, now - 100)
    (old / "tmp").mkdir()
    gateway = _gateway(home)

    held = gateway.quarantine.held()
    assert [h.subject for h in held] == ["left mid-release", "second held", "first held"]
    for h in held:
        assert h.envelope.mail_from == "alice@example.org"
        assert h.envelope.rcpt_to == ["bob@example.net", "carol@x.test"]
        assert (h.rule, h.reason, h.decision) == ("strict", "infected", "0123abcd")
    assert held[2].held_at == now - 300
    assert gateway.quarantine.original(held[2].id)[0] == first
    # The old folders are gone; the files are the store's now.
    assert sorted(p.name for p in old.iterdir()) == ["held", "index"]
    assert asyncio.run(gateway.release(held[2].id)).startswith("delivered as ")
    [delivered] = [p.read_bytes() for p in (gateway.maildir.root / "new").iterdir()]
    assert b"Subject: first held" in delivered and b"X-Mailwarden-Quarantine" not in delivered
    # Opened again (the next start): nothing moved twice.
    assert len(_gateway(home).quarantine.held()) == 2


class _OldEntry(msgspec.Struct, kw_only=True):
    id: str
    time: float
    size: int
    mail_from: str
    rcpt_to: list[str]
    subject: str
    score: float
    status: str


def test_the_spam_quarantine_of_before_is_moved_in_ids_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = home / "antispam" / "quarantine"
    old.mkdir(parents=True)
    env = lmdb.open(str(home / "antispam" / "quarantine-index"), map_size=1 << 24, max_dbs=3)
    by_time, ids = env.open_db(b"by_time"), env.open_db(b"ids")
    kept = []
    with env.begin(write=True) as txn:
        for n, entry_id in enumerate(["a1b2c3d4e5f60718293a4b5c", "0f1e2d3c4b5a69788796a5b4"]):
            raw = make_message(subject=f"spam {n}")
            (old / f"{entry_id}.eml").write_bytes(raw)
            entry = _OldEntry(
                id=entry_id,
                time=1_700_000_000.0 + n,
                size=len(raw),
                mail_from="spammer@x.test",
                rcpt_to=["bob@example.net"],
                subject=f"spam {n}",
                score=10.0 + n,
                status="spam",
            )
            key = f"{int(entry.time * 1e9):020d}-{entry_id}".encode()
            txn.put(key, msgspec.json.encode(entry), db=by_time)
            txn.put(entry_id.encode(), key, db=ids)
            kept.append((entry_id, raw))
    env.close()

    spam = SpamQuarantine(home)
    found = spam.search()
    # Ids kept (the links of digests sent before still name them), times, scores, order.
    assert [(e.id, e.time, e.score, e.subject) for e in found] == [
        (kept[0][0], 1_700_000_000.0, 10.0, "spam 0"),
        (kept[1][0], 1_700_000_001.0, 11.0, "spam 1"),
    ]
    assert [spam.original(entry_id) for entry_id, _ in kept] == [raw for _, raw in kept]
    assert not old.exists() and not (home / "antispam" / "quarantine-index").exists()
    assert spam.total_bytes() == sum(len(raw) for _, raw in kept)


def test_the_sandbox_hold_quarantine_of_before_is_moved_in_requests_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = home / "sandbox" / "quarantine"
    old.mkdir(parents=True)
    raw = make_message(subject="waiting for analysis", attachment=b"pending")
    meta = HeldMessage(
        id="0123456789abcdef0123",
        envelope=Envelope(mail_from="a@x.test", rcpt_to=["b@x.test"]),
        rule="default",
        size=len(raw),
        held_at=1_700_000_000.0,
        deadline=1_700_000_600.0,
        objects=[HeldObject(sha256="ab" * 32, label="pending.bin", size=7, task="task-1")],
        subject="waiting for analysis",
    )
    (old / f"{meta.id}.msg").write_bytes(raw)
    (old / f"{meta.id}.json").write_bytes(msgspec.json.encode(meta))
    (old / f"{meta.id}.release").write_text("1700000100.0")  # an admin's pending release

    store = HoldStore(home, max_bytes=10_000, max_messages=1)
    assert store.ids() == [meta.id]
    assert store.load(meta.id) == meta  # task ids kept: the verdict is not asked for again
    assert store.raw(meta.id) == raw
    assert store.marked(meta.id, "release")
    assert store.usage() == (1, len(raw))
    assert not list(old.glob("*.msg")) and not list(old.glob("*.json"))
    assert [p.name for p in (home / "quarantine" / "sandbox").iterdir()] == [f"{meta.id}.eml"]
    # Its caps hold with the moved message: full at one, nothing new placed.
    assert not store.admit(b"x" * 10, msgspec.structs.replace(meta, id="ff" * 10))
