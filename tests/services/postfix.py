"""A real Postfix on 127.0.0.1 with its own config, queue and data directories.

Recipe from /work/shared/notes/services.md section 1: ``postfix -c DIR start`` with a
generated main.cf and a master.cf without chroot, logging to a file through postlogd, the
relayhost an smtp-sink. Extra smtpd listeners are added per test need (a milter port, a
content-filter port, the re-injection port) with ``-o`` overrides, so one instance serves
every mode at once. Stopped with ``postfix stop`` and waited for by the master's PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, need
from tests.services import ensure_packages

__all__ = ["Postfix", "contrib_main"]

# The snippets an admin pastes (docs/install.md); the rig uses them verbatim, with the standard
# ports (milter 8891, filter 10025, re-injection 10026) replaced by the test's free ones.
CONTRIB = ROOT / "contrib" / "postfix"


def _contrib(name: str, ports: dict[int, int]) -> list[str]:
    lines = []
    for line in (CONTRIB / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        for standard, port in ports.items():
            line = line.replace(f"127.0.0.1]:{standard}", f"127.0.0.1]:{port}")
            line = line.replace(f"127.0.0.1:{standard}", f"127.0.0.1:{port}")
        lines.append(line)
    return lines


def contrib_main(name: str, ports: dict[int, int]) -> dict[str, str]:
    """The settings of ``contrib/postfix/main.cf-NAME``, for one listener's ``-o`` overrides."""
    pairs = (line.split("=", 1) for line in _contrib(f"main.cf-{name}", ports))
    return {key.strip(): value.strip() for key, value in pairs}


# The daemons a queue needs (Debian's master.cf.dist without chroot and without pipes).
_MASTER = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """One Postfix instance under a throwaway directory; ``add_*`` before :meth:`start`."""

    def __init__(self, relay_port: int) -> None:
        ensure_packages("postfix")
        need(os.geteuid() == 0, "Postfix's master must run as root")
        # The postfix user must reach the queue, and pytest's tmp_path is 0700 root.
        self.root = Path(tempfile.mkdtemp(prefix="mailwarden-postfix-"))
        self.root.chmod(0o755)
        self.etc = self.root / "etc"
        self.etc.mkdir()
        # postfix start fixes owners and modes below the queue directory, but it must exist.
        (self.root / "spool").mkdir()
        self.data = self.root / "data"
        self.data.mkdir()
        shutil.chown(self.data, "postfix")
        self.maillog_path = self.root / "maillog"
        self.main: dict[str, str] = {
            "compatibility_level": "3.6",
            "myhostname": "mx.lab.test",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "smtp_dns_support_level": "disabled",
            "queue_directory": str(self.root / "spool"),
            "data_directory": str(self.data),
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.root}",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "in_flow_delay": "0",
            "queue_run_delay": "10s",
            "minimal_backoff_time": "10s",
            "maximal_backoff_time": "30s",
            "milter_protocol": "6",
            "milter_default_action": "tempfail",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
        }
        self.services: list[str] = []
        self.started = False

    # -- configuration -------------------------------------------------------------------------

    def add_smtpd(self, port: int, name: str, **overrides: str) -> Postfix:
        """An smtpd on 127.0.0.1:``port`` with ``-o`` overrides (values without spaces)."""
        lines = [f"127.0.0.1:{port} inet n - n - - smtpd", f"  -o syslog_name=postfix/{name}"]
        lines += [f"  -o {key}={value}" for key, value in overrides.items()]
        self.services.append("\n".join(lines))
        return self

    def add_content_filter(self, listen_port: int, filter_port: int, reinject_port: int) -> None:
        """FILTER_README's after-queue setup: ``listen_port`` hands mail to our filter on
        ``filter_port`` over the ``scan`` transport (with XFORWARD); ``reinject_port`` takes
        it back without filtering. Recipients in ``refused`` are refused at re-injection."""
        refused = self.etc / "reinject_refused"
        refused.write_text("refuse@blocked.test REJECT 5.7.1 refused at re-injection\n")
        ports = {10025: filter_port, 10026: reinject_port}
        self.add_smtpd(listen_port, "cf", **contrib_main("content-filter", ports))
        # master.cf-content-filter as it is, then one later -o (the last one wins) with the
        # test's map of refused recipients.
        restrictions = f"check_recipient_access,texthash:{refused},permit_mynetworks,reject"
        lines = _contrib("master.cf-content-filter", ports)
        lines.append(f"  -o smtpd_recipient_restrictions={restrictions}")
        self.services.append("\n".join(lines))

    # -- life cycle ----------------------------------------------------------------------------

    def postconf_command(self, *args: str) -> list[str]:
        return ["postconf", "-c", str(self.etc), *args]

    def start(self, ports: list[int]) -> Postfix:
        """Write the config, start the master and wait until every ``ports`` accepts."""
        from tests.integration.test_gateway_relay import port_open, wait_until

        text = "".join(f"{key} = {value}\n" for key, value in self.main.items())
        (self.etc / "main.cf").write_text(text)
        (self.etc / "master.cf").write_text(_MASTER + "\n".join(self.services) + "\n")
        result = subprocess.run(
            ["postfix", "-c", str(self.etc), "start"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, f"postfix start failed: {result.stderr}{self.maillog()}"
        self.started = True
        for port in ports:
            wait_until(lambda p=port: port_open(p), 30, f"Postfix to listen on {port}")  # type: ignore[misc]
        return self

    def master_pid(self) -> int | None:
        path = self.root / "spool" / "pid" / "master.pid"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.started:
            pid = self.master_pid()
            subprocess.run(
                ["postfix", "-c", str(self.etc), "stop"],
                capture_output=True,
                check=False,
                timeout=60,
            )
            # The master exits about 1.6 s after "stop" returns.
            deadline = time.monotonic() + 20
            while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid and Path(f"/proc/{pid}").exists():
                subprocess.run(["postfix", "-c", str(self.etc), "abort"], check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    # -- inspection ----------------------------------------------------------------------------

    def maillog(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except OSError:
            return ""

    def queue(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one dict per queued message (queue_name, queue_id, recipients)."""
        result = subprocess.run(
            ["postqueue", "-c", str(self.etc), "-j"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
