"""Stores are their owner's alone: created 0700/0600 even by a library caller whose umask is
022, and what is found wider is narrowed (without following links or touching sockets)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.privileges import narrow_modes
from mailwarden.stores.applog import ApplicationLog
from mailwarden.stores.backup import BackupStore
from mailwarden.stores.temp import clean_temp
from mailwarden.stores.traces import TraceStreams


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _wider(root: Path) -> list[str]:
    return [
        f"{p} {stat.filemode(p.lstat().st_mode)}"
        for p in [root, *root.rglob("*")]
        if p.lstat().st_mode & 0o077 and not p.is_symlink()
    ]


@pytest.mark.usefixtures("usual_umask")
def test_core_stores_are_created_private_under_umask_022(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = ApplicationLog(home / "app-log")
    app.write("admin", "rules.edit", actor="alice")
    app.close()
    backup = BackupStore(home / "backup")
    backup.put(b"Subject: kept\r\n\r\nbody\r\n", reason="infected")
    backup.index.close()
    TraceStreams(home / "traces").write("pipeline", "a trace line")
    clean_temp(home / "tmp")
    assert _wider(home / "app-log") == []
    assert _wider(home / "backup") == []
    assert _wider(home / "traces") == []
    assert _wider(home / "tmp") == []


def test_narrowing_takes_group_and_other_bits_off_and_reports_them(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    store.chmod(0o755)
    (store / "sub").chmod(0o775)
    (store / "sub" / "message").write_bytes(b"mail")
    (store / "sub" / "message").chmod(0o644)
    (store / "private").write_bytes(b"ok")
    (store / "private").chmod(0o600)
    outside = tmp_path / "outside"
    outside.write_bytes(b"not ours")
    outside.chmod(0o644)
    (store / "link").symlink_to(outside)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(store / "milter.sock"))
    os.chmod(store / "milter.sock", 0o666)
    try:
        changed = narrow_modes([store])
    finally:
        sock.close()
    assert sorted((p.name, oct(mode)) for p, mode in changed) == [
        ("message", "0o644"),
        ("store", "0o755"),
        ("sub", "0o775"),
    ]
    assert _wider(store) == [f"{store / 'milter.sock'} srw-rw-rw-"]
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # the link was not followed
    # Outside the home a group keeps what it had: only other users lose access.
    shared = tmp_path / "shared.toml"
    shared.write_text("[smtp]\n")
    shared.chmod(0o644)
    assert narrow_modes([shared], keep=0o070) == [(shared, 0o644)]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    assert narrow_modes([store]) == []
