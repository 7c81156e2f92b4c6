"""Peers end to end on the same messages: rspamd (HTTP ``/checkv2``) and SpamAssassin (spamd).

Each peer is started for the run on 127.0.0.1 with its network tests, Bayes and fuzzy hashes
off (the switches in the project's performance notes), with as many workers as our largest
SMTP run, and fed by as many client threads. A peer that is not installed is reported as such
rather than silently left out.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["opendkim_milter", "rspamd_milter", "run_peers", "spamd_check", "spamd_server"]

# SpamAssassin is about 50 times slower than rspamd: it gets every 8th message, at most 250,
# so a run stays within minutes; its rate is per message all the same.
_SPAMD_STRIDE = 8
_SPAMD_MAX = 250
_WARMUP = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(port: int, process: subprocess.Popen[bytes], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"did not listen on 127.0.0.1:{port} within {limit:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def _serving(
    argv: list[str], port: int, work: Path, limit: float, also: tuple[int, ...] = ()
) -> Iterator[None]:
    """Run a peer until the block ends (``also``: more ports to wait for); its work
    directory goes with it."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for each in (port, *also):
            _wait(each, process, limit)
        yield
    finally:
        _stop(process)
        shutil.rmtree(work, ignore_errors=True)


def _drive(messages: list[bytes], threads: int, send: Callable[[bytes], None]) -> float:
    """Send every message from ``threads`` threads; messages per second."""
    for raw in messages[:_WARMUP]:
        send(raw)
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for n in range(index, len(messages), threads):
                send(messages[n])
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            failures.append(exc)

    began = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"client failed: {failures[0]!r}")
    return len(messages) / elapsed


_RSPAMD_OFF = (
    "rbl surbl emails spf dkim dmarc arc asn fuzzy_check phishing whitelist neural ratelimit "
    "greylist replies history_redis reputation url_redirector clickhouse elastic "
    "metadata_exporter dcc bimi spamtrap rspamd_update mx_check p0f antivirus external_services "
    "dkim_signing maillist hfilter"
).split()


@contextmanager
def _rspamd(
    workers: int,
    *,
    milter: bool = False,
    controller: int = 0,
    extra: dict[str, str] | None = None,
) -> Iterator[int]:
    """``controller``: its port (else any free one); ``extra``: more local.d files."""
    work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-rspamd-"))
    local = work / "local.d"
    local.mkdir()
    for sub in ("db", "run", "log"):
        (work / sub).mkdir()
    port, controller, proxy = _free_port(), controller or _free_port(), _free_port()
    (local / "worker-normal.inc").write_text(
        f'bind_socket = "127.0.0.1:{port}";\ncount = {0 if milter else workers};\n'
    )
    (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{controller}";\n')
    if milter:
        # rspamd as an MTA runs it: the proxy speaks the milter protocol and, with
        # self_scan, scans in its own processes (rspamd's "milter mode").
        (local / "worker-proxy.inc").write_text(
            f'bind_socket = "127.0.0.1:{proxy}";\nmilter = yes;\ntimeout = 120s;\n'
            f"count = {workers};\n"
            'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n'
        )
    else:
        (local / "worker-proxy.inc").write_text("enabled = false;\n")
    (local / "worker-fuzzy.inc").write_text("enabled = false;\ncount = 0;\n")
    # Nothing listens on 127.0.0.1:53 here: any DNS lookup left fails at once, off the scan path.
    (local / "options.inc").write_text('dns { nameserver = ["127.0.0.1:53"]; }\n')
    for module in _RSPAMD_OFF:
        (local / f"{module}.conf").write_text("enabled = false;\n")
    for name, text in (extra or {}).items():
        (local / name).write_text(text)
    with _serving(
        [
            "rspamd",
            "-f",
            "-i",
            "-u",
            "root",
            "-g",
            "root",
            "-c",
            "/etc/rspamd/rspamd.conf",
            f"--var=LOCAL_CONFDIR={work}",
            f"--var=DBDIR={work / 'db'}",
            f"--var=RUNDIR={work / 'run'}",
            f"--var=LOGDIR={work / 'log'}",
        ],
        proxy if milter else port,
        work,
        90,
        (controller,),
    ):
        yield proxy if milter else port


@contextmanager
def rspamd_milter(workers: int = 1) -> Iterator[int]:
    """rspamd's proxy in milter mode, scanning itself, on 127.0.0.1; yields its port.

    The same modules are off as in the HTTP comparison (no DNS, Bayes or fuzzy hashes).
    Needs the ``rspamd`` package and root (rspamd drops privileges to the given user).
    """
    with _rspamd(workers, milter=True) as port:
        yield port


@contextmanager
def opendkim_milter() -> Iterator[int]:
    """OpenDKIM (a C milter on Sendmail's libmilter) verifying, on 127.0.0.1; yields its port.

    A reference for what a milter costs when its own work is small: unsigned messages give it
    nothing to verify. Needs the ``opendkim`` package.
    """
    work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-opendkim-"))
    port = _free_port()
    conf = work / "opendkim.conf"
    conf.write_text(
        f"Mode v\nSocket inet:{port}@127.0.0.1\nSyslog no\nPidFile {work / 'opendkim.pid'}\n"
        "Background no\n" + ("UserID root\n" if os.geteuid() == 0 else "")
    )
    with _serving(["opendkim", "-f", "-x", str(conf)], port, work, 30):
        yield port


def _rspamd_check(port: int) -> Callable[[bytes], None]:
    def send(raw: bytes) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            # Hostname and Helo as an MTA passes them: without them rspamd looks the client
            # up in DNS, and with no DNS here each message would wait for that to time out.
            headers = {
                "From": "alice@example.org",
                "Rcpt": "bob@example.net",
                "IP": "192.0.2.1",
                "Hostname": "mail.example.org",
                "Helo": "mail.example.org",
            }
            connection.request("POST", "/checkv2", body=raw, headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or b'"action"' not in body:
                raise RuntimeError(f"rspamd answered {response.status}: {body[:200]!r}")
        finally:
            connection.close()

    return send


@contextmanager
def spamd_server(workers: int = 1) -> Iterator[int]:
    """SpamAssassin's spamd (``workers`` children, network tests and Bayes off) on 127.0.0.1;
    yields its port. Needs the ``spamd`` package and root (its children run as nobody)."""
    work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-spamd-"))
    # spamd's children run as nobody and must read the site config. The CLI runs under umask
    # 077, so every mode is set here: with the umask's, the children could not read their
    # configuration, died, and each connection was reset.
    work.chmod(0o755)
    site = work / "site"
    site.mkdir()
    site.chmod(0o755)
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site)
    (site / "local.cf").write_text(
        "use_bayes 0\nbayes_auto_learn 0\nskip_rbl_checks 1\ndns_available no\n"
        "use_razor2 0\nuse_pyzor 0\nuse_dcc 0\nuse_auto_whitelist 0\nuse_txrep 0\n"
    )
    for config in site.iterdir():
        config.chmod(0o644)
    port = _free_port()
    with _serving(
        [
            "spamd",
            "-L",
            "-x",
            f"--listen=127.0.0.1:{port}",
            f"--max-children={workers}",
            f"--min-children={workers}",
            f"--siteconfigpath={site}",
            "-u",
            "nobody",
            f"--pidfile={work / 'spamd.pid'}",
        ],
        port,
        work,
        120,
    ):
        yield port


def spamd_check(port: int) -> Callable[[bytes], None]:
    """A function sending one message to spamd at ``port`` (CHECK); raises unless EX_OK."""

    def send(raw: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            head = f"CHECK SPAMC/1.5\r\nContent-length: {len(raw)}\r\nUser: nobody\r\n\r\n"
            sock.sendall(head.encode() + raw)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        if not answer.startswith(b"SPAMD/") or b" 0 EX_OK" not in answer.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"spamd answered {answer[:120]!r}")

    return send


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_peers(messages: list[bytes], workers: int) -> list[dict[str, Any]]:
    """rspamd and SpamAssassin over ``messages`` with ``workers`` workers, where installed."""
    results: list[dict[str, Any]] = []
    threads = max(2, workers)
    root = os.geteuid() == 0
    if shutil.which("rspamd") and root:
        _say(f"rspamd, {workers} worker(s), {len(messages)} messages ...")
        try:
            with _rspamd(workers) as port:
                rate = _drive(messages, threads, _rspamd_check(port))
            results.append(
                {"name": f"rspamd checkv2, {workers} worker(s)", "msgs_per_s": round(rate, 1)}
            )
        except (RuntimeError, OSError) as exc:  # a peer that fails is reported, not fatal
            results.append({"name": "rspamd", "msgs_per_s": 0.0, "note": f"failed: {exc}"})
    else:
        results.append(
            {"name": "rspamd", "msgs_per_s": 0.0, "note": "not installed (apt install rspamd)"}
        )
    if shutil.which("spamd") and root:
        subset = messages[::_SPAMD_STRIDE][:_SPAMD_MAX]
        _say(f"SpamAssassin spamd, {workers} child(ren), {len(subset)} messages ...")
        try:
            with spamd_server(workers) as port:
                rate = _drive(subset, threads, spamd_check(port))
            results.append(
                {
                    "name": f"SpamAssassin spamd, {workers} child(ren)",
                    "msgs_per_s": round(rate, 1),
                    "note": f"{len(subset)}-message subset",
                }
            )
        except (RuntimeError, OSError) as exc:
            results.append({"name": "SpamAssassin", "msgs_per_s": 0.0, "note": f"failed: {exc}"})
    else:
        results.append(
            {"name": "SpamAssassin", "msgs_per_s": 0.0, "note": "not installed (apt install spamd)"}
        )
    return results
