"""``serve`` started as root with ``[gateway] user``: the ports (below 1024 too) are bound as
root, the home is given to the account, and every process then runs as that account for good."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from tests.conftest import make_message, need
from tests.serving import start_serve, stop_serve


@pytest.fixture(autouse=True)
def _as_root() -> None:
    need(os.geteuid() == 0, "switching accounts needs root")


USER = "nobody"


def _free_low_port() -> int:
    for port in range(990, 600, -1):
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            return port
    need(False, "no free port below 1024")
    raise AssertionError("unreachable")


def _readable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in (path, *path.parents))


def _serve_command() -> list[str]:
    """``mailwarden serve`` under an interpreter whose standard library the account can read.

    Modules are imported lazily after the switch, so the account must read the interpreter's
    files, as it does when Python comes from the system. A Python installed under root's own
    0700 folder (pyenv in /root here) is out of its reach: then the system's Python of the same
    version runs the gateway with this virtualenv's packages.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if _readable_by_others(stdlib):
        return [sys.executable, "-m", "mailwarden", "serve"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = Path("/usr/bin") / version
    site = Path(sysconfig.get_paths()["purelib"])
    if not system.exists() or not _readable_by_others(site):
        need(False, f"no {version} the account {USER} can read")
    start = (
        f"import site, sys; site.addsitedir({str(site)!r}); "
        "from mailwarden.cli import main; sys.argv[0] = 'mailwarden'; main()"
    )
    return [str(system), "-c", start, "serve"]


def _ids(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid = next(line for line in status if line.startswith("Uid:")).split()[1:]
    gid = next(line for line in status if line.startswith("Gid:")).split()[1:]
    # real, effective, saved and filesystem ids all the account's: root cannot come back.
    assert len(set(uid)) == 1 and len(set(gid)) == 1, (uid, gid)
    return int(uid[0]), int(gid[0])


def test_serve_as_root_binds_a_low_port_then_runs_as_the_configured_user(tmp_path: Path) -> None:
    account = pwd.getpwnam(USER)
    # Not under pytest's tmp_path: that is root's 0700 folder, which the account cannot enter.
    home = Path(tempfile.mkdtemp(prefix="mailwarden-drop-"))
    try:
        port = _free_low_port()
        (home / "mailwarden.toml").write_text(
            f'[gateway]\nuser = "{USER}"\n[smtp]\nport = {port}\nworkers = 2\n'
        )
        # Made by root before the start: given to the account, or the service could not
        # write its own store.
        (home / "events").mkdir(mode=0o755)
        log = tmp_path / "serve.log"
        process = start_serve(home, log, [port], ready=2, command=_serve_command())
        try:
            text = log.read_text()
            assert f"user     {USER} (uid {account.pw_uid}" in text, text
            workers = [
                int(line.split()[-1]) for line in text.splitlines() if "worker   pid" in line
            ]
            assert len(workers) == 2
            for pid in (process.pid, *workers):
                assert _ids(pid) == (account.pw_uid, account.pw_gid), pid
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("alice@example.org", ["bob@example.net"], make_message())
        finally:
            stop_serve(process, log)
        delivered = list((home / "maildir" / "new").iterdir())
        assert len(delivered) == 1
        owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [home, *home.rglob("*")]}
        assert owners == {(account.pw_uid, account.pw_gid)}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_user_that_does_not_exist_is_refused_naming_the_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text('[gateway]\nuser = "no-such-account-here"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "serve"],
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "gateway.user: no account named 'no-such-account-here'" in result.stderr
