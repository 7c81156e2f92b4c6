"""Real services for integration tests: installed with apt-get when missing, run on 127.0.0.1.

Each service module starts its daemon in the foreground as a child process from a throwaway
directory, waits for it by probing its protocol, and stops it by PID. Nothing here uses the
system's default configs or ports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

from tests.conftest import ROOT, need

_apt_lock = threading.Lock()
_apt_updated = False


def _installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and "install ok installed" in result.stdout


def ensure_packages(*packages: str) -> None:
    """Install Debian ``packages`` that are missing; skip (or fail in CI) if that is impossible.

    Runs ``apt-get update`` at most once per test session. Daemons are never started by apt here
    (policy-rc.d), which is what the tests want: they start their own.
    """
    global _apt_updated
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    can_install = shutil.which("apt-get") is not None and os.geteuid() == 0
    need(can_install, f"packages {missing} are missing and apt-get as root is not available")
    with _apt_lock:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # Another apt (unattended-upgrades, a parallel test run) may hold the dpkg lock: wait
        # for it instead of failing at once.
        wait = ["-o", "DPkg::Lock::Timeout=600"]
        if not _apt_updated:
            subprocess.run(["apt-get", *wait, "update", "-qq"], env=env, check=False, timeout=600)
            _apt_updated = True
        result = subprocess.run(
            ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=1200,
        )
    need(
        result.returncode == 0,
        f"apt-get install {' '.join(missing)} failed: {result.stderr[-500:]}",
    )


def ensure_upx() -> str:
    """The ``upx`` program, installed when missing by ``contrib/debian/install-upx.sh`` (what
    ``make av-packages`` runs: Debian's upx-ucl, from bookworm-backports on Debian 12)."""
    found = shutil.which("upx") or shutil.which("upx-ucl")
    if found:
        return found
    need(shutil.which("apt-get") is not None and os.geteuid() == 0, "upx is missing, no apt-get")
    script = ROOT / "contrib" / "debian" / "install-upx.sh"
    with _apt_lock:
        result = subprocess.run(
            ["sh", str(script)], capture_output=True, text=True, check=False, timeout=1200
        )
    found = shutil.which("upx") or shutil.which("upx-ucl")
    need(found is not None, f"{script.name} failed: {result.stderr[-500:]}")
    assert found is not None
    return found
