"""A crashing worker leaves no memory dump (it would hold the mail it was scanning), even
started under ``ulimit -c unlimited``; ``[gateway] core_dumps = true`` puts them in the
capped, inventoried ``cores`` store instead."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port, need
from tests.serving import start_serve, stop_serve

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern").read_text().strip()
# With a pattern that pipes to a handler (systemd-coredump, apport) or names another folder,
# the kernel's dump cannot be looked for here; the worker's limit and flag are checked alone.
LOCAL_CORES = not CORE_PATTERN.startswith("|") and "/" not in CORE_PATTERN


def _unlimited_cores() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _serve(tmp_path: Path, extra: str = "") -> tuple[subprocess.Popen[str], Path, Path, Path]:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    port = free_port()
    (home / "mailwarden.toml").write_text(f"[gateway]\n{extra}[smtp]\nport = {port}\nworkers = 2\n")
    log = tmp_path / "serve.log"
    process = start_serve(home, log, [port], ready=2, cwd=cwd, preexec_fn=_unlimited_cores)
    return process, home, cwd, log


def _crash_a_worker(process: subprocess.Popen[str], log: Path) -> int:
    worker = int(re.findall(r"worker\s+pid (\d+)", log.read_text())[0])
    os.kill(worker, signal.SIGSEGV)
    deadline = time.monotonic() + 60
    # The supervisor reaps it (the dump, if any, is complete by then) and starts another.
    while f"worker {worker} ended" not in log.read_text() and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    assert f"worker {worker} ended" in log.read_text(), log.read_text()
    return worker


def _core_limit(pid: int) -> str:
    limits = Path(f"/proc/{pid}/limits").read_text()
    [line] = [line for line in limits.splitlines() if line.startswith("Max core file size")]
    return line.split()[4]


def _dumps(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("core*") if p.is_file()]


def test_a_crashing_worker_writes_no_core_file(tmp_path: Path) -> None:
    process, _home, _cwd, log = _serve(tmp_path)
    try:
        workers = [int(p) for p in re.findall(r"worker\s+pid (\d+)", log.read_text())]
        # Started under ``ulimit -c unlimited``, the service set its own limit to nothing.
        assert [_core_limit(pid) for pid in (process.pid, *workers)] == ["0", "0", "0"]
        _crash_a_worker(process, log)
    finally:
        stop_serve(process, log)
    if LOCAL_CORES:
        assert _dumps(tmp_path) == []


def test_core_dumps_when_enabled_go_to_the_capped_inventoried_store(tmp_path: Path) -> None:
    need(LOCAL_CORES, f"core_pattern {CORE_PATTERN!r} sends dumps away from the working folder")
    cap = 512 << 20
    process, home, _cwd, log = _serve(
        tmp_path, f"core_dumps = true\ncore_dumps_max_bytes = {cap}\n"
    )
    try:
        worker = _crash_a_worker(process, log)
    finally:
        stop_serve(process, log)
    dumps = _dumps(tmp_path)
    # This is what the test above would find without the service's own limit.
    assert dumps and all(p.parent == home / "cores" for p in dumps), dumps
    assert all(p.stat().st_size <= cap and p.stat().st_mode & 0o077 == 0 for p in dumps)
    assert str(worker) in " ".join(p.name for p in dumps) or len(dumps) == 1
    listed = subprocess.run(
        [sys.executable, "-m", "mailwarden", "data-inventory", "--json"],
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    [cores] = [s for s in json.loads(listed.stdout) if s["store"]["name"] == "memory dumps"]
    assert cores["store"]["path"] == str(home / "cores")
    assert cores["store"]["max_bytes"] == cap and cores["files"] == len(dumps)
